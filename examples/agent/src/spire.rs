//! The SPIRE registrar role (`--spire-server-socket`): one SPIRE registration entry per
//! service account of every enrolled namespace, parented to the node proxies' SPIFFE ID
//! (`--spire-parent-id`), reconciled on the SPIRE server whenever the set of entries
//! changes and at every reconcile interval. Unenrolled namespaces lose their entries.
//!
//! The service accounts are the cluster's ServiceAccount objects with the Kubernetes source
//! (as the Cilium operator does: an account's entry exists before its first pod starts, so
//! the pod's first connection does not wait for the entry to reach the SPIRE agent, and
//! scaling to zero and back does not churn entries), and the pods' service accounts with
//! the workloads file (which has no ServiceAccount objects).

use std::sync::Arc;
use std::time::Duration;

use meshwire_svid::spire::registrar::{EntrySpec, Registrar, RegistrarConfig};
use meshwire_svid::{SpiffeId, TrustDomain};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::workloads::Cluster;

/// Settings of the registrar role.
#[derive(Debug, Clone)]
pub(crate) struct RegistrarRole {
    /// The SPIRE server's API socket (`unix:///path` or `/path`).
    pub(crate) server_socket: String,
    /// Parent of every entry: the node proxies' SPIFFE ID (their agents' authorized delegate).
    pub(crate) parent: SpiffeId,
    /// The trust domain of the entries.
    pub(crate) trust_domain: TrustDomain,
    /// The enrollment label key.
    pub(crate) label_key: String,
    /// Deadline of each SPIRE call.
    pub(crate) timeout: Duration,
    /// Reconcile at least this often.
    pub(crate) interval: Duration,
}

/// The entries `cluster` calls for: one per service account of every enrolled namespace,
/// sorted by (namespace, service account).
pub(crate) fn desired_entries(cluster: &Cluster, role: &RegistrarRole) -> Vec<EntrySpec> {
    cluster
        .service_accounts
        .iter()
        .filter(|(ns, _)| cluster.namespace_enrolled(ns, &role.label_key))
        .filter_map(|(ns, sa)| {
            EntrySpec::for_service_account(&role.trust_domain, &role.parent, ns, sa)
                .inspect_err(|e| warn!(namespace = ns, service_account = sa, error = %e, "no SPIRE entry for this service account"))
                .ok()
        })
        .collect()
}

/// Reconciles the SPIRE entries with `cluster` until `shutdown`: at once, whenever the
/// cluster changes the desired entries (other changes, such as pod status updates, cost
/// no call), and every interval (repairing what others changed on the server).
pub(crate) async fn run(
    role: RegistrarRole,
    mut cluster: watch::Receiver<Arc<Cluster>>,
    shutdown: CancellationToken,
) {
    let mut config = RegistrarConfig::default();
    config.timeout = role.timeout;
    let registrar = match Registrar::connect_unix(&role.server_socket, config) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "SPIRE registrar not started");
            return;
        }
    };
    info!(server = %role.server_socket, parent = %role.parent, "registering SPIRE entries for enrolled namespaces");
    // A ticker, not a sleep restarted at each change: frequent cluster changes must not
    // starve the periodic pass. Its first tick is immediate.
    let mut ticker = tokio::time::interval(role.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The desired entries last sent to the server. A cluster change that leaves them as
    // they are costs no call, even when the last pass failed (the server down, an entry
    // refused): failures are retried at the next tick, not at every pod update.
    let mut sent: Option<Vec<EntrySpec>> = None;
    let mut due = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = cluster.changed() => if changed.is_err() { return },
            _ = ticker.tick() => due = true,
        }
        let snapshot = cluster.borrow_and_update().clone();
        let desired = desired_entries(&snapshot, &role);
        if !due && sent.as_ref() == Some(&desired) {
            continue;
        }
        due = false;
        let result = registrar.reconcile(&role.parent, &desired).await;
        let entries = desired.len();
        sent = Some(desired);
        match result {
            Ok(report) => {
                if report.created + report.updated + report.deleted > 0 {
                    info!(
                        entries,
                        created = report.created,
                        updated = report.updated,
                        deleted = report.deleted,
                        "SPIRE entries reconciled"
                    );
                }
                for f in &report.failed {
                    warn!(entry = %f.entry, operation = f.operation, code = ?f.code, message = %f.message, "SPIRE refused an entry; retrying at the next periodic pass");
                }
            }
            Err(e) => {
                warn!(error = %e, "reconciling SPIRE entries failed; retrying at the next periodic pass");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::tests::EXAMPLE;

    fn role() -> RegistrarRole {
        RegistrarRole {
            server_socket: "/run/spire/server.sock".to_owned(),
            parent: "spiffe://cluster.local/ztunnel".parse().unwrap(),
            trust_domain: "cluster.local".parse().unwrap(),
            label_key: "io.cilium/mtls-enabled".to_owned(),
            timeout: Duration::from_secs(1),
            interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn entries_follow_the_service_accounts_not_the_pods() {
        // As the Kubernetes source sees it: `shop` (enrolled) has the ServiceAccounts `idle`
        // (no pod) and `web`; its pod of `client` has no ServiceAccount object (any more).
        let mut cluster = Cluster::from_yaml(EXAMPLE).unwrap();
        cluster.service_accounts = [("shop", "idle"), ("shop", "web"), ("legacy", "default")]
            .map(|(ns, sa)| (ns.to_owned(), sa.to_owned()))
            .into();
        let ids: Vec<String> = desired_entries(&cluster, &role())
            .iter()
            .map(|e| e.spiffe_id.to_string())
            .collect();
        assert_eq!(
            ids,
            [
                "spiffe://cluster.local/ns/shop/sa/idle",
                "spiffe://cluster.local/ns/shop/sa/web"
            ]
        );
    }

    #[test]
    fn entries_follow_enrolled_namespaces_service_accounts() {
        // `shop` is enrolled (pods with service accounts `client` and the default one, on
        // two nodes); `legacy` is not.
        let cluster = Cluster::from_yaml(EXAMPLE).unwrap();
        let role = role();
        let ids: Vec<String> = desired_entries(&cluster, &role)
            .iter()
            .map(|e| e.spiffe_id.to_string())
            .collect();
        assert_eq!(
            ids,
            [
                "spiffe://cluster.local/ns/shop/sa/client",
                "spiffe://cluster.local/ns/shop/sa/default"
            ]
        );
        let entries = desired_entries(&cluster, &role);
        assert!(entries.iter().all(|e| e.parent_id == role.parent));
        assert_eq!(
            entries[0].selectors,
            [
                meshwire_svid::spire::Selector::k8s_namespace("shop"),
                meshwire_svid::spire::Selector::k8s_service_account("client")
            ]
        );
    }
}
