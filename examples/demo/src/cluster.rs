//! Setting up the cluster: the topology, the workloads file, an agent and a proxy per node;
//! and tearing it down again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use testbed::{Namespace, Pod, Process, Testbed, TestbedOptions};

use crate::cleanup::StateDir;
use crate::kube::{KubeMode, node_name};
use crate::processes::stop;
use crate::{ENROLLED_NS, LABEL, MTLS_MODE_LABEL, PLAIN_NS, Role, TRUST_DOMAIN};

/// Where the agent and proxy binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `agent` executable.
    pub agent: PathBuf,
    /// The `proxy` executable.
    pub proxy: PathBuf,
}

impl Binaries {
    /// The binaries next to a running test executable (`target/<profile>/deps/<test>` ->
    /// `target/<profile>/`), as `cargo test` builds them.
    pub fn beside_test() -> Result<Self> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| anyhow::anyhow!("no target directory above {}", exe.display()))?;
        Self::in_dir(dir)
    }

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
pub(crate) struct NodeProcs {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) agent: Option<Process>,
    pub(crate) proxy: Option<Process>,
    /// Environment of this node's proxy on top of [`ClusterOptions::proxy_env`].
    pub(crate) proxy_env: Vec<(String, String)>,
}

/// Where the agents read the cluster from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Source {
    /// A workloads file the cluster writes (the default).
    #[default]
    File,
    /// A real Kubernetes API server (etcd and kube-apiserver, see `testbed::kube`) holding
    /// Namespaces, Pods and an AuthorizationPolicy; the proxies authenticate with pod-bound
    /// service-account tokens.
    Kubernetes,
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
    /// Extra environment of every proxy (for example smaller connection limits).
    pub proxy_env: Vec<(String, String)>,
    /// SPIRE issues the workload certificates instead of the agents' built-in CA: a real
    /// SPIRE server and agent start (testbed's fixture), node-1's agent registers the
    /// entries (`--spire-server-socket`), the proxies run with `SPIRE_ENABLED`, and no node
    /// holds a CA key: the agents run with `--ca none` and serve xDS on a unix socket only,
    /// which the proxies read (`XDS_ADDRESS=unix://…`).
    pub spire: bool,
    /// Where the agents read the cluster from.
    pub source: Source,
}

/// The demo cluster: two nodes, five pods, an agent and a proxy per node.
#[derive(Debug)]
pub struct Cluster {
    pub(crate) opts: ClusterOptions,
    // Field order is drop order: processes before namespaces, the state directory last.
    pub(crate) nodes: Vec<NodeProcs>,
    pub(crate) spire: Option<testbed::Spire>,
    pub(crate) echo_stops: BTreeMap<Role, Arc<AtomicBool>>,
    pub(crate) kube: Option<KubeMode>,
    pub(crate) pods: BTreeMap<Role, Pod>,
    pub(crate) tb: Testbed,
    pub(crate) dir: StateDir,
    pub(crate) enrolled: BTreeMap<String, bool>,
    /// Namespaces labelled [`MTLS_MODE_LABEL`]` = strict`.
    pub(crate) strict: BTreeSet<String>,
    pub(crate) policies: bool,
}

impl Cluster {
    /// Builds the topology, writes the workloads file (or, with [`Source::Kubernetes`],
    /// starts the API server and creates the objects there) and starts an agent and a proxy
    /// on each node, then waits until every enrolled pod is enrolled.
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
        let dir = StateDir::create().context("cannot create state dir")?;
        let mut cluster = Self {
            opts,
            nodes: Vec::new(),
            spire: None,
            echo_stops: BTreeMap::new(),
            kube: None,
            pods,
            tb,
            dir,
            enrolled: [(ENROLLED_NS.to_owned(), true), (PLAIN_NS.to_owned(), false)].into(),
            strict: BTreeSet::new(),
            policies: true,
        };
        if cluster.opts.spire {
            let mut config = testbed::SpireConfig::default();
            config.trust_domain = TRUST_DOMAIN.to_owned();
            cluster.spire = Some(testbed::Spire::start(config).context("cannot start SPIRE")?);
        }
        cluster.start_echo_servers()?;
        for i in 0..2 {
            let name = node_name(i);
            let dir = cluster.dir.path().join(&name);
            std::fs::create_dir_all(&dir)?;
            cluster.nodes.push(NodeProcs {
                name,
                dir,
                agent: None,
                proxy: None,
                proxy_env: Vec::new(),
            });
        }
        if cluster.opts.source == Source::Kubernetes {
            let dirs: Vec<PathBuf> = cluster.nodes.iter().map(|n| n.dir.clone()).collect();
            cluster.kube = Some(KubeMode::start(&cluster.tb, &cluster.pods, &dirs)?);
        } else {
            cluster.write_workloads()?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.start_agent(i)?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_for_file(&cluster.control_plane_file(i), Duration::from_secs(60))?;
            cluster.start_proxy(i)?;
        }
        cluster.announce_sandboxes()?;
        cluster.wait_enrolled(Duration::from_secs(60))?;
        Ok(cluster)
    }

    /// The SPIRE deployment, when [`ClusterOptions::spire`] is set.
    pub fn spire(&self) -> Option<&testbed::Spire> {
        self.spire.as_ref()
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

    /// The agent state directory of node `i`.
    pub fn agent_state_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("agent")
    }

    pub(crate) fn root_cert(&self, i: usize) -> PathBuf {
        self.agent_state_dir(i).join("root-cert.pem")
    }

    /// The plaintext xDS socket of node `i`'s agent (with SPIRE, its only xDS endpoint).
    pub(crate) fn xds_socket(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("xds").join("xds.sock")
    }

    /// What node `i`'s proxy needs from its agent before it starts: the xDS socket with
    /// SPIRE, else the root of the agent's CA.
    fn control_plane_file(&self, i: usize) -> PathBuf {
        if self.spire.is_some() {
            self.xds_socket(i)
        } else {
            self.root_cert(i)
        }
    }

    pub(crate) fn log_file(&self, i: usize, what: &str) -> PathBuf {
        self.nodes[i].dir.join(format!("{what}.log"))
    }

    pub(crate) fn workloads_path(&self) -> PathBuf {
        self.dir.path().join("workloads.yaml")
    }

    /// Writes the workloads file from the current labels (atomically, by rename).
    pub(crate) fn write_workloads(&self) -> Result<()> {
        let mut y = String::from("namespaces:\n");
        for (ns, on) in &self.enrolled {
            let mut labels = Vec::new();
            if *on {
                labels.push(format!("{LABEL}: \"true\""));
            }
            if self.strict.contains(ns) {
                labels.push(format!("{MTLS_MODE_LABEL}: strict"));
            }
            let _ = writeln!(y, "  - name: {ns}\n    labels: {{ {} }}", labels.join(", "));
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

    /// Sets the enrollment label of a namespace in the workloads file (in Kubernetes mode:
    /// on the Namespace, with `kubectl label namespace`). The agents pick the change up by
    /// themselves; use [`Cluster::wait_enrolled`] to wait for it.
    pub fn set_enrolled(&mut self, namespace: &str, on: bool) -> Result<()> {
        self.enrolled.insert(namespace.to_owned(), on);
        match &self.kube {
            Some(kube) => kube.label(namespace, LABEL, on.then_some("true")),
            None => self.write_workloads(),
        }
    }

    /// Sets or removes `io.cilium/mtls-mode: strict` on a namespace in the workloads file
    /// (in Kubernetes mode: on the Namespace); strict mutual TLS once the agents publish it,
    /// only an enrolled namespace is strict.
    pub fn set_strict(&mut self, namespace: &str, on: bool) -> Result<()> {
        if on {
            self.strict.insert(namespace.to_owned());
        } else {
            self.strict.remove(namespace);
        }
        match &self.kube {
            Some(kube) => kube.label(namespace, MTLS_MODE_LABEL, on.then_some("strict")),
            None => self.write_workloads(),
        }
    }

    /// The uid of `role`'s pod, as the agents publish it over xDS.
    pub fn uid(&self, role: Role) -> String {
        match &self.kube {
            Some(kube) => kube.uid(role).to_owned(),
            None => format!("uid-{}", role.name()),
        }
    }

    /// Whether the enrollment label of `namespace` is on.
    pub fn is_enrolled(&self, namespace: &str) -> bool {
        self.enrolled.get(namespace).copied().unwrap_or(false)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for stop in self.echo_stops.values() {
            stop.store(true, Ordering::Relaxed);
        }
        for n in &mut self.nodes {
            let _ = stop(n.proxy.take());
            let _ = stop(n.agent.take());
        }
    }
}
