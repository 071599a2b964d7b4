//! The test's side of a Kubernetes cluster: the kubelet's and users' API calls, the CNI
//! plugin's events, and a node proxy stand-in that reports the pod's state at each ZDS
//! message.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use meshwire_cni::event::{EventKind, PodEvent, Reply};
use meshwire_netns::NetNs;
use meshwire_zds::Update;
use serde_json::json;
use testbed::kube::AdminClient;
use tokio::sync::mpsc;

use super::rules_installed;

/// The enrollment label.
pub const LABEL: &str = "io.cilium/mtls-enabled";
/// The pod annotation that reports enrollment.
pub const ANNOTATION: &str = "ambient.istio.io/redirection";

/// The agent of node `n1` with `--source kubernetes` as the tests run it: the API server of
/// `kubeconfig`, and in `dir` its ZDS socket `ztunnel.sock`, CNI socket `cni.sock`, state
/// `state/` and log `agent.log` (appended to: a restarted agent adds to it); reconciling
/// every second. The test adds its own flags, then spawns it.
pub fn agent_command(kubeconfig: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent"));
    cmd.args(["--source", "kubernetes", "--node-name", "n1"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--zds-socket")
        .arg(dir.join("ztunnel.sock"))
        .arg("--cni-socket")
        .arg(dir.join("cni.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--reconcile-interval", "1s"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("agent.log"))
                .unwrap(),
        );
    cmd
}

/// Sets or removes the enrollment label of `namespace` (the API server's set-up helpers
/// are in `testbed::kube::objects`).
pub fn label(admin: &AdminClient, namespace: &str, on: bool) {
    admin
        .label_namespace(namespace, LABEL, on.then_some("true"))
        .unwrap();
}

/// Installs the AuthorizationPolicy CRD of `deploy/` and waits until it is served.
pub fn install_policy_crd(admin: &AdminClient) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/30-authorizationpolicy-crd.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    admin
        .install_crd(
            &yaml,
            "/apis/security.istio.io/v1/namespaces/default/authorizationpolicies",
        )
        .unwrap();
}

/// Plays the node proxy of `node` as Kubernetes knows it; its pod-bound token.
pub fn proxy_token(admin: &AdminClient, node: &str) -> String {
    admin
        .proxy_token(&testbed::kube::ProxyAccount::default(), node)
        .unwrap()
}

/// A client of the test API server, from its kubeconfig.
pub async fn client(kubeconfig: &Path) -> kube::Client {
    let file = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// The pod's redirection annotation.
pub async fn annotation(client: &kube::Client, namespace: &str, name: &str) -> Option<String> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .unwrap();
    pod.metadata.annotations?.get(ANNOTATION).cloned()
}

/// Waits until the pod's redirection annotation is `want`.
pub async fn wait_annotation(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    want: Option<&str>,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while annotation(client, namespace, name).await.as_deref() != want {
        assert!(Instant::now() < deadline, "{name} never annotated {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sets (or removes) the pod's redirection annotation, as another node's agent would.
pub async fn annotate(client: &kube::Client, namespace: &str, name: &str, value: Option<&str>) {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ANNOTATION: value}}})),
        )
        .await
        .unwrap();
}

/// Sends the CNI plugin's event about the pod `namespace/name` (uid optional, as runtimes
/// may leave it out) to the agent's socket, as the plugin does.
pub async fn cni_event(
    socket: &Path,
    kind: EventKind,
    (namespace, name, uid): (&str, &str, &str),
    netns: &Path,
    ip: IpAddr,
) -> Reply {
    let event = PodEvent::new(
        kind,
        format!("sandbox-{name}"),
        netns.display().to_string(),
        namespace,
        name,
        uid,
        vec![ip],
    );
    let socket = socket.to_owned();
    tokio::task::spawn_blocking(move || {
        meshwire_cni::event::send(&socket, &event, Duration::from_secs(5)).unwrap()
    })
    .await
    .unwrap()
}

/// The `security.istio.io/v1` `AuthorizationPolicy` objects of `namespace`.
pub fn policies(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("security.istio.io", "v1", "AuthorizationPolicy"),
            "authorizationpolicies",
        ),
    )
}

/// What the stand-in proxy was told, with the pod's state at that moment.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// `AddWorkload`.
    Add {
        name: String,
        rules_installed: bool,
        annotation: Option<String>,
    },
    /// `DelWorkload`.
    Del {
        name: String,
        rules_installed: bool,
        annotation: Option<String>,
    },
}

/// A node proxy stand-in on `zds_socket` that acknowledges everything and reports each add
/// and delete with whether the pod's rules were installed and its annotation; `netns` maps
/// the pods of namespace `namespace` to their network namespace paths.
pub fn stand_in_proxy(
    api: &kube::Client,
    zds_socket: &Path,
    namespace: &'static str,
    netns: BTreeMap<String, PathBuf>,
) -> (mpsc::UnboundedReceiver<Seen>, tokio::task::JoinHandle<()>) {
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let api = api.clone();
    let mut config = meshwire_zds::client::ClientConfig::default();
    config.path = zds_socket.to_owned();
    let proxy = meshwire_zds::client::Client::new(config, move |u: Update| {
        let seen_tx = seen_tx.clone();
        let api = api.clone();
        let netns = netns.clone();
        async move {
            let (name, add) = match &u {
                Update::Add { workload, .. } => (workload.name.clone(), true),
                Update::Del { uid } => {
                    // Deletes name only the uid: ask the API server for the name.
                    let pods = Api::<Pod>::namespaced(api.clone(), namespace)
                        .list(&Default::default())
                        .await
                        .unwrap();
                    let name = pods
                        .items
                        .iter()
                        .find(|p| p.metadata.uid.as_deref() == Some(uid))
                        .and_then(|p| p.metadata.name.clone())
                        .unwrap();
                    (name, false)
                }
                _ => return Ok::<(), String>(()),
            };
            let path = netns[&name].clone();
            let installed = tokio::task::spawn_blocking(move || {
                rules_installed(&NetNs::from_path(path).unwrap())
            })
            .await
            .unwrap();
            let annotation = annotation(&api, namespace, &name).await;
            let rules_installed = installed;
            let _ = seen_tx.send(if add {
                Seen::Add {
                    name,
                    rules_installed,
                    annotation,
                }
            } else {
                Seen::Del {
                    name,
                    rules_installed,
                    annotation,
                }
            });
            Ok(())
        }
    });
    let task = tokio::spawn(async move {
        let _ = proxy.run().await;
    });
    (seen, task)
}
