//! The agent and proxy processes of each node: starting, stopping, waiting for them, and
//! their logs.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use testbed::Process;

use testbed::kube::ProxyAccount;

use crate::kube::token_file;
use crate::{Cluster, Role};

impl Cluster {
    pub(crate) fn start_agent(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let mut cmd = Command::new(&self.opts.binaries.agent);
        match &self.kube {
            Some(kube) => {
                cmd.args(["--source", "kubernetes", "--kubeconfig"])
                    .arg(kube.server.kubeconfig())
                    .arg("--cni-socket")
                    .arg(self.cni_socket(i));
                // The built-in CA's callers; with SPIRE there is no CA to call.
                if self.spire.is_none() {
                    cmd.arg("--ca-trusted-node-accounts")
                        .arg(ProxyAccount::default().qualified());
                }
                &mut cmd
            }
            None => cmd.arg("--workloads").arg(self.workloads_path()),
        };
        cmd.args(["--node-name", &node.name])
            .arg("--zds-socket")
            .arg(node.dir.join("ztunnel.sock"))
            .arg("--state-dir")
            .arg(self.agent_state_dir(i))
            .args(["--rules", self.opts.rules])
            .arg("--reconcile-interval")
            .arg(format!("{}ms", self.opts.reconcile_interval.as_millis()));
        match &self.spire {
            // SPIRE is the CA: none on the node, xDS on the unix socket only.
            Some(spire) => {
                cmd.args(["--ca", "none", "--xds-unix-socket"])
                    .arg(self.xds_socket(i));
                // One registrar for the cluster, as the Cilium operator is.
                if i == 0 {
                    cmd.arg("--spire-server-socket").arg(spire.server_socket());
                }
            }
            // One root for the cluster, shared by the agents.
            None => {
                cmd.arg("--ca-cert")
                    .arg(self.dir.path().join("ca-cert.pem"))
                    .arg("--ca-key")
                    .arg(self.dir.path().join("ca-key.pem"));
            }
        }
        let proc = self.spawn_on_node(i, "agent", &mut cmd)?;
        self.nodes[i].agent = Some(proc);
        Ok(())
    }

    pub(crate) fn start_proxy(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let mut cmd = Command::new(&self.opts.binaries.proxy);
        cmd.arg("--zds-socket")
            .arg(node.dir.join("ztunnel.sock"))
            .args(["--node-name", &node.name])
            .envs(self.opts.proxy_env.iter().map(|(k, v)| (k, v)))
            .envs(node.proxy_env.iter().map(|(k, v)| (k, v)));
        match &self.spire {
            Some(spire) => {
                cmd.env("SPIRE_ENABLED", "true")
                    .env("SPIRE_ADMIN_ENDPOINT_SOCKET", spire.admin_endpoint())
                    .env(
                        "XDS_ADDRESS",
                        format!("unix://{}", self.xds_socket(i).display()),
                    );
            }
            None => {
                cmd.arg("--xds-root-ca").arg(self.root_cert(i));
            }
        }
        if self.kube.is_some() {
            cmd.arg("--auth-token-file").arg(token_file(&node.dir));
        }
        let proc = self.spawn_on_node(i, "proxy", &mut cmd)?;
        self.nodes[i].proxy = Some(proc);
        self.wait_proxy_ready(i, Duration::from_secs(60))
    }

    /// Starts `cmd` in node `i`'s namespace with the cluster's log filter, its output
    /// appended to the node's `<what>.log`.
    fn spawn_on_node(&self, i: usize, what: &str, cmd: &mut Command) -> Result<Process> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(i, what))?;
        cmd.env("RUST_LOG", &self.opts.log)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(self.tb.nodes()[i].ns().spawn(cmd)?)
    }

    /// Stops node `i`'s proxy with SIGTERM (graceful drain) and starts it again.
    pub fn restart_proxy(&mut self, i: usize) -> Result<()> {
        stop(self.nodes[i].proxy.take())?;
        self.start_proxy(i)
    }

    /// Restarts node `i`'s proxy (as [`Cluster::restart_proxy`]) with `env` added to the
    /// environment of [`ClusterOptions::proxy_env`](crate::ClusterOptions::proxy_env)
    /// (overriding it); the proxy keeps it over later restarts, until the next call.
    pub fn restart_proxy_with_env(&mut self, i: usize, env: &[(&str, &str)]) -> Result<()> {
        self.nodes[i].proxy_env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.restart_proxy(i)
    }

    /// Stops node `i`'s agent and starts it again.
    pub fn restart_agent(&mut self, i: usize) -> Result<()> {
        stop(self.nodes[i].agent.take())?;
        self.start_agent(i)
    }

    /// Kills node `i`'s proxy with SIGKILL (no drain, nothing flushed) and starts it again.
    pub fn crash_proxy(&mut self, i: usize) -> Result<()> {
        if let Some(mut p) = self.nodes[i].proxy.take() {
            p.kill()?;
        }
        self.start_proxy(i)
    }

    /// Kills node `i`'s agent (and with it the node's CA, xDS and ZDS server) with SIGKILL
    /// and starts it again.
    pub fn crash_agent(&mut self, i: usize) -> Result<()> {
        if let Some(mut p) = self.nodes[i].agent.take() {
            p.kill()?;
        }
        self.start_agent(i)
    }

    /// Deletes `role`'s pod network namespace and creates it again under the same path
    /// (same interface and addresses, no rules), the way a container runtime recreates a
    /// pod sandbox, and starts the pod's echo server in the new one. The agent notices the
    /// new namespace by itself.
    pub fn recreate_pod_netns(&mut self, role: Role) -> Result<()> {
        self.stop_echo_server(role);
        let pod = self
            .pods
            .remove(&role)
            .ok_or_else(|| anyhow::anyhow!("no pod for {}", role.label()))?;
        let pod = self.tb.recreate_pod(pod)?;
        self.pods.insert(role, pod);
        self.start_echo_server(role)
    }

    /// Stops node `i`'s agent.
    pub fn stop_agent(&mut self, i: usize) -> Result<()> {
        stop(self.nodes[i].agent.take())
    }

    /// Starts node `i`'s agent (after [`Cluster::stop_agent`]).
    pub fn start_agent_again(&mut self, i: usize) -> Result<()> {
        self.start_agent(i)
    }

    pub(crate) fn wait_for_file(&self, path: &Path, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !path.exists() {
            if Instant::now() > deadline {
                bail!(
                    "{} did not appear within {timeout:?}; agent logs: {}",
                    path.display(),
                    self.logs_hint()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn wait_proxy_ready(&self, i: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.http_get(i, 15021, "/healthz/ready") {
                Ok((200, _)) => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(200));
                }
                Ok((code, body)) => {
                    bail!(
                        "proxy on node-{} not ready after {timeout:?} (HTTP {code}: {body}); logs: {}",
                        i + 1,
                        self.logs_hint()
                    )
                }
                Err(e) => bail!(
                    "proxy on node-{} not ready after {timeout:?}: {e:#}; logs: {}",
                    i + 1,
                    self.logs_hint()
                ),
            }
        }
    }

    /// Where the logs are, for error messages.
    pub fn logs_hint(&self) -> String {
        format!("{}/node-*/{{agent,proxy}}.log", self.dir.path().display())
    }

    /// The last `lines` lines of every agent and proxy log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for i in 0..self.nodes.len() {
            for what in ["agent", "proxy"] {
                let text = std::fs::read_to_string(self.log_file(i, what)).unwrap_or_default();
                let all: Vec<&str> = text.lines().collect();
                let start = all.len().saturating_sub(lines);
                let _ = writeln!(out, "--- node-{} {what} ---", i + 1);
                for l in &all[start..] {
                    let _ = writeln!(out, "{l}");
                }
            }
        }
        out
    }
}

/// Stops a process with SIGTERM (so it can flush and clean up), then SIGKILL after 5
/// seconds.
pub fn stop(p: Option<Process>) -> Result<()> {
    let Some(p) = p else { return Ok(()) };
    let Some(mut child) = p.into_child() else {
        return Ok(());
    };
    // The child is `ip netns exec …`, which execs the binary: same pid.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            child.wait()?;
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
}
