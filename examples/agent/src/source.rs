//! Opening the workload source chosen on the command line: the workloads file (with the
//! nodes' pod status files) or a Kubernetes API server (with the pods' annotations and the
//! CNI plugin's events).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cli::{Args, SourceKind};
use crate::desired::{LocalPod, RemoteReady, Settings};
use crate::effects::xds::NodeReport;
use crate::kube;
use crate::metrics::Metrics;
use crate::status;
use crate::workloads::Cluster;
use crate::workloads::file::WorkloadsFile;

/// How often the workloads file and the pod status directory are read even without a change
/// notification.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// An open workload source.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The cluster, updated on every change.
    pub(crate) cluster: watch::Receiver<Arc<Cluster>>,
    /// Which pods of other nodes their agents report enrolled.
    pub(crate) remote: watch::Receiver<Arc<RemoteReady>>,
    /// How this node reports its own.
    pub(crate) report: NodeReport,
    /// Keeps `remote`'s sender alive when nothing updates it.
    pub(crate) keep: Option<watch::Sender<Arc<RemoteReady>>>,
    /// The CNI event socket (Kubernetes), to be served after the first pass.
    pub(crate) cni: Option<kube::CniSocket>,
    /// The API server client (Kubernetes).
    pub(crate) client: Option<kube::ApiClient>,
}

/// Opens the source of `args`; its tasks run in `tasks` until `shutdown`. `restored` are
/// the pods the previous run enrolled.
pub(crate) async fn open(
    args: &Args,
    settings: &Settings,
    restored: &[LocalPod],
    metrics: &Arc<Metrics>,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Opened> {
    match args.source {
        SourceKind::File => open_file(args, settings, metrics, tasks, shutdown),
        SourceKind::Kubernetes => {
            if args.pod_status_dir.is_some() {
                anyhow::bail!(
                    "--pod-status-dir is for the file source; with Kubernetes the pods' annotations report enrollment"
                );
            }
            let config = kube::Config {
                kubeconfig: args.kubeconfig.clone(),
                settings: settings.clone(),
                view: kube::View {
                    node: settings.node.clone(),
                    cluster_domain: args.cluster_domain.clone(),
                    root_namespace: args.root_namespace.clone(),
                },
                cni_socket: args.cni_socket.clone(),
                proc_dir: args.host_proc.clone(),
                service_accounts: args.spire_server_socket.is_some(),
            };
            let source = kube::start(config, restored, metrics.clone(), tasks, shutdown).await?;
            Ok(Opened {
                cluster: source.cluster,
                remote: source.remote,
                report: NodeReport::Annotations(source.reporter),
                keep: None,
                cni: Some(source.cni),
                client: Some(source.client),
            })
        }
    }
}

fn open_file(
    args: &Args,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Opened> {
    let Some(path) = &args.workloads else {
        anyhow::bail!("--workloads is required with --source file");
    };
    let (watcher, cluster) = WorkloadsFile::open(path)?;
    let (cluster_tx, cluster_rx) = watch::channel(Arc::new(cluster));
    tasks.spawn(watcher.run(
        WATCH_INTERVAL,
        cluster_tx,
        metrics.clone(),
        shutdown.clone(),
    ));

    // The nodes' pod status files: read now, so the first publish already gates the pods of
    // other nodes on their nodes' reports; then followed.
    let (remote_tx, remote_rx, report) = match args.pod_status_dir() {
        Some(dir) => {
            let (reader, writer) = status::open(&dir, &settings.node)?;
            let (tx, rx) = watch::channel(Arc::new(reader.current()));
            tasks.spawn(reader.run(WATCH_INTERVAL, tx.clone(), shutdown.clone()));
            (tx, rx, NodeReport::File(Mutex::new(writer)))
        }
        None => {
            info!(
                "pod status files off: pods of other nodes are HBONE once their namespace is enrolled"
            );
            let (tx, rx) = watch::channel(Arc::new(RemoteReady::Ungated));
            (tx, rx, NodeReport::Off)
        }
    };
    Ok(Opened {
        cluster: cluster_rx,
        remote: remote_rx,
        report,
        keep: Some(remote_tx),
        cni: None,
        client: None,
    })
}
