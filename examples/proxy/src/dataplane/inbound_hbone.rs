//! Inbound HBONE (15008): mutual TLS with the pod's certificate, then one CONNECT stream per
//! proxied connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use meshwire_hbone::Rejection;
use meshwire_hbone::headers::Forwarded;
use meshwire_hbone::server::{
    ConnectionInfo as HboneConnection, Handler, IncomingTunnel, ServerError, Target,
};
use meshwire_xds_workload::Identity;
use meshwire_xds_workload::authorization::{ConnectionInfo, Decision};
use tokio::net::TcpStream;

use super::DataPlane;
use super::connection::{ConnRecord, DENIED_BY_POLICY, Failure};
use super::labels::{self, InboundClient};
use super::workload::{canonical, peer_workload, workload_baggage};
use crate::copy::Ends;
use crate::metrics::istio::SecurityPolicy;
use crate::metrics::{Direction, Security};
use crate::pods::Pod;

impl DataPlane {
    pub(super) async fn inbound_hbone(
        self: Arc<Self>,
        pod: Arc<Pod>,
        stream: TcpStream,
        peer: SocketAddr,
    ) {
        let Some(state) = self.pod_state(&pod.info.uid) else {
            return;
        };
        let local_addr = match stream.local_addr() {
            Ok(a) => canonical(a),
            Err(_) => return,
        };
        let info = HboneConnection::new(local_addr, canonical(peer));
        let slot = match self.hbone_limit.admit(pod.info.uid.clone()) {
            Ok(s) => s,
            Err(e) => {
                // Every connection under the bound is established: close this one now.
                tracing::debug!(uid = %pod.info.uid, %peer, error = %e, "HBONE connection refused");
                self.metrics.connection_dropped("hbone", "refused");
                return;
            }
        };
        match state.server.serve_limited(stream, info, slot).await {
            Ok(()) => {}
            Err(ServerError::Shed) => {
                tracing::debug!(uid = %pod.info.uid, %peer, "HBONE connection shed for a newer one");
                self.metrics.connection_dropped("hbone", "shed");
            }
            Err(ServerError::AcceptTimeout) => {
                tracing::debug!(uid = %pod.info.uid, %peer, "no CONNECT request before the accept deadline");
                self.metrics.connection_dropped("hbone", "timeout");
            }
            Err(e) => {
                let handshake = matches!(
                    e,
                    ServerError::Tls(_)
                        | ServerError::HandshakeTimeout
                        | ServerError::NoPeerIdentity
                );
                if handshake {
                    self.metrics.tls_handshake_failures.inc();
                }
                let reason = if handshake {
                    "tls handshake failed"
                } else if matches!(e, ServerError::TlsConfig(_)) {
                    "no certificate"
                } else {
                    "hbone error"
                };
                if handshake || matches!(e, ServerError::TlsConfig(_)) {
                    let rec = ConnRecord::new(
                        Direction::Inbound,
                        Security::Mtls,
                        info.peer_addr,
                        local_addr,
                    );
                    self.connection_failed(rec, &Failure::new(reason, &e));
                } else if is_protocol_violation(&e) {
                    tracing::info!(uid = %pod.info.uid, peer = %info.peer_addr, error = %e, "HBONE connection closed: the client broke the HTTP/2 protocol");
                    self.metrics.connection_dropped("hbone", "protocol error");
                } else {
                    tracing::debug!(uid = %pod.info.uid, peer = %info.peer_addr, error = %e, "HBONE connection ended");
                }
            }
        }
    }

    /// One CONNECT stream on a pod's 15008.
    pub(super) async fn inbound_stream(self: Arc<Self>, pod: Arc<Pod>, tunnel: IncomingTunnel) {
        let info = *tunnel.connection();
        let local_addr = canonical(info.local_addr);
        let src = canonical(info.peer_addr);
        let peer_id = tunnel.peer_identity().clone();
        let authority = tunnel.request().authority.clone();
        // The log's source is the socket's peer; what the peer claims about the original
        // client is kept apart.
        let mut rec = ConnRecord::new(Direction::Inbound, Security::Mtls, src, local_addr);
        rec.forwarded_for = tunnel
            .request()
            .forwarded
            .as_ref()
            .and_then(Forwarded::client_addr)
            .map(canonical);
        rec.peer_identity = peer_id.to_string();
        rec.source_identity = peer_id.to_string();
        rec.peer_workload = peer_workload(tunnel.request().baggage.as_ref());

        let Some(local) = self.local_workload(&pod).await else {
            tunnel.reject(Rejection::ServiceUnavailable);
            return self.connection_failed(
                rec,
                &Failure::new("unknown workload", "the pod's xDS workload is unknown"),
            );
        };
        rec.destination_identity = local.identity().to_string();
        // The CONNECT destination rules: an IP authority must name this pod's address (the
        // one the connection arrived on) and no port may be one of the proxy's own.
        let admitted = match self.admission.check(tunnel.request(), &info) {
            Ok(t) => t,
            Err(e) => {
                tunnel.reject(e.rejection());
                if let Some(a) = authority.socket_addr() {
                    rec.dst = canonical(a);
                }
                return self.connection_failed(rec, &Failure::new("refused", e));
            }
        };
        // The application is always at this pod's address. An IP authority gives the port; a
        // host-name authority names a service this pod is an endpoint of, and its port is
        // mapped like the service maps it.
        let port = match admitted {
            Target::Addr(a) => a.port(),
            Target::Host(host) => {
                match self
                    .store
                    .resolve_service_host(&local, host.host(), host.port())
                {
                    Some(target) => target.port,
                    None => {
                        tunnel.reject(Rejection::ServiceUnavailable);
                        return self.connection_failed(
                            rec,
                            &Failure::new(
                                "refused",
                                format!("{authority} is not a service port of this pod's workload"),
                            ),
                        );
                    }
                }
            }
            _ => {
                tunnel.reject(Rejection::BadRequest);
                return self.connection_failed(rec, &Failure::new("refused", "unusable authority"));
            }
        };
        let target = SocketAddr::new(local_addr.ip(), port);
        rec.dst = target;
        if let Err(e) = self.admission.check_port(port) {
            tunnel.reject(e.rejection());
            return self.connection_failed(rec, &Failure::new("refused", e));
        }
        let request = tunnel.request();
        let client = InboundClient {
            // The metrics' source workload is looked up at the address the client claims,
            // as before (the peer proxy forwards for the pod it serves).
            ip: Some(rec.forwarded_for.unwrap_or(rec.src).ip()),
            principal: Some(rec.peer_identity.clone()),
            baggage: request.baggage.as_ref(),
            host: authority
                .host()
                .or_else(|| request.forwarded.as_ref().and_then(Forwarded::host)),
        };
        let labels = labels::inbound(
            &self.store,
            &local,
            port,
            &client,
            SecurityPolicy::MutualTls,
        );
        self.open_tcp(&mut rec, labels);
        let peer_identity = Identity::try_from(&peer_id).ok();
        let conn = ConnectionInfo::new(src.ip(), target, peer_identity);
        if let Decision::Deny(reason) = self.store.authorize(&conn, &local).decision {
            tunnel.reject(Rejection::Unauthorized);
            self.metrics.policy_denials.inc();
            return self.connection_failed(rec, &Failure::new(DENIED_BY_POLICY, reason));
        }
        let upstream = match self.connect_app(&pod, src, target).await {
            Ok(s) => s,
            Err(failure) => {
                tunnel.reject(Rejection::ServiceUnavailable);
                return self.connection_failed(rec, &failure);
            }
        };
        let tunnel = match tunnel.accept_with_baggage(workload_baggage(&local)) {
            Ok(t) => t,
            Err(e) => return self.connection_failed(rec, &Failure::new("hbone error", e)),
        };
        self.splice_authorized(
            rec,
            Ends::TunnelToSocket(tunnel, upstream),
            conn,
            local.uid.clone(),
        )
        .await;
    }
}

/// Hands each CONNECT stream of a pod's server to the data plane.
pub(super) struct InboundStreams {
    pub(super) dp: Arc<DataPlane>,
    pub(super) pod: Arc<Pod>,
}

impl Handler for InboundStreams {
    fn handle(&self, tunnel: IncomingTunnel) -> impl Future<Output = ()> + Send {
        let dp = self.dp.clone();
        let pod = self.pod.clone();
        let kill = pod.killed().clone();
        async move {
            tokio::select! {
                () = kill.cancelled() => {}
                () = dp.inbound_stream(pod, tunnel) => {}
            }
        }
    }
}

/// Whether the connection ended because this end found the client's HTTP/2 malformed (as
/// opposed to the client going away, or ending the connection itself).
fn is_protocol_violation(e: &ServerError) -> bool {
    match e {
        ServerError::Http2(h) => !h.is_io() && !h.is_remote(),
        _ => false,
    }
}
