//! The data plane: what happens to a connection accepted on one of a pod's listeners.
//!
//! * [`outbound`] (15001): original destination → workload store → HBONE through the pod's
//!   pool when the destination is enrolled, plain TCP from the pod's namespace otherwise;
//!   [`strict`]: a pod in strict mutual-TLS mode waits for an enrolled destination that is
//!   not ready yet instead, and fails closed.
//! * [`inbound_hbone`] (15008): TLS with the pod's certificate (client certificate from the
//!   same trust domain), then per CONNECT stream: destination check, illegal ports, L4
//!   authorization with the client's SPIFFE ID, dial the application, 200, splice.
//! * [`inbound_plaintext`] (15006): authorization without identity, then forward.
//! * [`connection`]: the record, log line and metrics of one carried connection;
//!   [`labels`]: its labels in the Istio TCP metrics.
//!
//! This module holds what the three paths share: the per-pod HBONE state, workload lookups,
//! dialling the application, and the supervisor's [`Handler`].

mod connection;
mod inbound_hbone;
mod inbound_plaintext;
mod labels;
mod outbound;
mod reauthorize;
mod strict;
#[cfg(test)]
pub(crate) mod tests;
mod workload;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use meshwire_hbone::client::{Pool, PoolConfig, PoolStats};
use meshwire_hbone::server::{
    Admission, ConnectionLimit, ConnectionLimitConfig, ServeConfig, Server,
};
use meshwire_svid::SpiffeId;
use meshwire_xds_workload::{Workload, WorkloadStore};
use tokio::net::TcpStream;

use crate::metrics::Metrics;
use crate::pods::{Handler, ListenerKind, Pod};
use crate::tls::certs::Certificates;
use crate::tls::{ClientTls, PodServerTls};

use self::connection::Failure;
use self::inbound_hbone::InboundStreams;
use self::outbound::PodConnector;

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
    /// Bounds on the connections of every pod's 15008 (keyed by pod).
    pub(crate) hbone_limit: ConnectionLimitConfig,
    /// Deadline on 15008 from the accept to the first CONNECT request.
    pub(crate) hbone_accept_timeout: Duration,
    /// How long an outbound connection of a strict pod waits for a destination that is
    /// `hbone_pending` to become HBONE before it fails closed.
    pub(crate) strict_hbone_wait: Duration,
    /// How long an outbound HBONE connection stays open without tunnels (zero: it closes
    /// when its last tunnel ends).
    pub(crate) pool_idle_timeout: Duration,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            local_lookup_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            drain_deadline: Duration::from_secs(5),
            original_source: true,
            hbone_limit: ConnectionLimitConfig::default(),
            hbone_accept_timeout: Duration::from_secs(10),
            strict_hbone_wait: Duration::from_secs(5),
            pool_idle_timeout: PoolConfig::default().idle_timeout,
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
    /// The CONNECT destination rules of every pod's 15008 (the proxy's own ports refused).
    admission: Admission,
    /// The connection bound shared by every pod's 15008, keyed by pod uid.
    hbone_limit: ConnectionLimit<String>,
    pods: Mutex<HashMap<String, Arc<PodState>>>,
    /// Open inbound connections, re-authorized after every xDS change.
    open_inbound: Arc<reauthorize::OpenConnections>,
}

impl fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataPlane")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl DataPlane {
    pub(crate) fn new(
        config: DataPlaneConfig,
        metrics: Arc<Metrics>,
        store: Arc<WorkloadStore>,
        certs: Arc<dyn Certificates>,
    ) -> Arc<Self> {
        let open_inbound = Arc::new(reauthorize::OpenConnections::default());
        // Every policy change closes the open connections it now denies (outside a runtime,
        // as in some unit tests, nothing watches).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(reauthorize::watch(
                Arc::downgrade(&open_inbound),
                store.clone(),
                metrics.clone(),
            ));
        }
        Arc::new(Self {
            hbone_limit: ConnectionLimit::new(config.hbone_limit),
            config,
            metrics,
            store,
            certs,
            admission: Admission::default(),
            pods: Mutex::new(HashMap::new()),
            open_inbound,
        })
    }

    /// The workload store the data plane decides on.
    pub(crate) fn store(&self) -> &WorkloadStore {
        &self.store
    }

    /// The certificates of the pods' identities.
    pub(crate) fn certs(&self) -> &Arc<dyn Certificates> {
        &self.certs
    }

    /// The node whose pods this data plane serves.
    pub(crate) fn node_name(&self) -> &str {
        &self.config.node_name
    }

    /// Counters of the pod's outbound HBONE pool, while the pod is held.
    pub(crate) fn pool_stats(&self, uid: &str) -> Option<PoolStats> {
        self.pod_state(uid).map(|s| s.pool.stats())
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

    /// The network namespaces of the pods held here whose workload identity is `id`.
    pub(crate) fn namespaces_of(&self, id: &SpiffeId) -> Vec<meshwire_netns::ns::NsId> {
        let pods: Vec<Arc<Pod>> = self.pod_states().values().map(|s| s.pod.clone()).collect();
        pods.iter()
            .filter(|p| {
                // The identity the pod's certificate is fetched for (see `pod_added`).
                self.find_local(p)
                    .is_some_and(|w| SpiffeId::try_from(w.identity()).is_ok_and(|w| w == *id))
            })
            .filter_map(|p| p.net.netns())
            .collect()
    }

    /// Like [`find_local`](Self::find_local), waiting up to the lookup timeout for xDS to
    /// deliver the workload.
    pub(crate) async fn local_workload(&self, pod: &Pod) -> Option<Arc<Workload>> {
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
        let mut pool_config = PoolConfig::default();
        pool_config.idle_timeout = dp.config.pool_idle_timeout;
        let pool = Pool::new(
            PodConnector {
                net: pod.net.clone(),
            },
            ClientTls {
                certs: dp.certs.clone(),
            },
            pool_config,
        );
        let mut serve = ServeConfig::default();
        serve.drain_deadline = dp.config.drain_deadline;
        serve.accept_timeout = dp.config.hbone_accept_timeout;
        let server = Server::new(
            PodServerTls {
                dp: dp.clone(),
                pod: pod.clone(),
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
                Some(w) => match SpiffeId::try_from(w.identity()) {
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
