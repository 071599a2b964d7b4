//! The data plane: what happens to a connection accepted on one of a pod's listeners.
//!
//! * 15001 (outbound): original destination → workload store → HBONE through the pod's pool
//!   when the destination is enrolled, plain TCP from the pod's namespace otherwise.
//! * 15008 (inbound HBONE): TLS with the pod's certificate (client certificate from the same
//!   trust domain), then per CONNECT stream: destination check, illegal ports, L4
//!   authorization with the client's SPIFFE ID, dial the application, 200, splice.
//! * 15006 (inbound plaintext): authorization without identity, then forward.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use meshwire_hbone::client::{
    ClientError, ClientTlsProvider, Connector, Pool, PoolConfig, PoolKey,
};
use meshwire_hbone::headers::{
    Baggage, Forwarded, ForwardedElement, TraceParent, WorkloadBaggage, WorkloadKind,
};
use meshwire_hbone::server::{IncomingTunnel, ServeConfig, Server, ServerError, ServerTlsProvider};
use meshwire_hbone::{Authority, ConnectRequest, Rejection};
use meshwire_svid::{IdentityPolicy, SpiffeId, TrustDomain};
use meshwire_xds_workload::authorization::{AuthorizationPolicy, ConnectionInfo, Decision};
use meshwire_xds_workload::store::Upstream;
use meshwire_xds_workload::workload::{HealthStatus, TunnelProtocol, WorkloadType};
use meshwire_xds_workload::{Identity, Service, Workload, WorkloadStore};
use prometheus_client::metrics::counter::Counter;
use rustls::crypto::CryptoProvider;
use tokio::net::TcpStream;

use crate::certs::{Certificates, Material};
use crate::copy::{Ends, Transferred};
use crate::metrics::{ConnectionLabels, Direction, Metrics, Security, TrafficLabels};
use crate::pods::{Handler, ListenerKind, Pod, PodNetwork};
use crate::routing::{self, Destination, DestinationWorkload, OutboundRoute, ServiceTarget};

/// Settings of the data plane.
#[derive(Debug, Clone)]
pub(crate) struct DataPlaneConfig {
    /// Only xDS workloads on this node are pods of this proxy.
    pub(crate) node_name: String,
    /// How long to wait for the xDS workload of a pod that ZDS announced.
    pub(crate) local_lookup_timeout: Duration,
    /// TCP connect timeout (application and passthrough).
    pub(crate) connect_timeout: Duration,
    /// How long an HBONE server lets streams run after a drain started.
    pub(crate) drain_deadline: Duration,
    /// Connect to the application with the original client's address as source.
    pub(crate) original_source: bool,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            local_lookup_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            drain_deadline: Duration::from_secs(5),
            original_source: true,
        }
    }
}

/// Per-pod HBONE state: the outbound pool (connections made in the pod's namespace with its
/// identity) and the inbound server (the pod's certificate).
struct PodState {
    pod: Arc<Pod>,
    pool: Pool<PodConnector, ClientTls>,
    server: Server<InboundStreams, PodServerTls>,
}

impl fmt::Debug for PodState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodState")
            .field("pool", &self.pool)
            .field("server", &self.server)
            .finish()
    }
}

/// The data plane shared by every pod.
pub(crate) struct DataPlane {
    config: DataPlaneConfig,
    metrics: Arc<Metrics>,
    store: Arc<WorkloadStore>,
    certs: Arc<dyn Certificates>,
    crypto: Arc<CryptoProvider>,
    pods: Mutex<HashMap<String, Arc<PodState>>>,
}

impl fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataPlane")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why a connection could not be carried; the reason label of `connection_failures`.
#[derive(Debug)]
struct Failure {
    reason: &'static str,
    detail: String,
}

impl Failure {
    fn new(reason: &'static str, detail: impl fmt::Display) -> Self {
        Self {
            reason,
            detail: detail.to_string(),
        }
    }
}

impl DataPlane {
    pub(crate) fn new(
        config: DataPlaneConfig,
        metrics: Arc<Metrics>,
        store: Arc<WorkloadStore>,
        certs: Arc<dyn Certificates>,
        crypto: Arc<CryptoProvider>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            metrics,
            store,
            certs,
            crypto,
            pods: Mutex::new(HashMap::new()),
        })
    }

    fn pod_states(&self) -> MutexGuard<'_, HashMap<String, Arc<PodState>>> {
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pod_state(&self, uid: &str) -> Option<Arc<PodState>> {
        self.pod_states().get(uid).cloned()
    }

    /// The xDS workload of a pod: on this node, with the pod's name, namespace and service
    /// account.
    pub(crate) fn find_local(&self, pod: &Pod) -> Option<Arc<Workload>> {
        let info = &pod.info;
        let sa = if info.service_account.is_empty() {
            meshwire_xds_workload::workload::DEFAULT_SERVICE_ACCOUNT
        } else {
            info.service_account.as_str()
        };
        self.store
            .workloads_on_node(&self.config.node_name)
            .into_iter()
            .find(|w| {
                w.name == info.name && w.namespace == info.namespace && w.service_account == sa
            })
    }

    /// Like [`find_local`](Self::find_local), waiting up to the lookup timeout for xDS to
    /// deliver the workload.
    async fn local_workload(&self, pod: &Pod) -> Option<Arc<Workload>> {
        let deadline = tokio::time::Instant::now() + self.config.local_lookup_timeout;
        let mut changes = self.store.subscribe();
        loop {
            if let Some(w) = self.find_local(pod) {
                return Some(w);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// What the store knows about an outbound destination, seen from `network`: a service
    /// VIP resolves to one of its endpoints with the target port, a pod address to the pod.
    fn destination(&self, dst: SocketAddr, network: &str) -> Destination {
        match self.store.resolve_upstream(network, dst) {
            Upstream::ServiceEndpoint {
                service,
                workload,
                address,
                ..
            } => {
                let service = ServiceTarget {
                    hostname: service.hostname.clone(),
                    subject_alt_names: service.subject_alt_names.clone(),
                };
                Destination::Workload(to_destination(&workload, address, Some(service)))
            }
            Upstream::Workload {
                workload, address, ..
            } => Destination::Workload(to_destination(&workload, address, None)),
            Upstream::ServicePassthrough { .. } => Destination::Passthrough,
            Upstream::NoEndpoint { .. } => Destination::ServiceWithoutEndpoints,
            _ => Destination::Unknown,
        }
    }

    fn connection_failed(&self, rec: &ConnRecord, failure: &Failure) {
        self.metrics
            .connection_failed(rec.direction, failure.reason);
        tracing::info!(
            direction = %rec.direction,
            security = %rec.security,
            src = %rec.src,
            dst = %rec.dst,
            peer_identity = %rec.peer_identity,
            reason = failure.reason,
            error = %failure.detail,
            "connection failed"
        );
    }

    /// Dials the application of an inbound connection from the pod's namespace: with the
    /// client's address as source when enabled and possible, else from the pod's own address.
    async fn connect_app(
        &self,
        pod: &Pod,
        client: SocketAddr,
        target: SocketAddr,
    ) -> Result<TcpStream, Failure> {
        let timeout = self.config.connect_timeout;
        let timed_out = || {
            Failure::new(
                "connect failed",
                format!("no answer from {target} within {timeout:?}"),
            )
        };
        let spoof = self.config.original_source
            && client.is_ipv4() == target.is_ipv4()
            && client.ip() != target.ip()
            && !client.ip().is_loopback();
        if spoof {
            match tokio::time::timeout(timeout, pod.net.connect_as(client.ip(), target)).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err(Failure::new("connect failed", e));
                }
                Ok(Err(e)) => {
                    tracing::debug!(
                        %target, source = %client.ip(), error = %e,
                        "connecting with the original source failed; using the pod address"
                    );
                }
                Err(_) => return Err(timed_out()),
            }
        }
        match tokio::time::timeout(timeout, pod.net.connect(target)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(Failure::new("connect failed", e)),
            Err(_) => Err(timed_out()),
        }
    }

    // ---------------------------------------------------------------------------------
    // outbound (15001)
    // ---------------------------------------------------------------------------------

    async fn outbound(self: Arc<Self>, pod: Arc<Pod>, stream: TcpStream, peer: SocketAddr) {
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
        let network = local.as_ref().map_or("", |w| w.network.as_str());
        let destination = self.destination(orig, network);
        let src_identity = local
            .as_ref()
            .map(|w| w.identity().to_string())
            .unwrap_or_default();
        match routing::outbound_route(orig, &destination) {
            OutboundRoute::Reject(reason) => {
                let rec = ConnRecord::new(Direction::Outbound, Security::Plaintext, peer, orig);
                self.connection_failed(&rec, &Failure::new("refused", reason));
            }
            OutboundRoute::Passthrough { dst } => {
                let rec = ConnRecord::new(Direction::Outbound, Security::Plaintext, peer, dst)
                    .identities(src_identity, String::new());
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
                    .identities(src_identity, identity.clone());
                rec.peer_identity = identity;
                let Some(local) = local else {
                    self.connection_failed(
                        &rec,
                        &Failure::new(
                            "unknown source workload",
                            "the pod's xDS workload is unknown",
                        ),
                    );
                    return;
                };
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

    async fn passthrough(&self, pod: &Pod, stream: TcpStream, dst: SocketAddr, rec: ConnRecord) {
        let upstream = match tokio::time::timeout(self.config.connect_timeout, pod.net.connect(dst))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.connection_failed(&rec, &Failure::new("connect failed", e)),
            Err(_) => {
                return self.connection_failed(&rec, &Failure::new("connect failed", "timed out"));
            }
        };
        self.splice(rec, Ends::Tcp(stream, upstream)).await;
    }

    async fn hbone_outbound(
        &self,
        pod: &Pod,
        local: &Workload,
        stream: TcpStream,
        target: HboneTarget,
        mut rec: ConnRecord,
    ) {
        let Some(state) = self.pod_state(&pod.info.uid) else {
            return self.connection_failed(
                &rec,
                &Failure::new("pod gone", "no HBONE state for the pod"),
            );
        };
        let source = match spiffe_of(&local.identity()) {
            Ok(s) => s,
            Err(e) => return self.connection_failed(&rec, &Failure::new("bad identity", e)),
        };
        // The workload's own identity must be usable; a service's alternative name that is
        // not a SPIFFE ID only narrows what is accepted.
        let mut expected = Vec::with_capacity(target.identities.len());
        for (i, id) in target.identities.iter().enumerate() {
            match SpiffeId::new(id) {
                Ok(id) => expected.push(id),
                Err(e) if i == 0 => {
                    return self.connection_failed(&rec, &Failure::new("bad identity", e));
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
            Err(e) => return self.connection_failed(&rec, &Failure::new("bad authority", e)),
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
                return self.connection_failed(&rec, &Failure::new(reason, e));
            }
        };
        rec.peer_workload = peer_workload(tunnel.response().and_then(|r| r.baggage.as_ref()));
        self.splice(rec, Ends::SocketToTunnel(stream, tunnel)).await;
    }

    // ---------------------------------------------------------------------------------
    // inbound HBONE (15008)
    // ---------------------------------------------------------------------------------

    async fn inbound_hbone(self: Arc<Self>, pod: Arc<Pod>, stream: TcpStream, peer: SocketAddr) {
        let Some(state) = self.pod_state(&pod.info.uid) else {
            return;
        };
        let local_addr = match stream.local_addr() {
            Ok(a) => canonical(a),
            Err(_) => return,
        };
        let info = meshwire_hbone::server::ConnectionInfo::new(local_addr, canonical(peer));
        match state.server.serve_connection(stream, info).await {
            Ok(()) => {}
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
                    self.connection_failed(&rec, &Failure::new(reason, &e));
                } else {
                    tracing::debug!(uid = %pod.info.uid, peer = %info.peer_addr, error = %e, "HBONE connection ended");
                }
            }
        }
    }

    /// One CONNECT stream on a pod's 15008.
    async fn inbound_stream(self: Arc<Self>, pod: Arc<Pod>, tunnel: IncomingTunnel) {
        let info = *tunnel.connection();
        let local_addr = canonical(info.local_addr);
        let src = canonical(info.peer_addr);
        let peer_id = tunnel.peer_identity().clone();
        let authority = tunnel.request().authority.clone();
        let mut rec = ConnRecord::new(
            Direction::Inbound,
            Security::Mtls,
            tunnel
                .request()
                .forwarded
                .as_ref()
                .and_then(Forwarded::client_addr)
                .map_or(src, canonical),
            local_addr,
        );
        rec.peer_identity = peer_id.to_string();
        rec.source_identity = peer_id.to_string();
        rec.peer_workload = peer_workload(tunnel.request().baggage.as_ref());

        let Some(local) = self.local_workload(&pod).await else {
            tunnel.reject(Rejection::ServiceUnavailable);
            return self.connection_failed(
                &rec,
                &Failure::new("unknown workload", "the pod's xDS workload is unknown"),
            );
        };
        rec.destination_identity = local.identity().to_string();
        // An IP authority must name this pod's address, the one the connection arrived on.
        if let Err(rejection) = tunnel.request().check_destination(local_addr.ip()) {
            tunnel.reject(rejection);
            if let Some(a) = authority.socket_addr() {
                rec.dst = canonical(a);
            }
            return self.connection_failed(
                &rec,
                &Failure::new(
                    "refused",
                    "authority does not match the destination address",
                ),
            );
        }
        // The application is always at this pod's address. An IP authority gives the port; a
        // host-name authority names a service this pod is an endpoint of, and its port is
        // mapped like the service maps it.
        let port = match (authority.socket_addr(), authority.host()) {
            (Some(a), _) => a.port(),
            (None, Some(host)) => {
                match self
                    .store
                    .resolve_service_host(&local, host, authority.port())
                {
                    Some(target) => target.port,
                    None => {
                        tunnel.reject(Rejection::ServiceUnavailable);
                        return self.connection_failed(
                            &rec,
                            &Failure::new(
                                "refused",
                                format!("{authority} is not a service port of this pod's workload"),
                            ),
                        );
                    }
                }
            }
            (None, None) => {
                tunnel.reject(Rejection::BadRequest);
                return self
                    .connection_failed(&rec, &Failure::new("refused", "unusable authority"));
            }
        };
        let target = SocketAddr::new(local_addr.ip(), port);
        rec.dst = target;
        if routing::is_illegal_port(port) {
            tunnel.reject(Rejection::ServiceUnavailable);
            return self.connection_failed(&rec, &Failure::new("refused", routing::RECURSION));
        }
        let peer_identity = Identity::from_str(&peer_id.to_string()).ok();
        let conn = ConnectionInfo::new(src.ip(), target, peer_identity);
        if let Decision::Deny(reason) = self.store.authorize(&conn, &local).decision {
            tunnel.reject(Rejection::Unauthorized);
            self.metrics.policy_denials.inc();
            return self.connection_failed(&rec, &Failure::new("denied by policy", reason));
        }
        let upstream = match self.connect_app(&pod, src, target).await {
            Ok(s) => s,
            Err(failure) => {
                tunnel.reject(Rejection::ServiceUnavailable);
                return self.connection_failed(&rec, &failure);
            }
        };
        let tunnel = match tunnel.accept_with_baggage(workload_baggage(&local)) {
            Ok(t) => t,
            Err(e) => return self.connection_failed(&rec, &Failure::new("hbone error", e)),
        };
        self.splice(rec, Ends::TunnelToSocket(tunnel, upstream))
            .await;
    }

    // ---------------------------------------------------------------------------------
    // inbound plaintext (15006)
    // ---------------------------------------------------------------------------------

    async fn inbound_plaintext(
        self: Arc<Self>,
        pod: Arc<Pod>,
        stream: TcpStream,
        peer: SocketAddr,
    ) {
        let src = canonical(peer);
        let orig = match pod.net.original_dst(&stream) {
            Ok(d) => canonical(d),
            Err(e) => {
                self.metrics
                    .connection_failed(Direction::Inbound, "no original destination");
                tracing::info!(uid = %pod.info.uid, src = %src, error = %e, "inbound: no original destination");
                return;
            }
        };
        let mut rec = ConnRecord::new(Direction::Inbound, Security::Plaintext, src, orig);
        let target = match routing::inbound_plaintext_target(orig) {
            Ok(t) => t,
            Err(reason) => return self.connection_failed(&rec, &Failure::new("refused", reason)),
        };
        let Some(local) = self.local_workload(&pod).await else {
            return self.connection_failed(
                &rec,
                &Failure::new("unknown workload", "the pod's xDS workload is unknown"),
            );
        };
        rec.destination_identity = local.identity().to_string();
        let conn = ConnectionInfo::new(src.ip(), target, None);
        if let Decision::Deny(reason) = self.store.authorize(&conn, &local).decision {
            self.metrics.policy_denials.inc();
            return self.connection_failed(&rec, &Failure::new("denied by policy", reason));
        }
        let upstream = match self.connect_app(&pod, src, target).await {
            Ok(s) => s,
            Err(failure) => return self.connection_failed(&rec, &failure),
        };
        self.splice(rec, Ends::Tcp(stream, upstream)).await;
    }

    // ---------------------------------------------------------------------------------
    // shared
    // ---------------------------------------------------------------------------------

    /// Counts an established connection, copies until both sides are done, logs it.
    async fn splice(&self, rec: ConnRecord, ends: Ends) {
        let traffic = TrafficLabels {
            direction: rec.direction,
            security: rec.security,
        };
        self.metrics
            .connections
            .get_or_create(&ConnectionLabels {
                direction: rec.direction,
                security: rec.security,
                source_identity: rec.source_identity.clone(),
                destination_identity: rec.destination_identity.clone(),
            })
            .inc();
        let active = self
            .metrics
            .active_connections
            .get_or_create_owned(&traffic);
        active.inc();
        let bytes: Counter = self.metrics.bytes.get_or_create_owned(&traffic);
        let transferred = Arc::new(Transferred::default());
        // Decrement the gauge and log also when the task is cancelled (pod removed, drain
        // period over).
        let _done = SpliceDone {
            rec,
            transferred: transferred.clone(),
            active,
        };
        if let Err(e) = ends.copy(&bytes, &transferred).await {
            tracing::debug!(error = %e, "copy ended with an error");
        }
    }

    /// The JSON of `/config_dump`: pods held (from the supervisor), workloads and policies
    /// (xDS), certificates.
    pub(crate) fn dump(&self, pods: &[Arc<Pod>]) -> serde_json::Value {
        let pods: Vec<_> = pods
            .iter()
            .map(|p| {
                let local = self.find_local(p);
                let pool = self.pod_state(&p.info.uid).map(|s| {
                    let st = s.pool.stats();
                    serde_json::json!({
                        "opened": st.opened, "reused": st.reused, "closed": st.closed,
                        "dial_failures": st.dial_failures, "pooled": st.pooled,
                    })
                });
                serde_json::json!({
                    "uid": p.info.uid,
                    "name": p.info.name,
                    "namespace": p.info.namespace,
                    "service_account": p.info.service_account,
                    "netns": p.net.id(),
                    "since": crate::certs::unix(p.since),
                    "listeners": p.listeners.iter().map(|(k, a)| (format!("{k:?}"), a.to_string())).collect::<BTreeMap<_, _>>(),
                    "workload_uid": local.as_ref().map(|w| w.uid.clone()),
                    "identity": local.as_ref().map(|w| w.identity().to_string()),
                    "hbone_pool": pool,
                })
            })
            .collect();
        // One consistent listing of the whole store.
        let store = self.store.snapshot();
        let mut endpoints: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for w in &store.workloads {
            for service in w.services.keys() {
                endpoints
                    .entry(service.to_string())
                    .or_default()
                    .push(&w.uid);
            }
        }
        serde_json::json!({
            "node": self.config.node_name,
            "pods": pods,
            "workloads": store.workloads.iter().map(|w| workload_json(w)).collect::<Vec<_>>(),
            "services": store
                .services
                .iter()
                .map(|s| service_json(s, endpoints.get(&s.key().to_string())))
                .collect::<Vec<_>>(),
            "policies": store.policies.iter().map(|p| policy_json(p)).collect::<Vec<_>>(),
            "workload_count": store.workloads.len(),
            "service_count": store.services.len(),
            "policy_count": store.policies.len(),
            "certificates": self.certs.held(),
        })
    }
}

fn ports_json(ports: &[meshwire_xds_workload::workload::Port]) -> serde_json::Value {
    ports
        .iter()
        .map(|p| serde_json::json!({"service_port": p.service_port, "target_port": p.target_port}))
        .collect()
}

fn workload_json(w: &Workload) -> serde_json::Value {
    serde_json::json!({
        "uid": w.uid,
        "name": w.name,
        "namespace": w.namespace,
        "node": w.node,
        "addresses": w.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "network": w.network,
        "protocol": if w.protocol == TunnelProtocol::Hbone { "HBONE" } else { "NONE" },
        "identity": w.identity().to_string(),
        "status": if w.status == HealthStatus::Healthy { "healthy" } else { "unhealthy" },
        "services": w.services.iter().map(|(k, ports)| (k.to_string(), ports_json(ports))).collect::<BTreeMap<_, _>>(),
        "authorization_policies": w.authorization_policies,
    })
}

fn service_json(s: &Service, endpoints: Option<&Vec<&str>>) -> serde_json::Value {
    serde_json::json!({
        "name": s.name,
        "namespace": s.namespace,
        "hostname": s.hostname,
        "vips": s.vips.iter().map(|v| format!("{}/{}", v.network, v.prefix)).collect::<Vec<_>>(),
        "ports": ports_json(&s.ports),
        "subject_alt_names": s.subject_alt_names,
        "endpoints": endpoints.cloned().unwrap_or_default(),
    })
}

fn policy_json(p: &AuthorizationPolicy) -> serde_json::Value {
    serde_json::json!({
        "key": p.key(),
        "scope": format!("{:?}", p.scope),
        "action": format!("{:?}", p.action),
        "rules": p.rules.len(),
        "dry_run": p.dry_run,
    })
}

fn to_destination(
    w: &Workload,
    address: SocketAddr,
    service: Option<ServiceTarget>,
) -> DestinationWorkload {
    DestinationWorkload {
        ip: address.ip(),
        port: address.port(),
        hbone: w.protocol == TunnelProtocol::Hbone,
        identity: w.identity().to_string(),
        service,
    }
}

/// Where an outbound HBONE connection goes (see [`OutboundRoute::Hbone`]).
#[derive(Debug)]
struct HboneTarget {
    next_hop: SocketAddr,
    authority: SocketAddr,
    identities: Vec<String>,
    service_host: Option<String>,
}

/// The attributes of `w` an HBONE peer learns from `baggage` (request: the source workload;
/// 200 response: the destination workload). Empty attributes are left out.
fn workload_baggage(w: &Workload) -> Baggage {
    let kind = match w.workload_type {
        WorkloadType::CronJob => WorkloadKind::CronJob,
        WorkloadType::Pod => WorkloadKind::Pod,
        WorkloadType::Job => WorkloadKind::Job,
        _ => WorkloadKind::Deployment,
    };
    let mut b = WorkloadBaggage::default();
    b.cluster = Some(w.cluster_id.clone());
    b.namespace = Some(w.namespace.clone());
    b.workload = (!w.workload_name.is_empty()).then(|| (kind, w.workload_name.clone()));
    b.service_name = Some(w.canonical_name.clone());
    b.service_version = Some(w.canonical_revision.clone());
    b.region = Some(w.locality.region.clone());
    b.zone = Some(w.locality.zone.clone());
    b.to_baggage()
}

/// `<namespace>/<workload name>` of the peer as its `baggage` describes it; empty when it
/// sent none (the value is the peer's claim, for logs only).
fn peer_workload(baggage: Option<&Baggage>) -> String {
    let Some(b) = baggage.map(WorkloadBaggage::from_baggage) else {
        return String::new();
    };
    match (b.namespace, b.workload) {
        (Some(ns), Some((_, name))) => format!("{ns}/{name}"),
        (Some(ns), None) => ns,
        (None, Some((_, name))) => name,
        (None, None) => String::new(),
    }
}

fn spiffe_of(id: &Identity) -> Result<SpiffeId, meshwire_svid::SpiffeIdError> {
    let td = TrustDomain::new(&id.trust_domain)?;
    SpiffeId::from_istio(&td, &id.namespace, &id.service_account)
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// What the connection log line and the metrics say about one connection.
#[derive(Debug, Clone)]
struct ConnRecord {
    direction: Direction,
    security: Security,
    src: SocketAddr,
    dst: SocketAddr,
    source_identity: String,
    destination_identity: String,
    peer_identity: String,
    /// The peer workload as its HBONE `baggage` names it (`namespace/name`), empty if none.
    peer_workload: String,
    started: Instant,
}

impl ConnRecord {
    fn new(direction: Direction, security: Security, src: SocketAddr, dst: SocketAddr) -> Self {
        Self {
            direction,
            security,
            src,
            dst,
            source_identity: String::new(),
            destination_identity: String::new(),
            peer_identity: String::new(),
            peer_workload: String::new(),
            started: Instant::now(),
        }
    }

    fn identities(mut self, source: String, destination: String) -> Self {
        self.source_identity = source;
        self.destination_identity = destination;
        self
    }
}

/// Logs the connection line and releases the active gauge when a splice ends for any reason.
struct SpliceDone {
    rec: ConnRecord,
    transferred: Arc<Transferred>,
    active: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for SpliceDone {
    fn drop(&mut self) {
        self.active.dec();
        let r = &self.rec;
        tracing::info!(
            direction = %r.direction,
            security = %r.security,
            src = %r.src,
            dst = %r.dst,
            peer_identity = %r.peer_identity,
            peer_workload = %r.peer_workload,
            bytes_sent = self.transferred.a_to_b(),
            bytes_received = self.transferred.b_to_a(),
            duration_ms = u64::try_from(r.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "connection closed"
        );
    }
}

// -------------------------------------------------------------------------------------
// hbone wiring
// -------------------------------------------------------------------------------------

/// Opens pool connections from the pod's namespace (marked).
struct PodConnector {
    net: Arc<dyn PodNetwork>,
}

impl Connector for PodConnector {
    type Io = TcpStream;

    fn connect(&self, key: &PoolKey) -> impl Future<Output = io::Result<TcpStream>> + Send {
        let net = self.net.clone();
        let next_hop = key.next_hop;
        async move { net.connect(next_hop).await }
    }
}

/// TLS client configurations from the certificate of the key's source identity.
struct ClientTls {
    certs: Arc<dyn Certificates>,
    crypto: Arc<CryptoProvider>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TlsSetupError(String);

impl ClientTlsProvider for ClientTls {
    type Error = TlsSetupError;

    fn client_config(
        &self,
        key: &PoolKey,
    ) -> impl Future<Output = Result<Arc<rustls::ClientConfig>, TlsSetupError>> + Send {
        let certs = self.certs.clone();
        let crypto = self.crypto.clone();
        let source = key.source.clone();
        let policy = key.expected_policy();
        async move {
            let m = certs
                .fetch(&source)
                .await
                .map_err(|e| TlsSetupError(format!("certificate for {source}: {e:#}")))?;
            meshwire_svid::client_config(crypto, &m.svid, &m.roots, policy)
                .map(Arc::new)
                .map_err(|e| TlsSetupError(e.to_string()))
        }
    }
}

/// TLS server configuration of one pod: its certificate, clients of its trust domain.
struct PodServerTls {
    dp: Arc<DataPlane>,
    pod: Arc<Pod>,
    cache: Mutex<Option<(Arc<Material>, Arc<rustls::ServerConfig>)>>,
}

impl ServerTlsProvider for PodServerTls {
    type Error = TlsSetupError;

    async fn server_config(
        &self,
        _info: &meshwire_hbone::server::ConnectionInfo,
    ) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
        {
            let local = self
                .dp
                .local_workload(&self.pod)
                .await
                .ok_or_else(|| TlsSetupError("the pod's xDS workload is unknown".into()))?;
            let id = spiffe_of(&local.identity()).map_err(|e| TlsSetupError(e.to_string()))?;
            let material = self
                .dp
                .certs
                .fetch(&id)
                .await
                .map_err(|e| TlsSetupError(format!("certificate for {id}: {e:#}")))?;
            {
                let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((m, cfg)) = cache.as_ref()
                    && Arc::ptr_eq(m, &material)
                {
                    return Ok(cfg.clone());
                }
            }
            let policy = IdentityPolicy::SameTrustDomain(id.trust_domain().clone());
            let cfg = Arc::new(
                meshwire_svid::server_config(
                    self.dp.crypto.clone(),
                    &material.svid,
                    &material.roots,
                    policy,
                )
                .map_err(|e| TlsSetupError(e.to_string()))?,
            );
            *self.cache.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((material, cfg.clone()));
            Ok(cfg)
        }
    }
}

/// Hands each CONNECT stream of a pod's server to the data plane.
struct InboundStreams {
    dp: Arc<DataPlane>,
    pod: Arc<Pod>,
}

impl meshwire_hbone::server::Handler for InboundStreams {
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

/// The data plane as the supervisor's connection handler.
#[derive(Debug, Clone)]
pub(crate) struct Dispatch(pub(crate) Arc<DataPlane>);

impl Handler for Dispatch {
    fn handle(
        self: Arc<Self>,
        pod: Arc<Pod>,
        kind: ListenerKind,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> BoxFuture<'static, ()> {
        let dp = self.0.clone();
        match kind {
            ListenerKind::Outbound => Box::pin(dp.outbound(pod, stream, peer)),
            ListenerKind::InboundHbone => Box::pin(dp.inbound_hbone(pod, stream, peer)),
            ListenerKind::InboundPlaintext => Box::pin(dp.inbound_plaintext(pod, stream, peer)),
        }
    }

    fn pod_added(&self, pod: &Arc<Pod>) {
        let dp = &self.0;
        let pool = Pool::new(
            PodConnector {
                net: pod.net.clone(),
            },
            ClientTls {
                certs: dp.certs.clone(),
                crypto: dp.crypto.clone(),
            },
            PoolConfig::default(),
        );
        let mut serve = ServeConfig::default();
        serve.drain_deadline = dp.config.drain_deadline;
        let server = Server::new(
            PodServerTls {
                dp: dp.clone(),
                pod: pod.clone(),
                cache: Mutex::new(None),
            },
            InboundStreams {
                dp: dp.clone(),
                pod: pod.clone(),
            },
            serve,
        );
        dp.pod_states().insert(
            pod.info.uid.clone(),
            Arc::new(PodState {
                pod: pod.clone(),
                pool,
                server,
            }),
        );
        // Fetch the pod's certificate ahead of its first connection.
        let dp = dp.clone();
        let pod = pod.clone();
        tokio::spawn(async move {
            let found = dp.local_workload(&pod).await;
            // The pod may have been removed while xDS was awaited; its certificates were
            // forgotten then and must not be fetched again now.
            let current = dp
                .pod_state(&pod.info.uid)
                .is_some_and(|s| Arc::ptr_eq(&s.pod, &pod));
            if !current {
                return;
            }
            match found {
                Some(w) => match spiffe_of(&w.identity()) {
                    Ok(id) => dp.certs.prefetch(&id),
                    Err(e) => {
                        tracing::warn!(uid = %pod.info.uid, error = %e, "workload identity is not a SPIFFE ID")
                    }
                },
                None => tracing::warn!(
                    uid = %pod.info.uid, pod = %pod.info.name, namespace = %pod.info.namespace,
                    node = %dp.config.node_name, "no xDS workload for the pod yet"
                ),
            }
        });
    }

    fn pod_removed(&self, pod: &Arc<Pod>) {
        let dp = &self.0;
        let (state, remaining) = {
            let mut states = dp.pod_states();
            let state = states.remove(&pod.info.uid);
            (
                state,
                states.values().map(|s| s.pod.clone()).collect::<Vec<_>>(),
            )
        };
        if let Some(state) = state {
            // Idle outbound HBONE connections of the pod close now (GOAWAY) instead of at
            // the pool's idle timeout; connections still carrying tunnels follow when those
            // end. Connections the pod still has open hold the state a while, so the pool
            // is closed explicitly rather than left to drop.
            state.pool.close();
            tokio::spawn(async move { state.server.shutdown().await });
        }
        // Forget certificates no remaining pod uses (they are fetched again on demand).
        let used: std::collections::HashSet<String> = remaining
            .iter()
            .filter_map(|p| dp.find_local(p))
            .map(|w| w.identity().to_string())
            .collect();
        for held in dp.certs.held() {
            if !used.contains(&held.identity)
                && let Ok(id) = SpiffeId::new(&held.identity)
            {
                dp.certs.forget(&id);
                dp.metrics.remove_certificate(&held.identity);
            }
        }
    }

    fn drain(&self) {
        let states: Vec<_> = self.0.pod_states().values().cloned().collect();
        for state in states {
            tokio::spawn(async move { state.server.shutdown().await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::Managed;
    use crate::pods::{PodInfo, Supervisor};
    use meshwire_svid::CertificateAuthority;
    use meshwire_xds_workload::Address;
    use meshwire_xds_workload::authorization::AuthorizationPolicy;
    use meshwire_xds_workload::pb::istio::security as sec;
    use meshwire_xds_workload::pb::istio::workload as pbw;
    use std::collections::HashMap;
    use std::net::IpAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const NODE: &str = "node-1";

    /// A pod "namespace" on a loopback address: listeners bind the pod IP on ephemeral ports,
    /// connects go through a translation table (so `<pod ip>:15008` reaches the ephemeral HBONE
    /// listener), and the original destination is set by the test.
    #[derive(Debug)]
    struct TestNet {
        ip: IpAddr,
        original_dst: Mutex<Option<SocketAddr>>,
        routes: Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>,
    }

    impl PodNetwork for TestNet {
        fn id(&self) -> String {
            format!("test:{}", self.ip)
        }
        fn listen(&self, port: u16) -> BoxFuture<'_, io::Result<TcpListener>> {
            Box::pin(TcpListener::bind(SocketAddr::new(self.ip, port)))
        }
        fn connect(&self, dst: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>> {
            let dst = self
                .routes
                .lock()
                .unwrap()
                .get(&dst)
                .copied()
                .unwrap_or(dst);
            let ip = self.ip;
            Box::pin(async move {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(dst).await
            })
        }
        fn original_dst(&self, _stream: &TcpStream) -> io::Result<SocketAddr> {
            self.original_dst
                .lock()
                .unwrap()
                .ok_or_else(|| io::Error::other("no original destination"))
        }
    }

    fn pb_workload(name: &str, ns: &str, sa: &str, ip: [u8; 4], hbone: bool) -> pbw::Workload {
        pbw::Workload {
            uid: format!("Kubernetes//Pod/{ns}/{name}"),
            name: name.into(),
            namespace: ns.into(),
            service_account: sa.into(),
            addresses: vec![ip.to_vec().into()],
            tunnel_protocol: if hbone {
                pbw::TunnelProtocol::Hbone as i32
            } else {
                pbw::TunnelProtocol::None as i32
            },
            node: NODE.into(),
            workload_name: name.into(),
            workload_type: pbw::WorkloadType::Pod as i32,
            canonical_name: name.into(),
            cluster_id: "Kubernetes".into(),
            ..Default::default()
        }
    }

    fn put_workload(store: &WorkloadStore, w: pbw::Workload) {
        let name = w.uid.clone();
        let w = Workload::try_from(w).unwrap();
        store.insert_address(name, Address::Workload(Arc::new(w)));
    }

    fn deny_principal(store: &WorkloadStore, namespace: &str, principal: &str) {
        let policy = sec::Authorization {
            name: "deny-one".into(),
            namespace: namespace.into(),
            scope: sec::Scope::Namespace as i32,
            action: sec::Action::Deny as i32,
            rules: vec![sec::Rule {
                clauses: vec![sec::Clause {
                    matches: vec![sec::Match {
                        principals: vec![sec::StringMatch {
                            match_type: Some(sec::string_match::MatchType::Exact(principal.into())),
                        }],
                        ..Default::default()
                    }],
                }],
            }],
            ..Default::default()
        };
        let policy = AuthorizationPolicy::try_from(policy).unwrap();
        store.insert_policy(format!("{namespace}/deny-one"), policy);
    }

    /// An application: echoes what it reads, prefixed with its name.
    async fn echo_app(ip: [u8; 4], name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind(SocketAddr::from((ip, 0))).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = s.write_all(name.as_bytes()).await;
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    struct Env {
        ca: Arc<CertificateAuthority>,
        dp: Arc<DataPlane>,
        metrics: Arc<Metrics>,
        store: Arc<WorkloadStore>,
        supervisor: Arc<Supervisor>,
        routes: Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>,
        nets: HashMap<&'static str, Arc<TestNet>>,
    }

    impl Env {
        async fn new() -> Self {
            let td = TrustDomain::new("cluster.local").unwrap();
            let ca = Arc::new(
                CertificateAuthority::generate_root(&td, meshwire_svid::CaConfig::default())
                    .unwrap(),
            );
            let metrics = Metrics::new();
            let store = Arc::new(WorkloadStore::new());
            let certs = Managed::new(ca.clone(), metrics.clone());
            let dp = DataPlane::new(
                DataPlaneConfig {
                    node_name: NODE.into(),
                    local_lookup_timeout: Duration::from_millis(500),
                    connect_timeout: Duration::from_secs(2),
                    drain_deadline: Duration::from_millis(200),
                    original_source: true,
                },
                metrics.clone(),
                store.clone(),
                certs,
                meshwire_svid::provider::ring(),
            );
            let supervisor =
                Supervisor::with_ports(Arc::new(Dispatch(dp.clone())), metrics.clone(), |_| 0);
            Self {
                ca,
                dp,
                metrics,
                store,
                supervisor,
                routes: Arc::new(Mutex::new(HashMap::new())),
                nets: HashMap::new(),
            }
        }

        /// Adds a pod (xDS workload and ZDS add) on `ip`.
        async fn pod(&mut self, name: &'static str, ns: &str, sa: &str, ip: [u8; 4], hbone: bool) {
            put_workload(&self.store, pb_workload(name, ns, sa, ip, hbone));
            let net = Arc::new(TestNet {
                ip: IpAddr::from(ip),
                original_dst: Mutex::new(None),
                routes: self.routes.clone(),
            });
            self.supervisor
                .add(
                    PodInfo {
                        uid: format!("uid-{name}"),
                        name: name.into(),
                        namespace: ns.into(),
                        service_account: sa.into(),
                    },
                    net.clone(),
                )
                .await
                .unwrap();
            let pod = self.supervisor.get(&format!("uid-{name}")).unwrap();
            let hbone_addr = listener(&pod, ListenerKind::InboundHbone);
            self.routes
                .lock()
                .unwrap()
                .insert(SocketAddr::new(IpAddr::from(ip), 15008), hbone_addr);
            self.nets.insert(name, net);
        }

        fn listener(&self, pod: &str, kind: ListenerKind) -> SocketAddr {
            listener(&self.supervisor.get(&format!("uid-{pod}")).unwrap(), kind)
        }

        /// Connects "from the app of `pod`" to `dst`: through the pod's 15001 with `dst` as
        /// the original destination. Returns what came back after sending `payload`.
        async fn outbound(&self, pod: &str, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
            *self.nets[pod].original_dst.lock().unwrap() = Some(dst);
            let mut s = TcpStream::connect(self.listener(pod, ListenerKind::Outbound))
                .await
                .unwrap();
            exchange(&mut s, payload).await
        }

        fn metrics_text(&self) -> String {
            self.metrics.encode()
        }

        fn supervisor_dispatch(&self) -> Dispatch {
            Dispatch(self.dp.clone())
        }
    }

    fn listener(pod: &Pod, kind: ListenerKind) -> SocketAddr {
        pod.listeners.iter().find(|(k, _)| *k == kind).unwrap().1
    }

    /// Writes `payload`, half-closes, reads everything back.
    async fn exchange(s: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
        s.write_all(payload).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("no answer within 10 s");
        out
    }

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
    const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/server";

    async fn wait_for(mut cond: impl FnMut() -> bool) {
        for _ in 0..200 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test]
    async fn enrolled_to_enrolled_goes_over_mtls() {
        let mut env = Env::new().await;
        env.pod("client-1", "shop", "client", [127, 0, 0, 11], true)
            .await;
        env.pod("server-1", "shop", "server", [127, 0, 0, 12], true)
            .await;
        let app = echo_app([127, 0, 0, 12], "server-1:").await;

        let payload = vec![42u8; 200_000];
        let got = env.outbound("client-1", app, &payload).await;
        assert_eq!(&got[..9], b"server-1:");
        assert_eq!(&got[9..], &payload[..]);

        let m = env.metrics_text();
        wait_for(|| {
            env.metrics
                .active_connections
                .get_or_create(&TrafficLabels {
                    direction: Direction::Inbound,
                    security: Security::Mtls,
                })
                .get()
                == 0
        })
        .await;
        let m2 = env.metrics_text();
        for dir in ["outbound", "inbound"] {
            let line = format!(
                "meshwire_connections_total{{direction=\"{dir}\",security=\"mtls\",source_identity=\"{CLIENT_ID}\",destination_identity=\"{SERVER_ID}\"}} 1"
            );
            assert!(has_line(&m, &line), "{line} missing in\n{m}");
        }
        // Both proxies counted the bytes: 200000 up and 200009 down, on each side.
        for dir in ["outbound", "inbound"] {
            let line =
                format!("meshwire_bytes_total{{direction=\"{dir}\",security=\"mtls\"}} 400009");
            assert!(has_line(&m2, &line), "{line} missing in\n{m2}");
        }
        assert!(
            has_line(&m2, "meshwire_tls_handshake_failures_total 0"),
            "{m2}"
        );
        // Certificates were fetched for both local identities, with their expiry.
        for id in [CLIENT_ID, SERVER_ID] {
            assert!(
                m2.contains(&format!(
                    "meshwire_certificate_expiry_seconds{{identity=\"{id}\"}}"
                )),
                "{m2}"
            );
        }

        // A second connection reuses the pooled HBONE connection.
        let got = env.outbound("client-1", app, b"again").await;
        assert_eq!(got, b"server-1:again");
        let dump = env.supervisor.pods();
        assert_eq!(dump.len(), 2);
    }

    #[tokio::test]
    async fn non_enrolled_destination_is_plain_tcp() {
        let mut env = Env::new().await;
        env.pod("client-1", "shop", "client", [127, 0, 0, 21], true)
            .await;
        // A legacy pod on another node: in xDS, not enrolled, no proxy of ours.
        let mut legacy = pb_workload("legacy-1", "legacy", "default", [127, 0, 0, 22], false);
        legacy.node = "node-2".into();
        put_workload(&env.store, legacy);
        let app = echo_app([127, 0, 0, 22], "legacy:").await;
        let got = env.outbound("client-1", app, b"hello").await;
        assert_eq!(got, b"legacy:hello");
        // Unknown to xDS entirely: passthrough too.
        let outside = echo_app([127, 0, 0, 23], "outside:").await;
        assert_eq!(env.outbound("client-1", outside, b"x").await, b"outside:x");

        let m = env.metrics_text();
        let line = format!(
            "meshwire_connections_total{{direction=\"outbound\",security=\"plaintext\",source_identity=\"{CLIENT_ID}\",destination_identity=\"\"}} 2"
        );
        assert!(has_line(&m, &line), "{line} missing in\n{m}");
        assert!(!m.contains("security=\"mtls\",source"), "{m}");
    }

    #[tokio::test]
    async fn plaintext_arrivals_are_authorized_and_forwarded() {
        let mut env = Env::new().await;
        env.pod("server-1", "shop", "server", [127, 0, 0, 31], true)
            .await;
        let app = echo_app([127, 0, 0, 31], "server-1:").await;
        *env.nets["server-1"].original_dst.lock().unwrap() = Some(app);
        let mut s = TcpStream::connect(env.listener("server-1", ListenerKind::InboundPlaintext))
            .await
            .unwrap();
        assert_eq!(exchange(&mut s, b"plain").await, b"server-1:plain");
        let line = format!(
            "meshwire_connections_total{{direction=\"inbound\",security=\"plaintext\",source_identity=\"\",destination_identity=\"{SERVER_ID}\"}} 1"
        );
        assert!(
            has_line(&env.metrics_text(), &line),
            "{}",
            env.metrics_text()
        );

        // An ALLOW policy for principals only: plaintext has no identity, so it is denied.
        let policy = sec::Authorization {
            name: "only-client".into(),
            namespace: "shop".into(),
            scope: sec::Scope::Namespace as i32,
            action: sec::Action::Allow as i32,
            rules: vec![sec::Rule {
                clauses: vec![sec::Clause {
                    matches: vec![sec::Match {
                        principals: vec![sec::StringMatch {
                            match_type: Some(sec::string_match::MatchType::Exact(
                                "cluster.local/ns/shop/sa/client".into(),
                            )),
                        }],
                        ..Default::default()
                    }],
                }],
            }],
            ..Default::default()
        };
        env.store.insert_policy(
            "shop/only-client",
            AuthorizationPolicy::try_from(policy).unwrap(),
        );
        let mut s = TcpStream::connect(env.listener("server-1", ListenerKind::InboundPlaintext))
            .await
            .unwrap();
        assert_eq!(exchange(&mut s, b"plain").await, b"");
        assert!(has_line(
            &env.metrics_text(),
            "meshwire_policy_denials_total 1"
        ));

        // The proxy's own ports are never a destination.
        env.store.remove_policy("shop/only-client");
        *env.nets["server-1"].original_dst.lock().unwrap() =
            Some(SocketAddr::from(([127, 0, 0, 31], 15006)));
        let mut s = TcpStream::connect(env.listener("server-1", ListenerKind::InboundPlaintext))
            .await
            .unwrap();
        assert_eq!(exchange(&mut s, b"loop").await, b"");
    }

    #[tokio::test]
    async fn deny_policy_blocks_one_service_account_only() {
        let mut env = Env::new().await;
        env.pod("client-1", "shop", "client", [127, 0, 0, 41], true)
            .await;
        env.pod("intruder-1", "shop", "intruder", [127, 0, 0, 42], true)
            .await;
        env.pod("server-1", "shop", "server", [127, 0, 0, 43], true)
            .await;
        let app = echo_app([127, 0, 0, 43], "server-1:").await;
        deny_principal(&env.store, "shop", "cluster.local/ns/shop/sa/intruder");

        assert_eq!(env.outbound("intruder-1", app, b"let me in").await, b"");
        assert_eq!(env.outbound("client-1", app, b"hi").await, b"server-1:hi");
        let m = env.metrics_text();
        assert!(has_line(&m, "meshwire_policy_denials_total 1"), "{m}");
        assert!(
            has_line(
                &m,
                "meshwire_connection_failures_total{direction=\"outbound\",reason=\"denied by peer\"} 1"
            ),
            "{m}"
        );
        assert!(!m.contains("source_identity=\"spiffe://cluster.local/ns/shop/sa/intruder\",destination_identity=\"spiffe://cluster.local/ns/shop/sa/server\"} 1\nmeshwire_connections_total{direction=\"inbound\""));
    }

    /// A raw HBONE client with an identity from `ca`, to send CONNECTs the proxy's own
    /// outbound path never sends.
    async fn raw_client(
        ca: &CertificateAuthority,
        id: &str,
        server: &str,
        hbone: SocketAddr,
    ) -> Result<meshwire_hbone::client::ClientConnection, ClientError> {
        let own = ca
            .issue(&SpiffeId::new(id).unwrap(), Duration::from_secs(3600))
            .unwrap();
        let mut roots = meshwire_svid::TrustBundleSet::new();
        roots.insert(ca.bundle());
        let tls = meshwire_svid::client_config(
            meshwire_svid::provider::ring(),
            &own,
            &roots,
            IdentityPolicy::exact([SpiffeId::new(server).unwrap()]),
        )
        .unwrap();
        let tcp = TcpStream::connect(hbone).await.unwrap();
        meshwire_hbone::client::ClientConnection::connect(
            tcp,
            Arc::new(tls),
            &meshwire_hbone::Http2Config::client(),
        )
        .await
    }

    /// An HBONE server that is not one of our pods: it presents a certificate for
    /// `identity` from the test CA, is reached as `<ip>:15008` through the test routes,
    /// records each CONNECT request, answers 200 with `reply` as baggage and writes `fake:`.
    async fn fake_hbone_peer(
        env: &Env,
        ip: [u8; 4],
        identity: &str,
        reply: Baggage,
    ) -> tokio::sync::mpsc::UnboundedReceiver<ConnectRequest> {
        let own = env
            .ca
            .issue(&SpiffeId::new(identity).unwrap(), Duration::from_secs(3600))
            .unwrap();
        let mut roots = meshwire_svid::TrustBundleSet::new();
        roots.insert(env.ca.bundle());
        let td = TrustDomain::new("cluster.local").unwrap();
        let tls = meshwire_svid::server_config(
            meshwire_svid::provider::ring(),
            &own,
            &roots,
            IdentityPolicy::SameTrustDomain(td),
        )
        .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let server = Server::new(
            Arc::new(tls),
            move |tunnel: IncomingTunnel| {
                let _ = tx.send(tunnel.request().clone());
                let reply = reply.clone();
                async move {
                    if let Ok(mut t) = tunnel.accept_with_baggage(reply) {
                        let _ = t.write_all(b"fake:").await;
                        let _ = t.shutdown().await;
                        let mut sink = Vec::new();
                        let _ = t.read_to_end(&mut sink).await;
                    }
                }
            },
            ServeConfig::default(),
        );
        let listener = TcpListener::bind(SocketAddr::from((ip, 0))).await.unwrap();
        env.routes.lock().unwrap().insert(
            SocketAddr::new(IpAddr::from(ip), 15008),
            listener.local_addr().unwrap(),
        );
        tokio::spawn(async move { server.serve(listener).await });
        rx
    }

    #[tokio::test]
    async fn baggage_describes_the_workload_on_each_end() {
        let mut env = Env::new().await;
        env.pod("client-1", "shop", "client", [127, 0, 0, 81], true)
            .await;
        env.pod("server-1", "shop", "server", [127, 0, 0, 82], true)
            .await;
        let app = echo_app([127, 0, 0, 82], "server-1:").await;

        // Inbound: the 200 carries the destination pod's attributes.
        let conn = raw_client(
            &env.ca,
            CLIENT_ID,
            SERVER_ID,
            env.listener("server-1", ListenerKind::InboundHbone),
        )
        .await
        .unwrap();
        let request = ConnectRequest::new(Authority::from_socket_addr(app).unwrap());
        let tunnel = conn.open(&request).await.unwrap();
        let baggage = tunnel
            .response()
            .and_then(|r| r.baggage.as_ref())
            .expect("response baggage");
        assert_eq!(
            baggage.to_string(),
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.pod.name=server-1,\
             service.name=server-1"
        );
        assert_eq!(peer_workload(Some(baggage)), "shop/server-1");
        drop(tunnel);

        // Outbound: the CONNECT carries the source pod's attributes, with `forwarded` and
        // `traceparent`.
        put_workload(
            &env.store,
            pb_workload("peer-1", "shop", "server", [127, 0, 0, 83], true),
        );
        let mut reply = WorkloadBaggage::default();
        reply.namespace = Some("shop".into());
        reply.workload = Some((WorkloadKind::Deployment, "peer".into()));
        let mut requests =
            fake_hbone_peer(&env, [127, 0, 0, 83], SERVER_ID, reply.to_baggage()).await;
        let got = env
            .outbound("client-1", SocketAddr::from(([127, 0, 0, 83], 8080)), b"x")
            .await;
        assert_eq!(got, b"fake:");
        let seen = requests.recv().await.unwrap();
        assert_eq!(
            seen.authority,
            Authority::from_socket_addr(SocketAddr::from(([127, 0, 0, 83], 8080))).unwrap()
        );
        let sent = WorkloadBaggage::from_baggage(seen.baggage.as_ref().expect("request baggage"));
        assert_eq!(sent.cluster.as_deref(), Some("Kubernetes"));
        assert_eq!(sent.namespace.as_deref(), Some("shop"));
        assert_eq!(sent.workload, Some((WorkloadKind::Pod, "client-1".into())));
        assert!(seen.traceparent.is_some());
        assert_eq!(
            seen.forwarded
                .as_ref()
                .and_then(Forwarded::client_addr)
                .map(|a| a.ip()),
            Some(IpAddr::from([127, 0, 0, 1]))
        );
        assert_eq!(peer_workload(None), "");
    }

    #[tokio::test]
    async fn service_subject_alt_names_are_accepted_only_through_the_service() {
        let mut env = Env::new().await;
        env.pod("client-1", "shop", "client", [127, 0, 0, 91], true)
            .await;
        let mut web = pb_workload("web-0", "shop", "web", [127, 0, 0, 92], true);
        web.services.insert(
            "shop/web.shop.svc.cluster.local".into(),
            pbw::PortList {
                ports: vec![pbw::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        );
        put_workload(&env.store, web);
        let service = pbw::Service {
            name: "web".into(),
            namespace: "shop".into(),
            hostname: "web.shop.svc.cluster.local".into(),
            addresses: vec![pbw::NetworkAddress {
                network: String::new(),
                address: vec![127, 0, 0, 93].into(),
                length: None,
            }],
            ports: vec![pbw::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: 0,
            }],
            subject_alt_names: vec![
                "not a spiffe id".into(),
                "spiffe://cluster.local/ns/shop/sa/web-canary".into(),
            ],
            ..Default::default()
        };
        env.store.insert_address(
            "shop/web.shop.svc.cluster.local",
            Address::Service(Arc::new(Service::try_from(service).unwrap())),
        );
        // The endpoint presents the service's alternative name, not its own identity.
        let mut requests = fake_hbone_peer(
            &env,
            [127, 0, 0, 92],
            "spiffe://cluster.local/ns/shop/sa/web-canary",
            Baggage::new(),
        )
        .await;

        // Addressed to the service: accepted; the target port and the service host are sent.
        let vip = SocketAddr::from(([127, 0, 0, 93], 80));
        assert_eq!(env.outbound("client-1", vip, b"x").await, b"fake:");
        let seen = requests.recv().await.unwrap();
        assert_eq!(
            seen.authority,
            Authority::from_socket_addr(SocketAddr::from(([127, 0, 0, 92], 8080))).unwrap()
        );
        assert_eq!(
            seen.forwarded.as_ref().and_then(Forwarded::host),
            Some("web.shop.svc.cluster.local")
        );

        // Addressed to the pod: only the pod's own identity is accepted.
        let direct = SocketAddr::from(([127, 0, 0, 92], 8080));
        assert_eq!(env.outbound("client-1", direct, b"x").await, b"");
        assert!(requests.try_recv().is_err());
        wait_for(|| env.metrics.tls_handshake_failures.get() == 1).await;
    }

    #[tokio::test]
    async fn connect_checks_on_the_hbone_port() {
        let mut env = Env::new().await;
        env.pod("server-1", "shop", "server", [127, 0, 0, 51], true)
            .await;
        let app = echo_app([127, 0, 0, 51], "server-1:").await;
        let hbone_addr = env.listener("server-1", ListenerKind::InboundHbone);
        let conn = raw_client(&env.ca, CLIENT_ID, SERVER_ID, hbone_addr)
            .await
            .unwrap();
        assert_eq!(
            conn.peer_identity().map(ToString::to_string).as_deref(),
            Some(SERVER_ID)
        );

        let status = |r: Result<meshwire_hbone::Tunnel, ClientError>| {
            r.err().and_then(|e| e.status()).map(|s| s.as_u16())
        };
        let req =
            |addr: SocketAddr| ConnectRequest::new(Authority::from_socket_addr(addr).unwrap());
        // Another IP than the one the connection arrived on: 400.
        assert_eq!(
            status(
                conn.open(&req(SocketAddr::from(([127, 0, 0, 99], app.port()))))
                    .await
            ),
            Some(400)
        );
        // The proxy's own ports: 503.
        for port in [15001, 15006, 15008] {
            assert_eq!(
                status(
                    conn.open(&req(SocketAddr::from(([127, 0, 0, 51], port))))
                        .await
                ),
                Some(503)
            );
        }
        // Nothing listening: 503.
        let closed = std::net::TcpListener::bind("127.0.0.51:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(status(conn.open(&req(closed)).await), Some(503));
        // A host name of no service of this pod: 503.
        let host =
            ConnectRequest::new(Authority::from_host("server.shop.svc.cluster.local", 80).unwrap());
        assert_eq!(status(conn.open(&host).await), Some(503));
        // The right one: 200 and data flows.
        let mut tunnel = conn.open(&req(app)).await.unwrap();
        tunnel.write_all(b"ok").await.unwrap();
        tunnel.shutdown().await.unwrap();
        let mut got = Vec::new();
        tunnel.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"server-1:ok");
    }

    #[tokio::test]
    async fn host_name_authorities_reach_the_service_target_port() {
        let mut env = Env::new().await;
        let app = echo_app([127, 0, 0, 101], "web-0:").await;
        let mut web = pb_workload("web-0", "shop", "web", [127, 0, 0, 101], true);
        // Port 80 is mapped by the endpoint; 443 by the service; 9000 by nobody.
        web.services.insert(
            "shop/web.shop.svc.cluster.local".into(),
            pbw::PortList {
                ports: vec![
                    pbw::Port {
                        service_port: 80,
                        target_port: u32::from(app.port()),
                        app_protocol: 0,
                    },
                    pbw::Port {
                        service_port: 443,
                        target_port: 0,
                        app_protocol: 0,
                    },
                ],
            },
        );
        let service = pbw::Service {
            name: "web".into(),
            namespace: "shop".into(),
            hostname: "web.shop.svc.cluster.local".into(),
            ports: vec![
                pbw::Port {
                    service_port: 443,
                    target_port: u32::from(app.port()),
                    app_protocol: 0,
                },
                pbw::Port {
                    service_port: 9000,
                    target_port: 0,
                    app_protocol: 0,
                },
                pbw::Port {
                    service_port: 15008,
                    target_port: 15008,
                    app_protocol: 0,
                },
            ],
            ..Default::default()
        };
        env.store.insert_address(
            "shop/web.shop.svc.cluster.local",
            Address::Service(Arc::new(Service::try_from(service).unwrap())),
        );
        env.pod("web-0", "shop", "web", [127, 0, 0, 101], true)
            .await;
        // The pod's workload again, now as an endpoint of the service.
        put_workload(&env.store, web);
        let hbone_addr = env.listener("web-0", ListenerKind::InboundHbone);
        let conn = raw_client(
            &env.ca,
            CLIENT_ID,
            "spiffe://cluster.local/ns/shop/sa/web",
            hbone_addr,
        )
        .await
        .unwrap();
        let to =
            |host: &str, port: u16| ConnectRequest::new(Authority::from_host(host, port).unwrap());
        for port in [80, 443] {
            let mut tunnel = conn
                .open(&to("web.shop.svc.cluster.local", port))
                .await
                .unwrap();
            tunnel.write_all(b"hi").await.unwrap();
            tunnel.shutdown().await.unwrap();
            let mut got = Vec::new();
            tunnel.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"web-0:hi", "service port {port}");
        }
        let status = |r: Result<meshwire_hbone::Tunnel, ClientError>| {
            r.err().and_then(|e| e.status()).map(|s| s.as_u16())
        };
        // No mapping for the port, another service, a proxy port: 503.
        assert_eq!(
            status(conn.open(&to("web.shop.svc.cluster.local", 9000)).await),
            Some(503)
        );
        assert_eq!(
            status(conn.open(&to("db.shop.svc.cluster.local", 80)).await),
            Some(503)
        );
        assert_eq!(
            status(conn.open(&to("web.shop.svc.cluster.local", 15008)).await),
            Some(503)
        );
    }

    #[tokio::test]
    async fn foreign_or_missing_client_certificates_fail_the_handshake() {
        let mut env = Env::new().await;
        env.pod("server-1", "shop", "server", [127, 0, 0, 61], true)
            .await;
        let hbone_addr = env.listener("server-1", ListenerKind::InboundHbone);
        // Another CA, same trust domain name: the chain does not verify.
        let other = CertificateAuthority::generate_root(
            &TrustDomain::new("cluster.local").unwrap(),
            meshwire_svid::CaConfig::default(),
        )
        .unwrap();
        let attempt = raw_client(&other, CLIENT_ID, SERVER_ID, hbone_addr).await;
        assert!(
            attempt.is_err(),
            "a foreign client certificate was accepted"
        );
        // Another trust domain from the right CA is not issued; the CA refuses other domains,
        // so a client of a foreign trust domain is covered by the chain check above.
        wait_for(|| env.metrics.tls_handshake_failures.get() >= 1).await;
        // Plain TCP junk on the HBONE port is a failed handshake as well.
        let mut junk = TcpStream::connect(hbone_addr).await.unwrap();
        junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut sink = Vec::new();
        let _ = junk.read_to_end(&mut sink).await;
        wait_for(|| env.metrics.tls_handshake_failures.get() >= 2).await;
    }

    #[tokio::test]
    async fn removed_pod_stops_serving_and_forgets_its_certificate() {
        let mut env = Env::new().await;
        env.pod("client-1", "shop", "client", [127, 0, 0, 71], true)
            .await;
        env.pod("server-1", "shop", "server", [127, 0, 0, 72], true)
            .await;
        let app = echo_app([127, 0, 0, 72], "server-1:").await;
        assert_eq!(env.outbound("client-1", app, b"1").await, b"server-1:1");
        assert!(env.supervisor.remove("uid-server-1"));
        let expiry = |id: &str| format!("meshwire_certificate_expiry_seconds{{identity=\"{id}\"}}");
        wait_for(|| !env.metrics_text().contains(&expiry(SERVER_ID))).await;
        // The destination is still HBONE in xDS but nobody serves it: the connection fails.
        assert_eq!(env.outbound("client-1", app, b"2").await, b"");
        assert!(env.metrics_text().contains(&expiry(CLIENT_ID)));
    }

    #[tokio::test]
    async fn removed_pod_closes_its_idle_outbound_hbone_connections() {
        let mut env = Env::new().await;
        env.pod("client-1", "shop", "client", [127, 0, 0, 73], true)
            .await;
        env.pod("server-1", "shop", "server", [127, 0, 0, 74], true)
            .await;
        let app = echo_app([127, 0, 0, 74], "server-1:").await;
        assert_eq!(env.outbound("client-1", app, b"1").await, b"server-1:1");
        let pool = env.dp.pod_state("uid-client-1").unwrap().pool.clone();
        wait_for(|| pool.stats().open == 1 && pool.stats().pooled == 1).await;
        assert!(env.supervisor.remove("uid-client-1"));
        // Gone at once, not after the pool's idle timeout (minutes).
        wait_for(|| pool.stats().closed == 1).await;
        let s = pool.stats();
        assert_eq!((s.open, s.pooled, s.opened), (0, 0, 1), "{s:?}");
        assert!(pool.is_closed());
        // The other pod is unaffected.
        assert!(env.dp.pod_state("uid-server-1").is_some());
    }

    #[tokio::test]
    async fn a_pod_removed_before_its_workload_arrived_fetches_no_certificate() {
        let env = Env::new().await;
        let net = Arc::new(TestNet {
            ip: IpAddr::from([127, 0, 0, 111]),
            original_dst: Mutex::new(None),
            routes: env.routes.clone(),
        });
        let info = PodInfo {
            uid: "uid-late".into(),
            name: "late-1".into(),
            namespace: "shop".into(),
            service_account: "late".into(),
        };
        env.supervisor.add(info, net).await.unwrap();
        assert!(env.supervisor.remove("uid-late"));
        // xDS delivers the workload after the pod is gone (within the lookup timeout).
        put_workload(
            &env.store,
            pb_workload("late-1", "shop", "late", [127, 0, 0, 111], true),
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        let held: Vec<_> = env
            .dp
            .certs
            .held()
            .into_iter()
            .map(|c| c.identity)
            .collect();
        assert!(
            held.is_empty(),
            "certificates held for a removed pod: {held:?}"
        );
    }

    /// The store's answers (resolution itself is tested in xds-workload) become routing
    /// destinations: a VIP's endpoint with the service's host name and alternative names,
    /// a pod address without them.
    #[tokio::test]
    async fn store_answers_become_routing_destinations() {
        let env = Env::new().await;
        let mut web = pb_workload("web-0", "shop", "web", [10, 0, 0, 5], true);
        web.services.insert(
            "shop/web.shop.svc.cluster.local".into(),
            pbw::PortList {
                ports: vec![pbw::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        );
        put_workload(&env.store, web);
        let vip = |ip: [u8; 4]| pbw::NetworkAddress {
            network: String::new(),
            address: ip.to_vec().into(),
            length: None,
        };
        let service = pbw::Service {
            name: "web".into(),
            namespace: "shop".into(),
            hostname: "web.shop.svc.cluster.local".into(),
            addresses: vec![vip([10, 96, 0, 10])],
            ports: vec![pbw::Port {
                service_port: 80,
                target_port: 0,
                app_protocol: 0,
            }],
            subject_alt_names: vec!["spiffe://cluster.local/ns/shop/sa/web-svc".into()],
            ..Default::default()
        };
        let passthrough = pbw::Service {
            name: "direct".into(),
            hostname: "direct.shop.svc.cluster.local".into(),
            addresses: vec![vip([10, 96, 0, 11])],
            load_balancing: Some(pbw::LoadBalancing {
                mode: pbw::load_balancing::Mode::Passthrough as i32,
                ..Default::default()
            }),
            ..service.clone()
        };
        for s in [service, passthrough] {
            let s = Service::try_from(s).unwrap();
            env.store
                .insert_address(s.key().to_string(), Address::Service(Arc::new(s)));
        }
        let Dispatch(dp) = env.supervisor_dispatch();
        let web_at = |port: u16, service: Option<ServiceTarget>| {
            Destination::Workload(DestinationWorkload {
                ip: "10.0.0.5".parse().unwrap(),
                port,
                hbone: true,
                identity: "spiffe://cluster.local/ns/shop/sa/web".into(),
                service,
            })
        };
        let via_web = ServiceTarget {
            hostname: "web.shop.svc.cluster.local".into(),
            subject_alt_names: vec!["spiffe://cluster.local/ns/shop/sa/web-svc".into()],
        };
        assert_eq!(
            dp.destination("10.96.0.10:80".parse().unwrap(), ""),
            web_at(8080, Some(via_web))
        );
        assert_eq!(
            dp.destination("10.0.0.5:9000".parse().unwrap(), ""),
            web_at(9000, None)
        );
        assert_eq!(
            dp.destination("10.96.0.11:80".parse().unwrap(), ""),
            Destination::Passthrough
        );
        assert_eq!(
            dp.destination("192.0.2.1:80".parse().unwrap(), ""),
            Destination::Unknown
        );
        assert_eq!(
            dp.destination("10.96.0.10:80".parse().unwrap(), "other"),
            Destination::Unknown
        );
        // No endpoint left.
        env.store.remove_address("Kubernetes//Pod/shop/web-0");
        assert_eq!(
            dp.destination("10.96.0.10:80".parse().unwrap(), ""),
            Destination::ServiceWithoutEndpoints
        );
    }

    #[tokio::test]
    async fn config_dump_lists_the_whole_store() {
        let mut env = Env::new().await;
        env.pod("dump-0", "shop", "web", [127, 0, 0, 141], true)
            .await;
        // A workload on another node, endpoint of a service; a policy.
        let mut remote = pb_workload("remote-0", "shop", "db", [10, 1, 0, 7], true);
        remote.node = "node-2".into();
        remote.services.insert(
            "shop/db.shop.svc.cluster.local".into(),
            pbw::PortList {
                ports: vec![pbw::Port {
                    service_port: 5432,
                    target_port: 15432,
                    app_protocol: 0,
                }],
            },
        );
        put_workload(&env.store, remote);
        let service = pbw::Service {
            name: "db".into(),
            namespace: "shop".into(),
            hostname: "db.shop.svc.cluster.local".into(),
            addresses: vec![pbw::NetworkAddress {
                network: String::new(),
                address: vec![10, 96, 0, 20].into(),
                length: None,
            }],
            ports: vec![pbw::Port {
                service_port: 5432,
                target_port: 0,
                app_protocol: 0,
            }],
            ..Default::default()
        };
        env.store.insert_address(
            "shop/db.shop.svc.cluster.local",
            Address::Service(Arc::new(Service::try_from(service).unwrap())),
        );
        deny_principal(&env.store, "shop", "cluster.local/ns/shop/sa/bad");

        let dump = env.dp.dump(&env.supervisor.pods());
        let workloads = dump["workloads"].as_array().unwrap();
        let uids: Vec<&str> = workloads
            .iter()
            .map(|w| w["uid"].as_str().unwrap())
            .collect();
        assert_eq!(
            uids,
            [
                "Kubernetes//Pod/shop/dump-0",
                "Kubernetes//Pod/shop/remote-0"
            ]
        );
        let remote = &workloads[1];
        assert_eq!(remote["node"], "node-2");
        assert_eq!(remote["addresses"], serde_json::json!(["10.1.0.7"]));
        assert_eq!(remote["identity"], "spiffe://cluster.local/ns/shop/sa/db");
        assert_eq!(
            remote["services"]["shop/db.shop.svc.cluster.local"],
            serde_json::json!([{"service_port": 5432, "target_port": 15432}])
        );
        assert_eq!(
            dump["services"],
            serde_json::json!([{
                "name": "db",
                "namespace": "shop",
                "hostname": "db.shop.svc.cluster.local",
                "vips": ["/10.96.0.20/32"],
                "ports": [{"service_port": 5432, "target_port": 0}],
                "subject_alt_names": [],
                "endpoints": ["Kubernetes//Pod/shop/remote-0"],
            }])
        );
        assert_eq!(dump["policies"][0]["key"], "shop/deny-one");
        assert_eq!(dump["policies"][0]["action"], "Deny");
        assert_eq!(
            (
                &dump["workload_count"],
                &dump["service_count"],
                &dump["policy_count"]
            ),
            (
                &serde_json::json!(2),
                &serde_json::json!(1),
                &serde_json::json!(1)
            )
        );
        assert_eq!(
            dump["pods"][0]["workload_uid"],
            "Kubernetes//Pod/shop/dump-0"
        );
    }
}
