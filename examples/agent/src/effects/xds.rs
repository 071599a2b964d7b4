//! Publishing the workload view, the services and the policies through the `xds-workload`
//! server, as its domain types (`convert`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshwire_xds_workload::Address;
use meshwire_xds_workload::ads::server::{AdsServer, ResourceChange, ServerEvent};
use meshwire_xds_workload::resource::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::desired::{RemoteReady, Settings, workload_views};
use crate::effects::next_event;
use crate::kube::annotate::Reporter;
use crate::metrics::Metrics;
use crate::reconcile::Publisher;
use crate::status::StatusWriter;
use crate::workloads::Cluster;

mod convert;

/// How this node tells the other nodes which of its pods are enrolled.
#[derive(Debug)]
pub(crate) enum NodeReport {
    /// Not at all (other nodes do not gate on it).
    Off,
    /// In its pod status file.
    File(Mutex<StatusWriter>),
    /// In the pods' redirection annotation (Kubernetes).
    Annotations(Reporter),
}

/// How long an unenroll waits for the other nodes to be told before the rules go.
const REPORT_SETTLE: Duration = Duration::from_secs(2);

/// [`Publisher`] over an [`AdsServer`]; also reports this node's enrolled pods (status file
/// or pod annotations), and gates the pods of other nodes on their nodes' reports.
#[derive(Debug)]
pub(crate) struct XdsPublisher {
    server: AdsServer,
    settings: Settings,
    /// The other nodes' reports (always [`RemoteReady::Ungated`] without reports).
    remote: watch::Receiver<Arc<RemoteReady>>,
    /// This node's report.
    report: NodeReport,
}

impl XdsPublisher {
    pub(crate) fn new(
        server: AdsServer,
        settings: Settings,
        remote: watch::Receiver<Arc<RemoteReady>>,
        report: NodeReport,
    ) -> Self {
        Self {
            server,
            settings,
            remote,
            report,
        }
    }

    /// Reports this node's enrolled pods when they changed. Called before each xDS update,
    /// so a pod is dropped from the report before its rules go.
    fn report(&self, cluster: &Cluster, hbone_ready: &BTreeSet<String>) {
        let status = match &self.report {
            NodeReport::Off => return,
            NodeReport::Annotations(reporter) => {
                reporter.report(cluster, hbone_ready);
                return;
            }
            NodeReport::File(status) => status,
        };
        let mut status = match status.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        match status.store(hbone_ready) {
            Ok(true) => {
                debug!(file = %status.path().display(), pods = hbone_ready.len(), "pod status file written");
            }
            Ok(false) => {}
            Err(e) => {
                warn!(file = %status.path().display(), error = %e, "cannot write the pod status file; other nodes keep the previous status");
            }
        }
    }
}

impl Publisher for XdsPublisher {
    fn publish(&self, cluster: &Cluster, hbone_ready: &BTreeSet<String>) {
        self.report(cluster, hbone_ready);
        let remote = self.remote.borrow().clone();
        let views = workload_views(cluster, &self.settings, hbone_ready, &remote);
        let hbone = views.iter().filter(|v| v.hbone).count();
        let workloads = views
            .iter()
            .map(|v| Address::Workload(Arc::new(convert::workload(v))));
        let services = cluster.services.iter().map(|s| Address::Service(s.clone()));
        let addresses = self.server.replace(
            ADDRESS_TYPE_URL,
            workloads
                .chain(services)
                .filter_map(|a| ResourceChange::address(&a).into_upsert()),
        );
        let published = convert::policies(cluster, &self.settings.label_key);
        let policies = self.server.replace(
            AUTHORIZATION_TYPE_URL,
            published
                .iter()
                .filter_map(|p| ResourceChange::policy(p).into_upsert()),
        );
        if addresses + policies > 0 {
            info!(
                workloads = views.len(),
                hbone,
                services = cluster.services.len(),
                policies = published.len(),
                changed = addresses + policies,
                "xDS resources updated"
            );
        }
    }

    async fn settled(&self) {
        if let NodeReport::Annotations(reporter) = &self.report {
            reporter.settled(REPORT_SETTLE).await;
        }
    }
}

/// Logs xDS stream events and keeps the subscriber and NACK metrics.
pub(crate) async fn follow_events(
    mut events: broadcast::Receiver<ServerEvent>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    while let Some(event) = next_event(&mut events, &shutdown).await {
        match event {
            Ok(ServerEvent::Connected { stream, node_id }) => {
                info!(stream, node = %node_id, "proxy subscribed to xDS");
                metrics.xds_subscribers.inc();
            }
            Ok(ServerEvent::Nack {
                stream,
                node_id,
                type_url,
                nonce,
                code,
                message,
            }) => {
                warn!(stream, node = %node_id, %type_url, %nonce, code, %message, "proxy NACKed an xDS response");
                metrics.xds_nacks.inc();
            }
            Ok(ServerEvent::Disconnected { stream, node_id }) => {
                info!(stream, node = %node_id, "xDS stream closed");
                metrics.xds_subscribers.dec();
            }
            Ok(ServerEvent::Sent {
                stream,
                type_url,
                resources,
                removed,
                ..
            }) => {
                debug!(stream, %type_url, resources, removed, "xDS response sent");
            }
            Ok(other) => debug!(event = ?other, "xDS event"),
            Err(missed) => warn!(missed, "missed xDS events"),
        }
    }
}
