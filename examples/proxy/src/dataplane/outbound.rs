//! Outbound (15001): what the pod's application sends, captured by the in-pod rules.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use meshwire_hbone::client::{ClientError, Connector, PoolKey};
use meshwire_hbone::headers::{Forwarded, ForwardedElement, TraceParent};
use meshwire_hbone::{Authority, ConnectRequest, Rejection};
use meshwire_svid::SpiffeId;
use meshwire_xds_workload::Workload;
use tokio::net::TcpStream;

use super::connection::{ConnRecord, Failure};
use super::workload::{canonical, destination_of, peer_workload, workload_baggage};
use super::{DataPlane, labels};
use crate::copy::Ends;
use crate::metrics::istio::SecurityPolicy;
use crate::metrics::{Direction, Security};
use crate::pods::{Pod, PodNetwork};
use crate::routing::{self, OutboundRoute};

impl DataPlane {
    pub(super) async fn outbound(
        self: Arc<Self>,
        pod: Arc<Pod>,
        stream: TcpStream,
        peer: SocketAddr,
    ) {
        let peer = canonical(peer);
        let orig = match pod.net.original_dst(&stream) {
            Ok(d) => canonical(d),
            Err(e) => {
                self.metrics
                    .connection_failed(Direction::Outbound, "no original destination");
                tracing::info!(uid = %pod.info.uid, src = %peer, error = %e, "outbound: no original destination");
                return;
            }
        };
        let local = self.local_workload(&pod).await;
        let upstream = match self.resolve_outbound(&pod, local.as_deref(), orig).await {
            Ok(u) => u,
            Err(failure) => {
                // Fail closed: reset, never plain TCP.
                let _ = stream.set_zero_linger();
                let rec = ConnRecord::new(Direction::Outbound, Security::Mtls, peer, orig);
                return self.connection_failed(rec, &failure);
            }
        };
        let destination = destination_of(&upstream);
        let src_identity = local
            .as_ref()
            .map(|w| w.identity().to_string())
            .unwrap_or_default();
        match routing::outbound_route(orig, &destination) {
            OutboundRoute::Reject(reason) => {
                let rec = ConnRecord::new(Direction::Outbound, Security::Plaintext, peer, orig);
                self.connection_failed(rec, &Failure::new("refused", reason));
            }
            OutboundRoute::Passthrough { dst } => {
                let mut rec = ConnRecord::new(Direction::Outbound, Security::Plaintext, peer, dst)
                    .identities(src_identity, String::new());
                let labels = labels::outbound(local.as_deref(), &upstream, SecurityPolicy::Unknown);
                self.open_tcp(&mut rec, labels);
                self.passthrough(&pod, stream, dst, rec).await;
            }
            OutboundRoute::Hbone {
                next_hop,
                authority,
                identities,
                service_host,
            } => {
                let identity = identities.first().cloned().unwrap_or_default();
                let mut rec = ConnRecord::new(Direction::Outbound, Security::Mtls, peer, authority)
                    .identities(src_identity.clone(), identity.clone());
                rec.peer_identity = identity;
                let Some(local) = local else {
                    self.connection_failed(
                        rec,
                        &Failure::new(
                            "unknown source workload",
                            "the pod's xDS workload is unknown",
                        ),
                    );
                    return;
                };
                // Our own identity is the one the peer will verify.
                let labels = labels::outbound(Some(&local), &upstream, SecurityPolicy::MutualTls)
                    .source_principal(src_identity);
                self.open_tcp(&mut rec, labels);
                let target = HboneTarget {
                    next_hop,
                    authority,
                    identities,
                    service_host,
                };
                self.hbone_outbound(&pod, &local, stream, target, rec).await;
            }
        }
    }

    pub(super) async fn passthrough(
        &self,
        pod: &Pod,
        stream: TcpStream,
        dst: SocketAddr,
        rec: ConnRecord,
    ) {
        let upstream = match tokio::time::timeout(self.config.connect_timeout, pod.net.connect(dst))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.connection_failed(rec, &Failure::new("connect failed", e)),
            Err(_) => {
                return self.connection_failed(rec, &Failure::new("connect failed", "timed out"));
            }
        };
        self.splice(rec, Ends::Tcp(stream, upstream)).await;
    }

    pub(super) async fn hbone_outbound(
        &self,
        pod: &Pod,
        local: &Workload,
        stream: TcpStream,
        target: HboneTarget,
        mut rec: ConnRecord,
    ) {
        let Some(state) = self.pod_state(&pod.info.uid) else {
            return self
                .connection_failed(rec, &Failure::new("pod gone", "no HBONE state for the pod"));
        };
        let source = match SpiffeId::try_from(local.identity()) {
            Ok(s) => s,
            Err(e) => return self.connection_failed(rec, &Failure::new("bad identity", e)),
        };
        // The workload's own identity must be usable; a service's alternative name that is
        // not a SPIFFE ID only narrows what is accepted.
        let mut expected = Vec::with_capacity(target.identities.len());
        for (i, id) in target.identities.iter().enumerate() {
            match SpiffeId::new(id) {
                Ok(id) => expected.push(id),
                Err(e) if i == 0 => {
                    return self.connection_failed(rec, &Failure::new("bad identity", e));
                }
                Err(e) => {
                    tracing::debug!(san = %id, error = %e, "ignoring a service subject_alt_name that is not a SPIFFE ID");
                }
            }
        }
        let next_hop = target.next_hop;
        let source_ip = local
            .addresses
            .iter()
            .find(|ip| ip.is_ipv4() == next_hop.is_ipv4())
            .copied();
        let key = PoolKey::new(source, expected, next_hop, source_ip);
        let mut forwarded = ForwardedElement::for_client(rec.src);
        if let Some(host) = target.service_host {
            forwarded = forwarded.with_host(host);
        }
        let request = match Authority::from_socket_addr(target.authority) {
            Ok(a) => ConnectRequest::new(a)
                .with_forwarded(Forwarded::new(forwarded))
                .with_baggage(workload_baggage(local))
                .with_traceparent(TraceParent::random(&mut rand::rng())),
            Err(e) => return self.connection_failed(rec, &Failure::new("bad authority", e)),
        };
        let tunnel = match state.pool.connect(&key, &request).await {
            Ok(t) => t,
            Err(e) => {
                let reason = match &e {
                    ClientError::Tls(_)
                    | ClientError::HandshakeTimeout
                    | ClientError::UnexpectedIdentity { .. } => {
                        self.metrics.tls_handshake_failures.inc();
                        "tls handshake failed"
                    }
                    ClientError::Connect(_) | ClientError::ConnectTimeout => "connect failed",
                    ClientError::ResponseTimeout => "no answer from peer",
                    ClientError::TlsConfig(_) => "no certificate",
                    // The pod was removed while this connection was being set up.
                    ClientError::PoolClosed => "pod gone",
                    ClientError::Rejected(Rejection::Unauthorized) => "denied by peer",
                    ClientError::Rejected(_) | ClientError::UnexpectedStatus(_) => {
                        "refused by peer"
                    }
                    _ if e.tls_error().is_some() => {
                        // A TLS 1.3 client learns about a refused certificate after its
                        // handshake, from an alert.
                        self.metrics.tls_handshake_failures.inc();
                        "tls handshake failed"
                    }
                    _ => "hbone error",
                };
                return self.connection_failed(rec, &Failure::new(reason, e));
            }
        };
        rec.peer_workload = peer_workload(tunnel.response().and_then(|r| r.baggage.as_ref()));
        self.splice(rec, Ends::SocketToTunnel(stream, tunnel)).await;
    }
}

/// Where an outbound HBONE connection goes (see [`OutboundRoute::Hbone`]).
#[derive(Debug)]
pub(super) struct HboneTarget {
    next_hop: SocketAddr,
    authority: SocketAddr,
    identities: Vec<String>,
    service_host: Option<String>,
}

/// Opens pool connections from the pod's namespace (marked).
pub(super) struct PodConnector {
    pub(super) net: Arc<dyn PodNetwork>,
}

impl Connector for PodConnector {
    type Io = TcpStream;

    fn connect(&self, key: &PoolKey) -> impl Future<Output = io::Result<TcpStream>> + Send {
        let net = self.net.clone();
        let next_hop = key.next_hop;
        async move { net.connect(next_hop).await }
    }
}
