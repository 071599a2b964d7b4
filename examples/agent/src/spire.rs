//! The SPIRE registrar role (`--spire-server-socket`): one SPIRE registration entry per
//! service account of every enrolled namespace, parented to the node proxies' SPIFFE ID
//! (`--spire-parent-id`), reconciled on the SPIRE server whenever the cluster changes and
//! at every reconcile interval. Unenrolled namespaces lose their entries. Works with both
//! workload sources (they share the [`Cluster`] view).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use meshwire_svid::spire::registrar::{EntrySpec, Registrar, RegistrarConfig};
use meshwire_svid::{SpiffeId, TrustDomain};
use tokio::sync::watch;
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

/// The entries `cluster` calls for: one per (namespace, service account) of the pods in
/// enrolled namespaces, on every node.
pub(crate) fn desired_entries(cluster: &Cluster, role: &RegistrarRole) -> Vec<EntrySpec> {
    let accounts: BTreeSet<(&str, &str)> = cluster
        .pods
        .iter()
        .filter(|p| cluster.namespace_enrolled(&p.namespace, &role.label_key))
        .map(|p| (p.namespace.as_str(), p.service_account.as_str()))
        .collect();
    accounts
        .into_iter()
        .filter_map(|(ns, sa)| {
            EntrySpec::for_service_account(&role.trust_domain, &role.parent, ns, sa)
                .inspect_err(|e| warn!(namespace = ns, service_account = sa, error = %e, "no SPIRE entry for this service account"))
                .ok()
        })
        .collect()
}

/// Reconciles the SPIRE entries with `cluster` until `shutdown`.
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
    loop {
        let snapshot = cluster.borrow_and_update().clone();
        let desired = desired_entries(&snapshot, &role);
        match registrar.reconcile(&role.parent, &desired).await {
            Ok(report) => {
                if report.created + report.updated + report.deleted > 0 {
                    info!(
                        entries = desired.len(),
                        created = report.created,
                        updated = report.updated,
                        deleted = report.deleted,
                        "SPIRE entries reconciled"
                    );
                }
                for f in &report.failed {
                    warn!(entry = %f.entry, operation = f.operation, code = ?f.code, message = %f.message, "SPIRE refused an entry");
                }
            }
            Err(e) => warn!(error = %e, "reconciling SPIRE entries failed; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = cluster.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(role.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::tests::EXAMPLE;

    #[test]
    fn entries_follow_enrolled_namespaces_service_accounts() {
        // `shop` is enrolled (pods with service accounts `client` and the default one, on
        // two nodes); `legacy` is not.
        let cluster = Cluster::from_yaml(EXAMPLE).unwrap();
        let role = RegistrarRole {
            server_socket: "/run/spire/server.sock".to_owned(),
            parent: "spiffe://cluster.local/ztunnel".parse().unwrap(),
            trust_domain: "cluster.local".parse().unwrap(),
            label_key: "io.cilium/mtls-enabled".to_owned(),
            timeout: Duration::from_secs(1),
            interval: Duration::from_secs(1),
        };
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
