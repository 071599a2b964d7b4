//! Traffic along one path: connect from a pod to another pod's echo server, and read what
//! the proxies counted for the connection.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::{Cluster, ECHO_PORT, Metrics, Role};

/// The outcome of one connection made by [`Cluster::flow`].
#[derive(Debug, Clone)]
pub struct Flow {
    /// Source pod.
    pub from: Role,
    /// Destination pod.
    pub to: Role,
    /// Bytes sent by the client.
    pub sent: usize,
    /// Whether the echo came back intact.
    pub echoed: bool,
    /// The error, if the connection failed or was closed without an echo.
    pub error: Option<String>,
    /// Change of the source proxy's outbound mTLS connection count.
    pub outbound_mtls: f64,
    /// Change of the source proxy's outbound plaintext connection count.
    pub outbound_plain: f64,
    /// Change of the destination proxy's inbound mTLS connection count.
    pub inbound_mtls: f64,
    /// Change of the destination proxy's inbound plaintext connection count.
    pub inbound_plain: f64,
    /// Change of the destination proxy's policy denials.
    pub denied: f64,
    /// Change of the source proxy's outbound connections that failed (refused by the peer,
    /// for example).
    pub outbound_failed: f64,
    /// The source identity the destination proxy recorded for the connection, if any.
    pub peer_identity: Option<String>,
    /// The destination identity the source proxy verified, if any.
    pub server_identity: Option<String>,
}

impl Flow {
    /// Whether the connection was carried in mutual TLS by both proxies.
    pub fn encrypted(&self) -> bool {
        self.outbound_mtls >= 1.0 && self.inbound_mtls >= 1.0
    }

    /// Whether the source pod's proxy handled the connection (carried or refused).
    pub fn source_proxied(&self) -> bool {
        self.outbound_mtls + self.outbound_plain + self.outbound_failed > 0.0
    }

    /// Whether the destination pod's proxy handled the connection (carried or denied).
    pub fn destination_proxied(&self) -> bool {
        self.inbound_mtls + self.inbound_plain + self.denied > 0.0
    }

    /// Whether no proxy saw the connection at all (direct pod-to-pod traffic).
    pub fn direct(&self) -> bool {
        self.outbound_mtls == 0.0
            && self.outbound_plain == 0.0
            && self.outbound_failed == 0.0
            && self.inbound_mtls == 0.0
            && self.inbound_plain == 0.0
    }
}

impl Cluster {
    /// Connects from `from` to `to`'s echo server, sends `payload`, half-closes, reads the
    /// echo and reports what the proxies counted for the connection.
    pub fn flow(&self, from: Role, to: Role, payload: &[u8]) -> Result<Flow> {
        let (src, dst) = (from.node(), to.node());
        let before_src = self.proxy_metrics(src)?;
        let before_dst = self.proxy_metrics(dst)?;
        let result = self.exchange(from, to, payload);
        // The proxies record a connection when it closes; give them a moment.
        let mut after_src;
        let mut after_dst;
        let settle = Instant::now() + Duration::from_secs(3);
        loop {
            after_src = self.proxy_metrics(src)?;
            after_dst = self.proxy_metrics(dst)?;
            let seen = |m: &Metrics, b: &Metrics| {
                m.sum("meshwire_connections_total", &[]) > b.sum("meshwire_connections_total", &[])
            };
            let expect_seen =
                self.is_enrolled(from.namespace()) || self.is_enrolled(to.namespace());
            let done = !expect_seen
                || (seen(&after_src, &before_src) || seen(&after_dst, &before_dst))
                    && (result.is_err()
                        || self.counted_both(
                            from,
                            to,
                            &after_src,
                            &after_dst,
                            &before_src,
                            &before_dst,
                        ));
            if done || Instant::now() > settle {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let delta = |a: &Metrics, b: &Metrics, labels: &[(&str, &str)]| {
            a.sum("meshwire_connections_total", labels)
                - b.sum("meshwire_connections_total", labels)
        };
        let out = [("direction", "outbound")];
        let inb = [("direction", "inbound")];
        let mut flow = Flow {
            from,
            to,
            sent: payload.len(),
            echoed: false,
            error: None,
            outbound_mtls: delta(&after_src, &before_src, &[out[0], ("security", "mtls")]),
            outbound_plain: delta(
                &after_src,
                &before_src,
                &[out[0], ("security", "plaintext")],
            ),
            inbound_mtls: delta(&after_dst, &before_dst, &[inb[0], ("security", "mtls")]),
            inbound_plain: delta(
                &after_dst,
                &before_dst,
                &[inb[0], ("security", "plaintext")],
            ),
            denied: after_dst.sum("meshwire_policy_denials_total", &[])
                - before_dst.sum("meshwire_policy_denials_total", &[]),
            outbound_failed: after_src.sum("meshwire_connection_failures_total", &out)
                - before_src.sum("meshwire_connection_failures_total", &out),
            peer_identity: after_dst.increased_label(
                &before_dst,
                "meshwire_connections_total",
                &[inb[0], ("security", "mtls")],
                "source_identity",
            ),
            server_identity: after_src.increased_label(
                &before_src,
                "meshwire_connections_total",
                &[out[0], ("security", "mtls")],
                "destination_identity",
            ),
        };
        match result {
            Ok(echo) if echo == payload => flow.echoed = true,
            Ok(echo) => {
                flow.error = Some(format!(
                    "echo differs: sent {} bytes, got {}",
                    payload.len(),
                    echo.len()
                ));
            }
            Err(e) => flow.error = Some(format!("{e:#}")),
        }
        Ok(flow)
    }

    fn counted_both(
        &self,
        from: Role,
        to: Role,
        a_src: &Metrics,
        a_dst: &Metrics,
        b_src: &Metrics,
        b_dst: &Metrics,
    ) -> bool {
        let out_seen = !self.is_enrolled(from.namespace())
            || a_src.sum("meshwire_connections_total", &[("direction", "outbound")])
                > b_src.sum("meshwire_connections_total", &[("direction", "outbound")]);
        let in_seen = !self.is_enrolled(to.namespace())
            || a_dst.sum("meshwire_connections_total", &[("direction", "inbound")])
                > b_dst.sum("meshwire_connections_total", &[("direction", "inbound")]);
        out_seen && in_seen
    }

    /// Sends `payload` from `from` to `to`'s echo server and returns what came back.
    pub fn exchange(&self, from: Role, to: Role, payload: &[u8]) -> Result<Vec<u8>> {
        let dst = SocketAddr::new(IpAddr::V4(self.pods[&to].ipv4()), ECHO_PORT);
        let mut s = self.pods[&from]
            .ns()
            .run(move || TcpStream::connect_timeout(&dst, Duration::from_secs(5)))?
            .with_context(|| format!("connect {} -> {dst}", from.label()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut echo = Vec::with_capacity(payload.len());
        let mut reader = s.try_clone()?;
        let reading = thread::spawn(move || -> std::io::Result<Vec<u8>> {
            reader.read_to_end(&mut echo)?;
            Ok(echo)
        });
        let written = s
            .write_all(payload)
            .and_then(|()| s.shutdown(Shutdown::Write));
        let echo = reading
            .join()
            .map_err(|_| anyhow!("reader thread panicked"))?
            .with_context(|| format!("read from {} -> {dst}", from.label()))?;
        written.with_context(|| format!("write from {} -> {dst}", from.label()))?;
        if echo.is_empty() && !payload.is_empty() {
            bail!("connection closed without a reply");
        }
        Ok(echo)
    }
}
