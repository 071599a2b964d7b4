//! Looking at the running cluster: the rules in each pod, the proxies' and agents' admin and
//! metrics endpoints, and waiting until enrollment matches the labels.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::{Cluster, Metrics, Role};

impl Cluster {
    /// Whether the in-pod redirection rules are present in `role`'s pod.
    pub fn has_rules(&self, role: Role) -> Result<bool> {
        let out = self.pods[&role]
            .ns()
            .exec("iptables-save", &[] as &[&str])?;
        Ok(out.contains("ISTIO_") || out.contains("CILIUM_"))
    }

    /// How many rules (`-A` lines of `iptables-save`) `role`'s pod holds.
    pub fn rule_count(&self, role: Role) -> Result<usize> {
        let out = self.pods[&role]
            .ns()
            .exec("iptables-save", &[] as &[&str])?;
        Ok(out.lines().filter(|l| l.starts_with("-A ")).count())
    }

    /// Waits until the rules of every pod match the labels of its namespace and every
    /// agent reports that many enrolled pods.
    pub fn wait_enrolled(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut pending = Vec::new();
            for role in Role::ALL {
                let want = self.is_enrolled(role.namespace());
                if self.has_rules(role)? != want {
                    pending.push(format!(
                        "{} (rules {})",
                        role.label(),
                        if want { "missing" } else { "still present" }
                    ));
                }
            }
            for i in 0..self.nodes.len() {
                let want = Role::ALL
                    .iter()
                    .filter(|r| r.node() == i && self.is_enrolled(r.namespace()))
                    .count() as f64;
                let got = self
                    .agent_metrics(i)
                    .map(|m| m.sum("meshwire_agent_enrolled_pods", &[]))
                    .unwrap_or(-1.0);
                if got != want {
                    pending.push(format!(
                        "agent on node-{} reports {got} enrolled pods, want {want}",
                        i + 1
                    ));
                }
            }
            // Every proxy must see every pod with the right tunnel protocol, so the next
            // connection takes the path the labels say.
            for i in 0..self.nodes.len() {
                match self.proxy_protocols(i) {
                    Ok(seen) => {
                        for role in Role::ALL {
                            let want = if self.is_enrolled(role.namespace()) {
                                "HBONE"
                            } else {
                                "NONE"
                            };
                            let got = seen.get(&self.uid(role));
                            if got.map(String::as_str) != Some(want) {
                                pending.push(format!(
                                    "proxy on node-{} sees {} as {}, want {want}",
                                    i + 1,
                                    role.label(),
                                    got.map_or("nothing", String::as_str)
                                ));
                            }
                        }
                    }
                    Err(e) => pending.push(format!("proxy on node-{}: {e:#}", i + 1)),
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "enrollment did not settle within {timeout:?}: {}; logs: {}",
                    pending.join(", "),
                    self.logs_hint()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// A plain HTTP/1.0 GET to `127.0.0.1:port` inside node `i`'s namespace.
    pub fn http_get(&self, i: usize, port: u16, path: &str) -> Result<(u16, String)> {
        let path = path.to_owned();
        self.tb.nodes()[i]
            .ns()
            .run(move || -> Result<(u16, String)> {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
                let mut buf = Vec::new();
                s.read_to_end(&mut buf)?;
                let text = String::from_utf8_lossy(&buf).into_owned();
                let code = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| anyhow!("bad HTTP response: {text:.80}"))?;
                let body = text
                    .split_once("\r\n\r\n")
                    .map(|(_, b)| b.to_owned())
                    .unwrap_or_default();
                Ok((code, body))
            })?
    }

    /// The tunnel protocol (`HBONE` or `NONE`) node `i`'s proxy has for each workload uid,
    /// from its admin `/config_dump`.
    pub fn proxy_protocols(&self, i: usize) -> Result<BTreeMap<String, String>> {
        let dump = self.proxy_config_dump(i)?;
        let workloads = dump["workloads"]
            .as_array()
            .context("no workloads in /config_dump")?;
        Ok(workloads
            .iter()
            .filter_map(|w| {
                Some((
                    w["uid"].as_str()?.to_owned(),
                    w["protocol"].as_str()?.to_owned(),
                ))
            })
            .collect())
    }

    /// The TLS connections the outbound HBONE pool of `role`'s pod has opened (each one a
    /// TLS handshake with the destination's proxy), since its proxy started, from the
    /// proxy's admin `/config_dump` (`hbone_pool.opened` of the pod).
    pub fn hbone_connections_opened(&self, role: Role) -> Result<u64> {
        let dump = self.proxy_config_dump(role.node())?;
        let pods = dump["pods"].as_array().context("no pods in /config_dump")?;
        pods.iter()
            .find(|p| p["name"] == role.name() && p["namespace"] == role.namespace())
            .and_then(|p| p["hbone_pool"]["opened"].as_u64())
            .with_context(|| format!("no HBONE pool of {} in /config_dump", role.label()))
    }

    /// Node `i`'s proxy's admin `/config_dump`.
    fn proxy_config_dump(&self, i: usize) -> Result<serde_json::Value> {
        let (code, body) = self.http_get(i, 15000, "/config_dump")?;
        if code != 200 {
            bail!("proxy admin on node-{}: HTTP {code}", i + 1);
        }
        serde_json::from_str(&body).context("the proxy's /config_dump is not JSON")
    }

    /// The proxy metrics of node `i`.
    pub fn proxy_metrics(&self, i: usize) -> Result<Metrics> {
        let (code, body) = self.http_get(i, 15020, "/metrics")?;
        if code != 200 {
            bail!("proxy metrics on node-{}: HTTP {code}", i + 1);
        }
        Ok(Metrics::parse(&body))
    }

    /// The agent metrics of node `i`.
    pub fn agent_metrics(&self, i: usize) -> Result<Metrics> {
        let (code, body) = self.http_get(i, 9964, "/metrics")?;
        if code != 200 {
            bail!("agent metrics on node-{}: HTTP {code}", i + 1);
        }
        Ok(Metrics::parse(&body))
    }

    /// Counts the open file descriptors of a process.
    pub fn open_fds(pid: u32) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
    }
}
