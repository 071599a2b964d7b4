//! In-process data-plane tests: pods on loopback addresses with a real workload store, a
//! local CA behind the real certificate manager, and the real HBONE pool and server.
//!
//! This module holds the fixtures; the tests are in its submodules, one per path.

mod bad_input;
mod inbound;
mod istio;
mod outbound;
mod pods;
mod reauthorize;
mod strict;

use super::workload::{destination_of, peer_workload};
use super::*;
use crate::metrics::{Direction, Security, TrafficLabels};
use crate::pods::{PodInfo, PodNetwork, Supervisor};
use crate::routing::{Destination, DestinationWorkload, ServiceTarget};
pub(crate) use crate::test_support::closed_by_proxy;
use crate::tls::certs::Managed;
use meshwire_hbone::client::{ClientConnection, ClientError};
use meshwire_hbone::headers::{Baggage, Forwarded, WorkloadBaggage, WorkloadKind};
use meshwire_hbone::server::{IncomingTunnel, ServeConfig, Server};
use meshwire_hbone::{Authority, ConnectRequest};
use meshwire_svid::IdentityPolicy;
use meshwire_svid::test_util::TestPki;
use meshwire_xds_workload::authorization::AuthorizationPolicy;
use meshwire_xds_workload::pb::istio::security as sec;
use meshwire_xds_workload::pb::istio::workload as pbw;
use meshwire_xds_workload::{Address, Service};
use std::collections::HashMap;
use std::net::IpAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub(crate) const NODE: &str = "node-1";

/// A pod "namespace" on a loopback address: listeners bind the pod IP on ephemeral ports,
/// connects go through a translation table (so `<pod ip>:15008` reaches the ephemeral HBONE
/// listener), and the original destination is set by the test.
#[derive(Debug)]
pub(crate) struct TestNet {
    pub(crate) ip: IpAddr,
    pub(crate) original_dst: Mutex<Option<SocketAddr>>,
    pub(crate) routes: Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>,
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

pub(crate) fn pb_workload(
    name: &str,
    ns: &str,
    sa: &str,
    ip: [u8; 4],
    hbone: bool,
) -> pbw::Workload {
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

pub(crate) fn put_workload(store: &WorkloadStore, w: pbw::Workload) {
    let name = w.uid.clone();
    let w = Workload::try_from(w).unwrap();
    store.insert_address(name, Address::Workload(Arc::new(w)));
}

/// A port mapping (of a service, or of an endpoint for a service).
pub(crate) fn port(service_port: u16, target_port: u16) -> pbw::Port {
    pbw::Port {
        service_port: u32::from(service_port),
        target_port: u32::from(target_port),
        app_protocol: 0,
    }
}

/// Makes `w` an endpoint of the service `<name>.<ns>.svc.cluster.local` (of namespace `ns`),
/// with its own port list.
pub(crate) fn add_endpoint_of(w: &mut pbw::Workload, name: &str, ns: &str, ports: Vec<pbw::Port>) {
    w.services.insert(
        format!("{ns}/{name}.{ns}.svc.cluster.local"),
        pbw::PortList { ports },
    );
}

/// The service `<name>.<ns>.svc.cluster.local` with `vips` (default network) and `ports`.
pub(crate) fn pb_service(
    name: &str,
    ns: &str,
    vips: &[[u8; 4]],
    ports: Vec<pbw::Port>,
) -> pbw::Service {
    pbw::Service {
        name: name.into(),
        namespace: ns.into(),
        hostname: format!("{name}.{ns}.svc.cluster.local"),
        addresses: vips
            .iter()
            .map(|ip| pbw::NetworkAddress {
                network: String::new(),
                address: ip.to_vec().into(),
                length: None,
            })
            .collect(),
        ports,
        ..Default::default()
    }
}

pub(crate) fn put_service(store: &WorkloadStore, s: pbw::Service) {
    let s = Service::try_from(s).unwrap();
    store.insert_address(s.key().to_string(), Address::Service(Arc::new(s)));
}

/// Adds the namespace-wide policy `<namespace>/<name>` that allows (or denies) exactly
/// `principal`.
pub(crate) fn principal_policy(
    store: &WorkloadStore,
    namespace: &str,
    name: &str,
    action: sec::Action,
    principal: &str,
) {
    let policy = sec::Authorization {
        name: name.into(),
        namespace: namespace.into(),
        scope: sec::Scope::Namespace as i32,
        action: action as i32,
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
    store.insert_policy(format!("{namespace}/{name}"), policy);
}

/// Adds the policy `<namespace>/deny-one` that denies `principal`.
pub(crate) fn deny_principal(store: &WorkloadStore, namespace: &str, principal: &str) {
    principal_policy(store, namespace, "deny-one", sec::Action::Deny, principal);
}

/// An application: echoes what it reads, prefixed with its name.
pub(crate) async fn echo_app(ip: [u8; 4], name: &'static str) -> SocketAddr {
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

pub(crate) struct Env {
    pub(crate) pki: Arc<TestPki>,
    pub(crate) dp: Arc<DataPlane>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) store: Arc<WorkloadStore>,
    pub(crate) supervisor: Arc<Supervisor>,
    pub(crate) routes: Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>,
    pub(crate) nets: HashMap<&'static str, Arc<TestNet>>,
}

impl Env {
    pub(crate) async fn new() -> Self {
        Self::with_config(|_| {}).await
    }

    /// An environment whose data plane runs on the test defaults changed by `change`.
    pub(crate) async fn with_config(change: impl FnOnce(&mut DataPlaneConfig)) -> Self {
        let pki = Arc::new(TestPki::new("cluster.local"));
        let metrics = Metrics::new();
        let store = Arc::new(WorkloadStore::new());
        let certs = Managed::new(
            pki.clone(),
            meshwire_svid::provider::ring(),
            metrics.clone(),
        );
        let mut config = DataPlaneConfig {
            node_name: NODE.into(),
            local_lookup_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            drain_deadline: Duration::from_millis(200),
            original_source: true,
            ..DataPlaneConfig::default()
        };
        change(&mut config);
        let dp = DataPlane::new(config, metrics.clone(), store.clone(), certs);
        let supervisor =
            Supervisor::with_ports(Arc::new(Dispatch(dp.clone())), metrics.clone(), |_| 0);
        Self {
            pki,
            dp,
            metrics,
            store,
            supervisor,
            routes: Arc::new(Mutex::new(HashMap::new())),
            nets: HashMap::new(),
        }
    }

    /// The common two-pod setup: enrolled pods `client-1` (on `client`) and `server-1` (on
    /// `server`) of namespace `shop`, and an echo app on `server` that answers `server-1:`
    /// and the bytes it got; returns the environment and the app's address.
    pub(crate) async fn client_and_server(client: [u8; 4], server: [u8; 4]) -> (Self, SocketAddr) {
        let mut env = Self::new().await;
        env.pod("client-1", "shop", "client", client, true).await;
        env.pod("server-1", "shop", "server", server, true).await;
        let app = echo_app(server, "server-1:").await;
        (env, app)
    }

    /// Adds a pod (xDS workload and ZDS add) on `ip`.
    pub(crate) async fn pod(
        &mut self,
        name: &'static str,
        ns: &str,
        sa: &str,
        ip: [u8; 4],
        hbone: bool,
    ) {
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

    pub(crate) fn listener(&self, pod: &str, kind: ListenerKind) -> SocketAddr {
        listener(&self.supervisor.get(&format!("uid-{pod}")).unwrap(), kind)
    }

    /// Connects "from the app of `pod`" to `dst`: through the pod's 15001 with `dst` as
    /// the original destination. Returns what came back after sending `payload`.
    pub(crate) async fn outbound(&self, pod: &str, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
        *self.nets[pod].original_dst.lock().unwrap() = Some(dst);
        let mut s = TcpStream::connect(self.listener(pod, ListenerKind::Outbound))
            .await
            .unwrap();
        exchange(&mut s, payload).await
    }

    pub(crate) fn metrics_text(&self) -> String {
        self.metrics.encode()
    }
}

pub(crate) fn listener(pod: &Pod, kind: ListenerKind) -> SocketAddr {
    pod.listeners.iter().find(|(k, _)| *k == kind).unwrap().1
}

/// Writes `payload`, half-closes, reads everything back (nothing when the proxy refused the
/// connection, even with a reset before the write).
pub(crate) async fn exchange(s: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
    let _ = s.write_all(payload).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("no answer within 10 s");
    out
}

pub(crate) fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// The labels and value of each series of `name` in the exposition `text`.
pub(crate) fn series(text: &str, name: &str) -> Vec<(HashMap<String, String>, u64)> {
    let prefix = format!("{name}{{");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            let labels = labels
                .split("\",")
                .filter_map(|kv| kv.split_once("=\""))
                .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The sum of the series of `name` whose labels include every pair of `want`.
pub(crate) fn value(text: &str, name: &str, want: &[(&str, &str)]) -> u64 {
    series(text, name)
        .into_iter()
        .filter(|(labels, _)| {
            want.iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

pub(crate) const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
pub(crate) const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/server";

pub(crate) async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

/// A raw HBONE client with an identity from `pki`, to send CONNECTs the proxy's own
/// outbound path never sends.
pub(crate) async fn raw_client(
    pki: &TestPki,
    id: &str,
    server: &str,
    hbone: SocketAddr,
) -> Result<ClientConnection, ClientError> {
    let tls = pki.client_config(
        &SpiffeId::new(id).unwrap(),
        IdentityPolicy::exact([SpiffeId::new(server).unwrap()]),
    );
    let tcp = TcpStream::connect(hbone).await.unwrap();
    ClientConnection::connect(tcp, Arc::new(tls), &meshwire_hbone::Http2Config::client()).await
}

/// Opens a tunnel to `app` on `conn`, sends `payload`, and returns what the app answered
/// (an echo app answers its name and the payload).
pub(crate) async fn echo_through(
    conn: &ClientConnection,
    app: SocketAddr,
    payload: &[u8],
) -> Vec<u8> {
    let mut tunnel = conn
        .open(&ConnectRequest::new(
            Authority::from_socket_addr(app).unwrap(),
        ))
        .await
        .unwrap();
    tunnel.write_all(payload).await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut got = Vec::new();
    tunnel.read_to_end(&mut got).await.unwrap();
    got
}

/// An HBONE server that is not one of our pods: it presents a certificate for
/// `identity` from the test CA, is reached as `<ip>:15008` through the test routes,
/// records each CONNECT request, answers 200 with `reply` as baggage and writes `fake:`.
pub(crate) async fn fake_hbone_peer(
    env: &Env,
    ip: [u8; 4],
    identity: &str,
    reply: Baggage,
) -> tokio::sync::mpsc::UnboundedReceiver<ConnectRequest> {
    let tls = env.pki.server_config(&SpiffeId::new(identity).unwrap());
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

/// The log lines written while the returned guard lives (this thread only: use a
/// current-thread runtime, as `#[tokio::test]` does).
pub(crate) fn capture_logs() -> (tracing::subscriber::DefaultGuard, LogBuf) {
    let buf = LogBuf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    (tracing::subscriber::set_default(subscriber), buf)
}

/// Where [`capture_logs`] writes.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl LogBuf {
    /// The lines containing `needle`.
    pub(crate) fn lines_with(&self, needle: &str) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
