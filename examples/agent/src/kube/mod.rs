//! The Kubernetes workload source: the agent's view of the cluster read from an API server.
//!
//! Watches (kube-rs watchers into reflector stores) of Namespaces, Pods, Services,
//! EndpointSlices, `security.istio.io/v1` AuthorizationPolicies and (for the SPIRE
//! registrar only) ServiceAccounts feed the same cluster model the workloads file does. Each local pod's network namespace comes from the CNI
//! plugin (its event socket), from `/proc` at start-up, or from the previous run. The
//! enrollment status of this node's pods is written to their `ambient.istio.io/redirection`
//! annotation, and the annotations of other nodes' pods gate their HBONE.
//!
//! | module | concern |
//! |---|---|
//! | `watches` | one kind's watch into its store, kept across API server outages |
//! | `model` | API objects to the cluster model; other nodes' pod annotations to their readiness |
//! | `policy` | `AuthorizationPolicy` objects to L4 policies |
//! | `build` | rebuilding the model on every change |
//! | `sandboxes` | the network namespaces of this node's pods |
//! | `procscan`, `cgroup` | finding the network namespaces of running pods in `/proc` |
//! | `cni` | the CNI plugin's event socket |
//! | `annotate` | the redirection annotation of this node's pods |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::desired::{LocalPod, RemoteReady, Settings};
use crate::metrics::Metrics;
use crate::workloads::Cluster;

pub(crate) mod annotate;
mod build;
mod cgroup;
mod cni;
mod model;
mod policy;
mod procscan;
mod sandboxes;
mod watches;

pub(crate) use model::View;

use build::{Builder, Stores};
use sandboxes::Sandboxes;
use watches::Listing;

/// How the agent reaches the API server and reads the cluster.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Kubeconfig file; `None`: the inferred configuration (`KUBECONFIG`, `~/.kube/config`,
    /// then the in-cluster service account).
    pub(crate) kubeconfig: Option<PathBuf>,
    /// The agent's settings.
    pub(crate) settings: Settings,
    /// Service host names and mesh-wide policies.
    pub(crate) view: View,
    /// The CNI plugin's event socket.
    pub(crate) cni_socket: PathBuf,
    /// The host's `/proc`, to find the network namespaces of pods that already run.
    pub(crate) proc_dir: PathBuf,
    /// Whether to watch ServiceAccounts (the SPIRE registrar's entries follow them).
    pub(crate) service_accounts: bool,
}

/// A started Kubernetes source.
#[derive(Debug)]
pub(crate) struct Source {
    /// The cluster model, rebuilt on every change.
    pub(crate) cluster: watch::Receiver<Arc<Cluster>>,
    /// Other nodes' pods that carry `enabled`.
    pub(crate) remote: watch::Receiver<Arc<RemoteReady>>,
    /// Where the publisher reports this node's enrollment.
    pub(crate) reporter: annotate::Reporter,
    /// The CNI event socket, to be served once the first pass is done.
    pub(crate) cni: CniSocket,
    /// The API server client (the CA reviews proxy tokens with it).
    pub(crate) client: ApiClient,
}

/// A client of the API server.
#[derive(Clone)]
pub(crate) struct ApiClient(pub(crate) kube::Client);

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiClient")
    }
}

/// The bound CNI event socket and what its answers need.
#[derive(Debug)]
pub(crate) struct CniSocket {
    listener: UnixListener,
    path: PathBuf,
    stores: Stores,
    sandboxes: Sandboxes,
    label_key: String,
    status: watch::Receiver<Option<Arc<annotate::LocalStatus>>>,
}

impl CniSocket {
    /// Answers the CNI plugin until `shutdown`; `failures` are the last pass's failed pods.
    pub(crate) async fn serve(
        self,
        failures: watch::Receiver<Arc<BTreeMap<String, String>>>,
        shutdown: CancellationToken,
    ) {
        let context = cni::Context {
            pods: self.stores.pods,
            namespaces: self.stores.namespaces,
            sandboxes: self.sandboxes,
            label_key: self.label_key,
            status: self.status,
            failures,
        };
        cni::serve(self.listener, self.path, context, shutdown).await;
    }
}

/// Connects to the API server.
async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration (kubeconfig or in-cluster)")?,
    };
    info!(server = %config.cluster_url, "connecting to the Kubernetes API server");
    kube::Client::try_from(config).context("Kubernetes client")
}

/// The `security.istio.io/v1` `AuthorizationPolicy` kind.
fn policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("security.istio.io", "v1", "AuthorizationPolicy"),
        "authorizationpolicies",
    )
}

/// Drops what the agent never reads from a pod, to keep the store small.
fn trim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    if let Some(status) = &mut pod.status {
        status.conditions = None;
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}

fn trim_meta<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Starts the watches, waits until each kind is listed, finds the sandboxes of pods that
/// already run, and returns the first cluster model. `restored` are the pods the previous
/// run enrolled.
pub(crate) async fn start(
    config: Config,
    restored: &[LocalPod],
    metrics: Arc<Metrics>,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Source> {
    let client = client(config.kubeconfig.as_deref()).await?;
    let (changed, _) = watch::channel(0u64);
    let mut listings = Vec::new();
    macro_rules! watch_kind {
        ($kind:literal, $api:expr, $writer:expr, $trim:expr) => {{
            let (tx, rx) = watch::channel(Listing::Waiting);
            listings.push(($kind, rx));
            tasks.spawn(watches::run(
                $kind,
                $api,
                watcher::Config::default(),
                $writer,
                $trim,
                changed.clone(),
                tx,
                metrics.clone(),
                shutdown.clone(),
            ));
        }};
    }
    let (namespaces, w) = reflector::store::<Namespace>();
    watch_kind!(
        "Namespace",
        Api::all(client.clone()),
        w,
        trim_meta::<Namespace>
    );
    let (pods, w) = reflector::store::<Pod>();
    watch_kind!("Pod", Api::all(client.clone()), w, trim_pod);
    let (services, w) = reflector::store::<Service>();
    watch_kind!("Service", Api::all(client.clone()), w, trim_meta::<Service>);
    let (slices, w) = reflector::store::<EndpointSlice>();
    watch_kind!(
        "EndpointSlice",
        Api::all(client.clone()),
        w,
        trim_meta::<EndpointSlice>
    );
    let resource = policy_resource();
    let w = Writer::<DynamicObject>::new(resource.clone());
    let policies = w.as_reader();
    watch_kind!(
        "AuthorizationPolicy",
        Api::all_with(client.clone(), &resource),
        w,
        trim_meta::<DynamicObject>
    );
    // Without the registrar, nobody reads them: no watch (and no RBAC needed).
    let (service_accounts, w) = reflector::store::<ServiceAccount>();
    if config.service_accounts {
        watch_kind!(
            "ServiceAccount",
            Api::all(client.clone()),
            w,
            trim_meta::<ServiceAccount>
        );
    }

    for (kind, mut rx) in listings {
        loop {
            let waited = tokio::time::timeout(
                Duration::from_secs(10),
                rx.wait_for(|l| *l != Listing::Waiting),
            )
            .await;
            match waited {
                Ok(Ok(_)) => break,
                Ok(Err(_)) => anyhow::bail!("the {kind} watch stopped"),
                Err(_) => warn!(kind, "still waiting for the API server to list this kind"),
            }
        }
    }
    let stores = Stores {
        namespaces,
        pods,
        services,
        slices,
        policies,
        service_accounts,
    };
    info!(
        namespaces = stores.namespaces.len(),
        pods = stores.pods.len(),
        services = stores.services.len(),
        service_accounts = stores.service_accounts.len(),
        "Kubernetes objects listed"
    );

    let sandboxes = Sandboxes::new(changed.clone());
    restore_sandboxes(&stores, &sandboxes, restored, &config.settings.node).await;
    // Pods that run already: the CNI plugin told a previous run (or nobody) about them.
    let known = sandboxes.snapshot();
    let wanted = running_pods(&stores, &config.settings.node)
        .into_iter()
        .filter(|(uid, ips)| !known.contains_key(uid) && !ips.is_empty())
        .collect();
    let found = procscan::find_into(&config.proc_dir, wanted, &sandboxes).await;
    info!(
        restored = known.len(),
        found, "network namespaces of running pods known"
    );

    let label_key = config.settings.label_key.clone();
    let node = config.settings.node.clone();
    let mut builder = Builder::new(
        stores.clone(),
        sandboxes.clone(),
        config.view,
        label_key.clone(),
    );
    let (cluster, remote) = builder.build();
    let (cluster_tx, cluster_rx) = watch::channel(Arc::new(cluster));
    let (remote_tx, remote_rx) = watch::channel(Arc::new(remote));
    tasks.spawn(builder.run(changed.subscribe(), cluster_tx, remote_tx, shutdown.clone()));
    tasks.spawn(procscan::rescan(
        config.proc_dir,
        sandboxes.clone(),
        cluster_rx.clone(),
        config.settings.clone(),
        shutdown.clone(),
    ));

    let (reporter, patcher) = annotate::channel(config.settings);
    tasks.spawn(patcher.run(
        client.clone(),
        stores.pods.clone(),
        changed.subscribe(),
        node,
        metrics,
        shutdown.clone(),
    ));

    let listener = cni::bind(&config.cni_socket)?;
    let cni = CniSocket {
        listener,
        path: config.cni_socket,
        stores,
        sandboxes,
        label_key,
        status: reporter.subscribe(),
    };
    Ok(Source {
        cluster: cluster_rx,
        remote: remote_rx,
        reporter,
        cni,
        client: ApiClient(client),
    })
}

/// This node's pods that run (not finished, not on the host network), with their
/// addresses.
fn running_pods(stores: &Stores, node: &str) -> BTreeMap<String, Vec<std::net::IpAddr>> {
    stores
        .pods
        .state()
        .iter()
        .filter_map(|p| {
            let spec = p.spec.as_ref()?;
            if spec.node_name.as_deref() != Some(node) || spec.host_network == Some(true) {
                return None;
            }
            let status = p.status.as_ref()?;
            if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
                return None;
            }
            let ips = status
                .pod_ips
                .iter()
                .flatten()
                .filter_map(|i| i.ip.parse().ok())
                .collect();
            Some((p.metadata.uid.clone()?, ips))
        })
        .collect()
}

/// Takes the sandboxes of the pods the previous run enrolled, while their network namespace
/// still exists and holds one of the pod's addresses.
async fn restore_sandboxes(
    stores: &Stores,
    sandboxes: &Sandboxes,
    restored: &[LocalPod],
    node: &str,
) {
    for pod in restored {
        let Some(p) = stores
            .pods
            .find(|p| p.metadata.uid.as_deref() == Some(pod.uid.as_str()))
        else {
            continue;
        };
        if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node) {
            continue;
        }
        let ips: Vec<std::net::IpAddr> = p
            .status
            .iter()
            .flat_map(|s| s.pod_ips.iter().flatten())
            .filter_map(|i| i.ip.parse().ok())
            .collect();
        let path = pod.netns.clone();
        let check_ips = ips.clone();
        let holds = tokio::task::spawn_blocking(move || {
            if check_ips.is_empty() {
                meshwire_netns::NetNs::from_path(&path)
                    .map(|_| true)
                    .map_err(|e| e.to_string())
            } else {
                sandboxes::holds_any(&path, &check_ips)
            }
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match holds {
            Ok(true) => sandboxes.insert(&pod.uid, sandboxes::sandbox(&pod.netns, ips)),
            Ok(false) => {
                info!(pod = %pod.display_name(), netns = %pod.netns.display(), "the previous run's network namespace is no longer the pod's")
            }
            Err(e) => {
                info!(pod = %pod.display_name(), netns = %pod.netns.display(), error = %e, "the previous run's network namespace is gone")
            }
        }
    }
}
