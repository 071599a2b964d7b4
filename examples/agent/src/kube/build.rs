//! Rebuilds the cluster model whenever a watched kind or a sandbox changed, and hands each
//! new version to the reconcile loop.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use kube::runtime::reflector::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::model::{self, Note, Objects, View};
use super::sandboxes::Sandboxes;
use crate::desired::RemoteReady;
use crate::workloads::Cluster;

/// How long to let a burst of changes settle before rebuilding.
const SETTLE: Duration = Duration::from_millis(20);

/// The reflector stores of every watched kind.
#[derive(Debug, Clone)]
pub(crate) struct Stores {
    pub(crate) namespaces: Store<Namespace>,
    pub(crate) pods: Store<Pod>,
    pub(crate) services: Store<Service>,
    pub(crate) slices: Store<EndpointSlice>,
    pub(crate) policies: Store<DynamicObject>,
    /// Empty (never written) unless the source watches them.
    pub(crate) service_accounts: Store<ServiceAccount>,
}

impl Stores {
    /// What the stores hold now.
    pub(crate) fn objects(&self) -> Objects {
        Objects {
            namespaces: self.namespaces.state(),
            pods: self.pods.state(),
            services: self.services.state(),
            slices: self.slices.state(),
            policies: self.policies.state(),
            service_accounts: self.service_accounts.state(),
        }
    }
}

/// Builds the cluster model and the other nodes' readiness.
#[derive(Debug)]
pub(crate) struct Builder {
    pub(crate) stores: Stores,
    pub(crate) sandboxes: Sandboxes,
    pub(crate) view: View,
    pub(crate) label_key: String,
    /// Notes already logged.
    notes: BTreeSet<Note>,
    /// Enrolled namespaces, as last logged.
    enrolled: BTreeSet<String>,
}

impl Builder {
    pub(crate) fn new(stores: Stores, sandboxes: Sandboxes, view: View, label_key: String) -> Self {
        Self {
            stores,
            sandboxes,
            view,
            label_key,
            notes: BTreeSet::new(),
            enrolled: BTreeSet::new(),
        }
    }

    /// One build from what the stores and sandboxes hold now.
    pub(crate) fn build(&mut self) -> (Cluster, RemoteReady) {
        let objects = self.stores.objects();
        // Sandboxes of pods that are gone are of no more use.
        let uids: BTreeSet<&str> = objects
            .pods
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        self.sandboxes.retain(|uid| uids.contains(uid));
        let (cluster, notes) = model::cluster(&objects, &self.sandboxes.snapshot(), &self.view);
        let notes: BTreeSet<Note> = notes.into_iter().collect();
        for (policy, note) in notes.difference(&self.notes) {
            warn!(%policy, "{note}");
        }
        self.notes = notes;
        let enrolled: BTreeSet<String> = cluster
            .namespaces
            .keys()
            .filter(|ns| cluster.namespace_enrolled(ns, &self.label_key))
            .cloned()
            .collect();
        if enrolled != self.enrolled {
            info!(namespaces = ?enrolled, "enrolled namespaces");
            self.enrolled = enrolled;
        }
        let remote = model::remote_ready(&objects.pods, &self.view.node);
        (cluster, remote)
    }

    /// Rebuilds after every change until `shutdown`, sending each new version.
    pub(crate) async fn run(
        mut self,
        mut changed: watch::Receiver<u64>,
        cluster_tx: watch::Sender<Arc<Cluster>>,
        remote_tx: watch::Sender<Arc<RemoteReady>>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = changed.changed() => if r.is_err() { return },
            }
            tokio::time::sleep(SETTLE).await;
            changed.borrow_and_update();
            let (cluster, remote) = self.build();
            let sent = cluster_tx.send_if_modified(|c| {
                let new = **c != cluster;
                if new {
                    *c = Arc::new(cluster);
                }
                new
            });
            if sent {
                let c = cluster_tx.borrow();
                debug!(
                    namespaces = c.namespaces.len(),
                    pods = c.pods.len(),
                    services = c.services.len(),
                    policies = c.policies.len(),
                    "cluster changed; reconciling"
                );
            }
            remote_tx.send_if_modified(|r| {
                let new = **r != remote;
                if new {
                    *r = Arc::new(remote);
                }
                new
            });
        }
    }
}
