//! A small cluster of real network namespaces running the example `agent` and `proxy`,
//! shared by the `demo` binary and the end-to-end tests.
//!
//! [`Cluster::start`] builds two nodes with the [`testbed`] crate, writes a workloads file
//! (one enrolled namespace, `shop`, and one that is not, `legacy`), and starts one agent and
//! one proxy inside each node's namespace, the way a node agent and a node proxy run on a real
//! node. Every pod runs an echo server on [`ECHO_PORT`]; [`Cluster::flow`] connects from one
//! pod to another, sends a payload, reads the echo and reports what the proxies saw.
//!
//! Everything is torn down when the [`Cluster`] is dropped: processes are stopped, the
//! namespaces (and with them every rule the agent installed) are deleted and the state
//! directory is removed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use testbed::{Namespace, Pod, Process, Testbed, TestbedOptions};

mod metrics;

pub use metrics::Metrics;

/// The port every pod's echo server listens on.
pub const ECHO_PORT: u16 = 8080;
/// The namespace label that enrolls a namespace.
pub const LABEL: &str = "io.cilium/mtls-enabled";
/// The trust domain of the cluster.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The enrolled namespace.
pub const ENROLLED_NS: &str = "shop";
/// The namespace that is not enrolled.
pub const PLAIN_NS: &str = "legacy";

/// A pod of the demo cluster, by its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// `shop/client` (service account `client`) on node 1.
    Client,
    /// `shop/server-near` (service account `server`) on node 1.
    ServerNear,
    /// `shop/intruder` (service account `intruder`) on node 1: denied by policy.
    Intruder,
    /// `shop/server-far` (service account `server`) on node 2.
    ServerFar,
    /// `legacy/legacy` (service account `default`) on node 2: never enrolled.
    Legacy,
}

impl Role {
    /// Every role, in the order the pods are created.
    pub const ALL: [Self; 5] = [
        Self::Client,
        Self::ServerNear,
        Self::Intruder,
        Self::ServerFar,
        Self::Legacy,
    ];

    /// The pod name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::ServerNear => "server-near",
            Self::Intruder => "intruder",
            Self::ServerFar => "server-far",
            Self::Legacy => "legacy",
        }
    }

    /// The Kubernetes namespace.
    pub fn namespace(self) -> &'static str {
        match self {
            Self::Legacy => PLAIN_NS,
            _ => ENROLLED_NS,
        }
    }

    /// The service account.
    pub fn service_account(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::ServerNear | Self::ServerFar => "server",
            Self::Intruder => "intruder",
            Self::Legacy => "default",
        }
    }

    /// The node index (0-based) the pod runs on.
    pub fn node(self) -> usize {
        match self {
            Self::Client | Self::ServerNear | Self::Intruder => 0,
            Self::ServerFar | Self::Legacy => 1,
        }
    }

    /// The SPIFFE ID of the pod's service account.
    pub fn spiffe_id(self) -> String {
        format!(
            "spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}",
            self.namespace(),
            self.service_account()
        )
    }

    /// `namespace/name`.
    pub fn label(self) -> String {
        format!("{}/{}", self.namespace(), self.name())
    }
}

/// Where the agent and proxy binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `agent` executable.
    pub agent: PathBuf,
    /// The `proxy` executable.
    pub proxy: PathBuf,
}

impl Binaries {
    /// Looks for `agent` and `proxy` in `dir`.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let agent = dir.join("agent");
        let proxy = dir.join("proxy");
        for b in [&agent, &proxy] {
            if !b.is_file() {
                bail!(
                    "{} does not exist: build the example binaries first (cargo build -p agent -p proxy)",
                    b.display()
                );
            }
        }
        Ok(Self { agent, proxy })
    }
}

/// One node's agent and proxy.
#[derive(Debug)]
struct NodeProcs {
    name: String,
    dir: PathBuf,
    agent: Option<Process>,
    proxy: Option<Process>,
}

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

/// Options for [`Cluster::start`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Where the binaries are.
    pub binaries: Binaries,
    /// Log filter passed to the agents and proxies as `RUST_LOG`.
    pub log: String,
    /// How often the agent checks the in-pod rules.
    pub reconcile_interval: Duration,
    /// The in-pod rule preset the agents install: `istio` or `cilium`.
    pub rules: &'static str,
}

/// The demo cluster: two nodes, five pods, an agent and a proxy per node.
#[derive(Debug)]
pub struct Cluster {
    opts: ClusterOptions,
    // Field order is drop order: processes before namespaces, the state directory last.
    nodes: Vec<NodeProcs>,
    echo_stop: Arc<AtomicBool>,
    pods: BTreeMap<Role, Pod>,
    tb: Testbed,
    dir: tempdir::Dir,
    enrolled: BTreeMap<String, bool>,
    policies: bool,
}

mod tempdir {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A directory removed on drop.
    #[derive(Debug)]
    pub(crate) struct Dir(PathBuf);

    impl Dir {
        pub(crate) fn create() -> std::io::Result<Self> {
            static SEQ: AtomicUsize = AtomicUsize::new(0);
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("{}{n}", super::state_dir_prefix()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path)?;
            Ok(Self(path))
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Cluster {
    /// Builds the topology, writes the workloads file and starts an agent and a proxy on
    /// each node, then waits until every enrolled pod is enrolled.
    pub fn start(opts: ClusterOptions) -> Result<Self> {
        let mut tb = Testbed::with_options(TestbedOptions::new().ipv6(false).clone())
            .context("cannot build the test bed")?;
        let n1 = tb.add_node()?;
        let n2 = tb.add_node()?;
        let mut pods = BTreeMap::new();
        for role in Role::ALL {
            let node = if role.node() == 0 { &n1 } else { &n2 };
            pods.insert(role, tb.add_pod(node)?);
        }
        let dir = tempdir::Dir::create().context("cannot create state dir")?;
        let mut cluster = Self {
            opts,
            nodes: Vec::new(),
            echo_stop: Arc::new(AtomicBool::new(false)),
            pods,
            tb,
            dir,
            enrolled: [(ENROLLED_NS.to_owned(), true), (PLAIN_NS.to_owned(), false)].into(),
            policies: true,
        };
        cluster.start_echo_servers()?;
        cluster.write_workloads()?;
        for (i, name) in ["node-1", "node-2"].into_iter().enumerate() {
            let dir = cluster.dir.path().join(name);
            std::fs::create_dir_all(&dir)?;
            cluster.nodes.push(NodeProcs {
                name: name.to_owned(),
                dir,
                agent: None,
                proxy: None,
            });
            cluster.start_agent(i)?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_for_file(&cluster.root_cert(i), Duration::from_secs(60))?;
            cluster.start_proxy(i)?;
        }
        cluster.wait_enrolled(Duration::from_secs(60))?;
        Ok(cluster)
    }

    /// The state directory (workloads file, logs, sockets).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pod of `role`.
    pub fn pod(&self, role: Role) -> &Pod {
        &self.pods[&role]
    }

    /// The namespace of node `i` (0-based).
    pub fn node_ns(&self, i: usize) -> &Namespace {
        self.tb.nodes()[i].ns()
    }

    /// The fabric namespace that carries all traffic between the nodes.
    pub fn fabric(&self) -> &Namespace {
        self.tb.fabric()
    }

    /// The process id of node `i`'s proxy.
    pub fn proxy_pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].proxy.as_ref().map(Process::id)
    }

    fn root_cert(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("agent").join("root-cert.pem")
    }

    fn log_file(&self, i: usize, what: &str) -> PathBuf {
        self.nodes[i].dir.join(format!("{what}.log"))
    }

    fn workloads_path(&self) -> PathBuf {
        self.dir.path().join("workloads.yaml")
    }

    /// Writes the workloads file from the current labels (atomically, by rename).
    fn write_workloads(&self) -> Result<()> {
        let mut y = String::from("namespaces:\n");
        for (ns, on) in &self.enrolled {
            let labels = if *on {
                format!("{{ {LABEL}: \"true\" }}")
            } else {
                "{}".to_owned()
            };
            let _ = writeln!(y, "  - name: {ns}\n    labels: {labels}");
        }
        y.push_str("pods:\n");
        for role in Role::ALL {
            let pod = &self.pods[&role];
            let _ = writeln!(
                y,
                "  - name: {}\n    namespace: {}\n    serviceAccount: {}\n    uid: uid-{}\n    ip: {}\n    node: node-{}\n    netns: {}",
                role.name(),
                role.namespace(),
                role.service_account(),
                role.name(),
                pod.ipv4(),
                role.node() + 1,
                pod.ns().path().display()
            );
        }
        if self.policies {
            let _ = writeln!(
                y,
                "policies:\n  - name: deny-intruder\n    namespace: {ENROLLED_NS}\n    action: deny\n    rules:\n      - from:\n          - principals: [\"{TRUST_DOMAIN}/ns/{ENROLLED_NS}/sa/intruder\"]"
            );
        }
        let tmp = self.dir.path().join("workloads.yaml.tmp");
        std::fs::write(&tmp, y)?;
        std::fs::rename(&tmp, self.workloads_path())?;
        Ok(())
    }

    /// Sets the enrollment label of a namespace in the workloads file. The agents pick the
    /// change up by themselves; use [`Cluster::wait_enrolled`] to wait for it.
    pub fn set_enrolled(&mut self, namespace: &str, on: bool) -> Result<()> {
        self.enrolled.insert(namespace.to_owned(), on);
        self.write_workloads()
    }

    /// Whether the enrollment label of `namespace` is on.
    pub fn is_enrolled(&self, namespace: &str) -> bool {
        self.enrolled.get(namespace).copied().unwrap_or(false)
    }

    fn start_agent(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(i, "agent"))?;
        let mut cmd = Command::new(&self.opts.binaries.agent);
        cmd.arg("--workloads")
            .arg(self.workloads_path())
            .args(["--node-name", &node.name])
            .arg("--zds-socket")
            .arg(node.dir.join("ztunnel.sock"))
            .arg("--state-dir")
            .arg(node.dir.join("agent"))
            .arg("--ca-cert")
            .arg(self.dir.path().join("ca-cert.pem"))
            .arg("--ca-key")
            .arg(self.dir.path().join("ca-key.pem"))
            .args(["--rules", self.opts.rules])
            .arg("--reconcile-interval")
            .arg(format!("{}ms", self.opts.reconcile_interval.as_millis()))
            .env("RUST_LOG", &self.opts.log)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let proc = self.tb.nodes()[i].ns().spawn(&mut cmd)?;
        self.nodes[i].agent = Some(proc);
        Ok(())
    }

    fn start_proxy(&mut self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(i, "proxy"))?;
        let mut cmd = Command::new(&self.opts.binaries.proxy);
        cmd.arg("--zds-socket")
            .arg(node.dir.join("ztunnel.sock"))
            .args(["--node-name", &node.name])
            .arg("--xds-root-ca")
            .arg(self.root_cert(i))
            .env("RUST_LOG", &self.opts.log)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let proc = self.tb.nodes()[i].ns().spawn(&mut cmd)?;
        self.nodes[i].proxy = Some(proc);
        self.wait_proxy_ready(i, Duration::from_secs(60))
    }

    /// Stops node `i`'s proxy with SIGTERM (graceful drain) and starts it again.
    pub fn restart_proxy(&mut self, i: usize) -> Result<()> {
        stop(self.nodes[i].proxy.take())?;
        self.start_proxy(i)
    }

    /// Stops node `i`'s agent and starts it again.
    pub fn restart_agent(&mut self, i: usize) -> Result<()> {
        stop(self.nodes[i].agent.take())?;
        self.start_agent(i)
    }

    /// Stops node `i`'s agent.
    pub fn stop_agent(&mut self, i: usize) -> Result<()> {
        stop(self.nodes[i].agent.take())
    }

    /// Starts node `i`'s agent (after [`Cluster::stop_agent`]).
    pub fn start_agent_again(&mut self, i: usize) -> Result<()> {
        self.start_agent(i)
    }

    fn wait_for_file(&self, path: &Path, timeout: Duration) -> Result<()> {
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

    /// Whether the in-pod redirection rules are present in `role`'s pod.
    pub fn has_rules(&self, role: Role) -> Result<bool> {
        let out = self.pods[&role]
            .ns()
            .exec("iptables-save", &[] as &[&str])?;
        Ok(out.contains("ISTIO_") || out.contains("CILIUM_"))
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
                            let got = seen.get(&format!("uid-{}", role.name()));
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

    fn start_echo_servers(&self) -> Result<()> {
        for role in Role::ALL {
            let pod = &self.pods[&role];
            let addr = SocketAddr::new(IpAddr::V4(pod.ipv4()), ECHO_PORT);
            let listener = pod
                .ns()
                .run(move || TcpListener::bind(addr))?
                .with_context(|| format!("cannot listen on {addr} in {}", role.label()))?;
            listener.set_nonblocking(true)?;
            let stop = self.echo_stop.clone();
            thread::Builder::new()
                .name(format!("echo-{}", role.name()))
                .spawn(move || echo_loop(&listener, &stop))?;
        }
        Ok(())
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
        let (code, body) = self.http_get(i, 15000, "/config_dump")?;
        if code != 200 {
            bail!("proxy admin on node-{}: HTTP {code}", i + 1);
        }
        let dump: serde_json::Value =
            serde_json::from_str(&body).context("the proxy's /config_dump is not JSON")?;
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

    /// Counts the open file descriptors of a process.
    pub fn open_fds(pid: u32) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.echo_stop.store(true, Ordering::Relaxed);
        for n in &mut self.nodes {
            let _ = stop(n.proxy.take());
            let _ = stop(n.agent.take());
        }
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

fn echo_loop(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                thread::spawn(move || {
                    let mut buf = Vec::new();
                    if conn.read_to_end(&mut buf).is_ok() {
                        let _ = conn.write_all(&buf);
                    }
                    let _ = conn.shutdown(Shutdown::Both);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The prefix of the state directories of this process's clusters.
fn state_dir_prefix() -> String {
    format!("meshwire-demo-{}-", std::process::id())
}

/// Removes the state directories of this process's clusters (emergency clean-up).
pub fn remove_own_state_dirs() {
    let prefix = state_dir_prefix();
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
