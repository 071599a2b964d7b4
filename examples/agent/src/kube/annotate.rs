//! Enrollment status on the Pod: this node's pods carry `ambient.istio.io/redirection:
//! enabled` once the proxy holds them and their rules are in place, `pending` while they are
//! being enrolled, and no annotation otherwise (as istio-cni sets it). Agents on other nodes
//! advertise a pod as HBONE only while it carries `enabled`.
//!
//! The publisher reports what each local pod should carry ([`Reporter`]); a task patches
//! `pods/status` (JSON merge patch) until the pods carry it, retrying with back-off while
//! the API server is unreachable.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::model::{REDIRECTION_ANNOTATION, REDIRECTION_ENABLED, REDIRECTION_PENDING, redirection};
use crate::desired::{Settings, local_desired};
use crate::metrics::Metrics;
use crate::workloads::Cluster;

/// First retry delay after a failed patch; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What this node's pods should carry; `version` grows with every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LocalStatus {
    pub(crate) version: u64,
    /// Enrolled: advertised as HBONE by this agent.
    pub(crate) enabled: BTreeSet<String>,
    /// To be enrolled, not yet advertised.
    pub(crate) pending: BTreeSet<String>,
}

impl LocalStatus {
    /// The annotation value the pod `uid` should carry.
    fn value(&self, uid: &str) -> Option<&'static str> {
        if self.enabled.contains(uid) {
            Some(REDIRECTION_ENABLED)
        } else if self.pending.contains(uid) {
            Some(REDIRECTION_PENDING)
        } else {
            None
        }
    }
}

/// The publisher's side: records what the pods should carry and waits until they do.
#[derive(Debug)]
pub(crate) struct Reporter {
    settings: Settings,
    status: watch::Sender<Option<Arc<LocalStatus>>>,
    applied: watch::Receiver<u64>,
}

/// The patching task's side.
#[derive(Debug)]
pub(crate) struct Patcher {
    status: watch::Receiver<Option<Arc<LocalStatus>>>,
    applied: watch::Sender<u64>,
}

/// A connected [`Reporter`] and [`Patcher`].
pub(crate) fn channel(settings: Settings) -> (Reporter, Patcher) {
    let (status, status_rx) = watch::channel(None);
    let (applied_tx, applied) = watch::channel(0);
    (
        Reporter {
            settings,
            status,
            applied,
        },
        Patcher {
            status: status_rx,
            applied: applied_tx,
        },
    )
}

impl Reporter {
    /// Records that `hbone_ready` are enrolled and the other desired pods of `cluster` on
    /// this node are pending.
    pub(crate) fn report(&self, cluster: &Cluster, hbone_ready: &BTreeSet<String>) {
        let desired = local_desired(cluster, &self.settings);
        let pending: BTreeSet<String> = desired
            .pods
            .into_keys()
            .filter(|uid| !hbone_ready.contains(uid))
            .collect();
        self.status.send_if_modified(|current| {
            if current
                .as_ref()
                .is_some_and(|c| c.enabled == *hbone_ready && c.pending == pending)
            {
                return false;
            }
            let version = current.as_ref().map_or(1, |c| c.version + 1);
            *current = Some(Arc::new(LocalStatus {
                version,
                enabled: hbone_ready.clone(),
                pending: pending.clone(),
            }));
            true
        });
    }

    /// What the pods should carry, as last reported (`None` before the first report).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Arc<LocalStatus>>> {
        self.status.subscribe()
    }

    /// Waits (at most `timeout`) until the pods carry what was last reported.
    pub(crate) async fn settled(&self, timeout: Duration) {
        let Some(want) = self.status.borrow().as_ref().map(|s| s.version) else {
            return;
        };
        let mut applied = self.applied.clone();
        let done = tokio::time::timeout(timeout, applied.wait_for(|v| *v >= want)).await;
        if done.is_err() {
            debug!(
                version = want,
                "pod annotations not confirmed in time; going on"
            );
        }
    }
}

impl Patcher {
    /// Patches this node's pods until they carry what the reporter says, until `shutdown`.
    /// Acts only after the first report, so a starting agent changes nothing before it
    /// has decided.
    pub(crate) async fn run(
        mut self,
        client: kube::Client,
        pods: Store<Pod>,
        mut pods_changed: watch::Receiver<u64>,
        node: String,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) {
        // Patches sent whose result the watch has not shown yet: uid → (value, the
        // resourceVersion the pod had before).
        let mut sent: BTreeMap<String, (Option<&'static str>, Option<String>)> = BTreeMap::new();
        let mut retry = RETRY_MIN;
        let mut failing = false;
        loop {
            let status = self.status.borrow_and_update().clone();
            pods_changed.borrow_and_update();
            let mut ok = true;
            if let Some(status) = &status {
                for pod in pods.state() {
                    if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(&node) {
                        continue;
                    }
                    let (Some(uid), Some(name), Some(ns)) = (
                        pod.metadata.uid.as_deref(),
                        pod.metadata.name.as_deref(),
                        pod.metadata.namespace.as_deref(),
                    ) else {
                        continue;
                    };
                    let want = status.value(uid);
                    if redirection(&pod) == want {
                        sent.remove(uid);
                        continue;
                    }
                    let version = pod.metadata.resource_version.clone();
                    if sent.get(uid) == Some(&(want, version.clone())) {
                        continue; // patched; the watch has not caught up yet
                    }
                    match patch(&client, ns, name, want).await {
                        Ok(()) => {
                            info!(pod = %format!("{ns}/{name}"), %uid, annotation = want.unwrap_or("(removed)"), "pod redirection annotation set");
                            sent.insert(uid.to_owned(), (want, version));
                        }
                        Err(e) => {
                            ok = false;
                            metrics.failure("pod_annotation");
                            if !failing {
                                warn!(pod = %format!("{ns}/{name}"), %uid, error = %e, "cannot set the pod's redirection annotation; retrying");
                            }
                        }
                    }
                }
                if ok {
                    self.applied.send_replace(status.version);
                }
            }
            if ok && failing {
                info!("pod redirection annotations up to date again");
            }
            failing = !ok;
            let delay = retry;
            retry = if ok {
                RETRY_MIN
            } else {
                (retry * 2).min(RETRY_MAX)
            };
            let sleep = async move {
                if ok {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(delay).await;
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = self.status.changed() => if r.is_err() { return },
                r = pods_changed.changed() => if r.is_err() { return },
                () = sleep => {}
            }
        }
    }
}

/// Sets (or with `None` removes) the annotation; a pod that is gone needs nothing.
async fn patch(
    client: &kube::Client,
    ns: &str,
    name: &str,
    value: Option<&str>,
) -> Result<(), kube::Error> {
    let body = serde_json::json!({
        "metadata": { "annotations": { REDIRECTION_ANNOTATION: value } }
    });
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
