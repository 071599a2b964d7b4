//! Strict mutual TLS on the outbound side.
//!
//! A pod is strict when a policy that applies to it requires mutual TLS (the agent publishes
//! its namespace's `istio_converted_static_strict` policy; see [`requires_mtls`]). Such a
//! pod never sends plain TCP to a destination that is enrolled but not ready for HBONE yet
//! (xDS workload `hbone_pending`): the connection waits up to `STRICT_HBONE_WAIT` for the
//! destination's update, then fails closed (reset, a `connection failed` log line and
//! `connection_failures{reason="strict mtls: destination not ready"}`). Destinations outside the mesh (unknown, or `tunnel_protocol` NONE without
//! the marker) still get plain TCP, and permissive pods are not affected at all.
//!
//! The inbound side needs nothing here: the strict policy denies plaintext on 15006 through
//! the ordinary L4 authorization.
//!
//! [`requires_mtls`]: meshwire_xds_workload::WorkloadStore::requires_mtls

use std::net::SocketAddr;

use meshwire_xds_workload::Workload;
use meshwire_xds_workload::store::Upstream;
use meshwire_xds_workload::workload::TunnelProtocol;

use super::DataPlane;
use super::connection::Failure;
use crate::pods::Pod;

/// The reason label of an outbound connection of a strict pod that failed closed.
pub(super) const STRICT_NOT_READY: &str = "strict mtls: destination not ready";

/// Whether the chosen destination is enrolled but not HBONE yet.
fn pending(upstream: &Upstream) -> bool {
    upstream
        .workload()
        .is_some_and(|w| w.protocol == TunnelProtocol::None && w.hbone_pending)
}

impl DataPlane {
    /// Where the outbound connection of `pod` (`local`: its xDS workload, if known) to
    /// `orig` goes. For a strict source whose destination is pending, waits for the store
    /// to change it, up to the configured bound; `Err` when it is still pending then.
    ///
    /// A pod whose own workload is unknown is judged by the namespace ZDS gave it, so a
    /// strict namespace fails closed even then.
    pub(super) async fn resolve_outbound(
        &self,
        pod: &Pod,
        local: Option<&Workload>,
        orig: SocketAddr,
    ) -> Result<Upstream, Failure> {
        let network = local.map_or("", |w| w.network.as_str());
        let upstream = self.store.resolve_upstream(network, orig);
        if !pending(&upstream) || !self.source_requires_mtls(pod, local) {
            return Ok(upstream);
        }
        // Only the rare waiting connection subscribes; it looks again once subscribed, so
        // an update between the first lookup and the subscription is not missed.
        let mut changes = self.store.subscribe();
        let mut upstream = self.store.resolve_upstream(network, orig);
        let wait = self.config.strict_hbone_wait;
        tracing::debug!(dst = %orig, ?wait, "strict mtls: waiting for the destination to be ready for HBONE");
        let deadline = tokio::time::Instant::now() + wait;
        while pending(&upstream) {
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => upstream = self.store.resolve_upstream(network, orig),
                _ => {
                    return Err(Failure::new(
                        STRICT_NOT_READY,
                        format!(
                            "{orig} is enrolled but not ready for HBONE after {wait:?}; \
                             strict mutual TLS refuses plain TCP"
                        ),
                    ));
                }
            }
        }
        Ok(upstream)
    }

    fn source_requires_mtls(&self, pod: &Pod, local: Option<&Workload>) -> bool {
        match local {
            Some(w) => self.store.requires_mtls(w),
            None => {
                let info = &pod.info;
                let by_namespace = Workload::new(&info.uid, &info.name, &info.namespace);
                self.store.requires_mtls(&by_namespace)
            }
        }
    }
}
