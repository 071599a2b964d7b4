//! The Kubernetes mode of the cluster ([`crate::Source::Kubernetes`]): a real API server
//! holds the namespaces, pods and the deny policy; the agents watch it, the proxies
//! authenticate with pod-bound service-account tokens, and the demo plays the kubelet and
//! the CNI plugin (pods with their node and address, one CNI ADD per pod sandbox).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meshwire_cni::event::{EventKind, PodEvent, Reply};
use serde_json::json;
use testbed::kube::ProxyAccount;
use testbed::{KubeApiServer, LoopbackRelay, Pod, Testbed};

use crate::{Cluster, ENROLLED_NS, LABEL, PLAIN_NS, Role, TRUST_DOMAIN};

/// The AuthorizationPolicy CRD the agents watch (the one `deploy/` installs).
const POLICY_CRD: &str = include_str!("../../../deploy/30-authorizationpolicy-crd.yaml");

/// How often a CNI ADD is sent before giving up (the runtime retries a failed ADD too).
const CNI_ATTEMPTS: usize = 5;

/// The API server and what the demo created in it.
#[derive(Debug)]
pub(crate) struct KubeMode {
    // Field order is drop order: the relays before the server. Only held, to keep them.
    _relays: Vec<LoopbackRelay>,
    pub(crate) server: KubeApiServer,
    uids: BTreeMap<Role, String>,
    kubectl: bool,
}

/// The name of node `i` (0-based), in the API server as in the agents' `--node-name`.
pub(crate) fn node_name(i: usize) -> String {
    format!("node-{}", i + 1)
}

/// The file node `i`'s proxy reads its token from.
pub(crate) fn token_file(node_dir: &Path) -> PathBuf {
    node_dir.join("proxy-token")
}

impl KubeMode {
    /// Starts the API server, makes it reachable on the loopback of every node, and creates
    /// the demo's objects: the two namespaces (`shop` labelled), a service account and a
    /// running pod per role, the deny-intruder policy, and a pod-bound token per node proxy
    /// written to the node's token file.
    pub(crate) fn start(
        tb: &Testbed,
        pods: &BTreeMap<Role, Pod>,
        node_dirs: &[PathBuf],
    ) -> Result<Self> {
        let server = KubeApiServer::start().context(
            "cannot start the Kubernetes API server (etcd and kube-apiserver; set MESHWIRE_PEERS_DIR to prebuilt ones)",
        )?;
        let relays = tb
            .nodes()
            .iter()
            .map(|n| LoopbackRelay::start(n.ns(), server.port()))
            .collect::<Result<_, _>>()?;
        let api = server.admin();
        for ns in [ENROLLED_NS, PLAIN_NS] {
            api.create_namespace(ns)?;
        }
        api.label_namespace(ENROLLED_NS, LABEL, Some("true"))?;
        let mut uids = BTreeMap::new();
        for role in Role::ALL {
            api.create_service_account(role.namespace(), role.service_account())?;
            let ip = IpAddr::V4(pods[&role].ipv4());
            let uid = api.create_pod(
                role.namespace(),
                role.name(),
                role.service_account(),
                &node_name(role.node()),
                ip,
            )?;
            uids.insert(role, uid);
        }
        api.install_crd(
            POLICY_CRD,
            "/apis/security.istio.io/v1/namespaces/default/authorizationpolicies",
        )?;
        api.create(
            &format!("/apis/security.istio.io/v1/namespaces/{ENROLLED_NS}/authorizationpolicies"),
            &json!({
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": "deny-intruder", "namespace": ENROLLED_NS},
                "spec": {
                    "action": "DENY",
                    "rules": [{"from": [{"source": {
                        "principals": [format!("{TRUST_DOMAIN}/ns/{ENROLLED_NS}/sa/intruder")]
                    }}]}]
                }
            }),
        )?;
        for (i, dir) in node_dirs.iter().enumerate() {
            let token = api.proxy_token(&ProxyAccount::default(), &node_name(i))?;
            std::fs::write(token_file(dir), token)?;
        }
        let kubectl = Command::new("kubectl")
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success());
        Ok(Self {
            _relays: relays,
            server,
            uids,
            kubectl,
        })
    }

    /// The uid the API server gave `role`'s pod.
    pub(crate) fn uid(&self, role: Role) -> &str {
        self.uids.get(&role).map_or("", String::as_str)
    }

    /// Sets (`Some`) or removes (`None`) a label of a Namespace: with
    /// `kubectl label namespace` when `kubectl` is installed, otherwise through the API.
    pub(crate) fn label(&self, namespace: &str, key: &str, value: Option<&str>) -> Result<()> {
        if !self.kubectl {
            return Ok(self.server.admin().label_namespace(namespace, key, value)?);
        }
        let arg = match value {
            Some(v) => format!("{key}={v}"),
            None => format!("{key}-"),
        };
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.server.kubeconfig())
            .args(["label", "namespace", namespace, &arg, "--overwrite"])
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl label namespace {namespace} {arg}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Cluster {
    /// Plays the CNI plugin for every pod: one ADD per sandbox to its node agent's socket.
    /// A pod of an enrolled namespace must be answered `done` (enrolled, rules in place),
    /// any other `not-enrolled`.
    pub(crate) fn announce_sandboxes(&self) -> Result<()> {
        let Some(kube) = &self.kube else {
            return Ok(());
        };
        for i in 0..self.nodes.len() {
            self.wait_for_file(&self.cni_socket(i), Duration::from_secs(60))?;
        }
        for role in Role::ALL {
            let pod = &self.pods[&role];
            let event = PodEvent::new(
                EventKind::Add,
                format!("sandbox-{}", role.name()),
                pod.ns().path().display().to_string(),
                role.namespace(),
                role.name(),
                kube.uid(role),
                vec![IpAddr::V4(pod.ipv4())],
            );
            let want = if self.is_enrolled(role.namespace()) {
                Reply::Done
            } else {
                Reply::NotEnrolled
            };
            let socket = self.cni_socket(role.node());
            let mut attempt = 0;
            loop {
                attempt += 1;
                let reply = meshwire_cni::event::send(&socket, &event, Duration::from_secs(10))
                    .with_context(|| format!("CNI ADD of {}", role.label()))?;
                if reply == want {
                    break;
                }
                if attempt >= CNI_ATTEMPTS {
                    bail!(
                        "CNI ADD of {}: {reply:?}, want {want:?}; logs: {}",
                        role.label(),
                        self.logs_hint()
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Ok(())
    }

    pub(crate) fn cni_socket(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("cni.sock")
    }

    /// The API server, in Kubernetes mode.
    pub fn api_server(&self) -> Option<&KubeApiServer> {
        self.kube.as_ref().map(|k| &k.server)
    }

    /// Stops the API server (an outage: the agents lose their watches; etcd keeps the
    /// objects). An error in file mode.
    pub fn stop_api_server(&mut self) -> Result<()> {
        self.kube
            .as_mut()
            .context("no API server: the cluster runs from the workloads file")?
            .server
            .stop_apiserver();
        Ok(())
    }

    /// Starts the API server again on the same port and waits until it is ready.
    pub fn start_api_server(&mut self) -> Result<()> {
        let kube = self
            .kube
            .as_mut()
            .context("no API server: the cluster runs from the workloads file")?;
        Ok(kube.server.start_apiserver()?)
    }
}
