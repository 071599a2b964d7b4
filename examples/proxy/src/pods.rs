//! Per-pod supervisor: on a ZDS add, three listeners are opened inside the pod's network
//! namespace (15001, 15006, 15008) before the add is acknowledged; on a del (or when the
//! ZDS client reconciles a snapshot that no longer lists the pod) they are closed and the pod's connections are cut; on
//! shutdown every pod stops accepting and in-flight connections get a grace period.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::routing::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};

/// What ZDS tells about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodInfo {
    /// Kubernetes pod uid (the ZDS key; never matched against xDS uids).
    pub(crate) uid: String,
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) service_account: String,
}

/// Sockets of one pod: everything is created inside the pod's network namespace.
pub(crate) trait PodNetwork: Send + Sync + fmt::Debug + 'static {
    /// Identity of the namespace; two adds with the same identity are the same sandbox.
    fn id(&self) -> String;
    /// Binds a listener on the wildcard address and `port` (0 = any, for tests).
    fn listen(&self, port: u16) -> BoxFuture<'_, io::Result<TcpListener>>;
    /// Connects to `dst` from inside the namespace, with the packet mark.
    fn connect(&self, dst: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>>;
    /// Connects to `dst` from inside the namespace with the packet mark, using `source` (an
    /// address of another host, the original client) as the source address
    /// (`IP_TRANSPARENT`). Replies find their way back through the in-pod policy routing
    /// (connmark 0x111, table 100). Defaults to a plain [`connect`](Self::connect).
    fn connect_as(&self, source: IpAddr, dst: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>> {
        let _ = source;
        self.connect(dst)
    }
    /// The destination a redirected connection was originally sent to.
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr>;
    /// The identity of the pod's network namespace, when it is a real one (the PID mode of
    /// SPIRE looks for the pod's processes by it).
    fn netns(&self) -> Option<meshwire_netns::ns::NsId> {
        None
    }
}

/// Which listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ListenerKind {
    /// 15001: traffic the pod sends, redirected.
    Outbound,
    /// 15006: plaintext traffic to the pod, redirected.
    InboundPlaintext,
    /// 15008: HBONE to the pod.
    InboundHbone,
}

impl ListenerKind {
    pub(crate) const ALL: [Self; 3] = [Self::Outbound, Self::InboundPlaintext, Self::InboundHbone];

    pub(crate) fn port(self) -> u16 {
        match self {
            Self::Outbound => OUTBOUND_PORT,
            Self::InboundPlaintext => INBOUND_PLAINTEXT_PORT,
            Self::InboundHbone => HBONE_PORT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::InboundPlaintext => "inbound-plaintext",
            Self::InboundHbone => "inbound-hbone",
        }
    }
}

/// One enrolled pod whose listeners this proxy holds.
#[derive(Debug)]
pub(crate) struct Pod {
    pub(crate) info: PodInfo,
    pub(crate) net: Arc<dyn PodNetwork>,
    pub(crate) since: SystemTime,
    /// Local addresses of the listeners, by kind.
    pub(crate) listeners: Vec<(ListenerKind, SocketAddr)>,
    /// Stops the accept loops (shutdown or removal).
    accept_stop: CancellationToken,
    /// Cuts the pod's connections (removal, or end of the shutdown grace period).
    kill: CancellationToken,
}

impl Pod {
    /// Fires when the pod's connections must end now.
    pub(crate) fn killed(&self) -> &CancellationToken {
        &self.kill
    }
}

/// Handles the connections accepted on a pod's listeners.
pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        pod: Arc<Pod>,
        kind: ListenerKind,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> BoxFuture<'static, ()>;
    /// A pod was added (its listeners exist).
    fn pod_added(&self, _pod: &Arc<Pod>) {}
    /// A pod was removed (its listeners are closed).
    fn pod_removed(&self, _pod: &Arc<Pod>) {}
    /// The proxy started draining (long-lived connections should be asked to close).
    fn drain(&self) {}
}

/// Owns every pod's listeners and connection tasks.
pub(crate) struct Supervisor {
    pods: Mutex<BTreeMap<String, Arc<Pod>>>,
    handler: Arc<dyn Handler>,
    metrics: Arc<Metrics>,
    /// Parent of every pod's `accept_stop`.
    stop_accepting: CancellationToken,
    /// Parent of every pod's `kill`.
    kill_all: CancellationToken,
    /// Accept loops and connections of all pods.
    tasks: TaskTracker,
    /// Ports to bind (the real ones; tests bind ephemeral ports).
    ports: fn(ListenerKind) -> u16,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("pods", &self.lock().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    pub(crate) fn new(handler: Arc<dyn Handler>, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_ports(handler, metrics, ListenerKind::port)
    }

    pub(crate) fn with_ports(
        handler: Arc<dyn Handler>,
        metrics: Arc<Metrics>,
        ports: fn(ListenerKind) -> u16,
    ) -> Arc<Self> {
        Arc::new(Self {
            pods: Mutex::new(BTreeMap::new()),
            handler,
            metrics,
            stop_accepting: CancellationToken::new(),
            kill_all: CancellationToken::new(),
            tasks: TaskTracker::new(),
            ports,
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Pod>>> {
        // A panic while holding the lock leaves a consistent map (every mutation is one call).
        self.pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pods held now.
    pub(crate) fn pods(&self) -> Vec<Arc<Pod>> {
        self.lock().values().cloned().collect()
    }

    /// The metrics it counts in.
    pub(crate) fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub(crate) fn get(&self, uid: &str) -> Option<Arc<Pod>> {
        self.lock().get(uid).cloned()
    }

    /// Starts proxying for a pod: binds its three listeners inside its namespace and starts
    /// accepting. Returns once the listeners exist (then the add may be acknowledged).
    /// Adding a pod that runs in the same namespace again is a no-op; a pod whose namespace
    /// changed (sandbox recreated) is restarted.
    pub(crate) async fn add(&self, info: PodInfo, net: Arc<dyn PodNetwork>) -> anyhow::Result<()> {
        if self.stop_accepting.is_cancelled() {
            anyhow::bail!("proxy is shutting down");
        }
        if let Some(old) = self.get(&info.uid) {
            if old.net.id() == net.id() {
                tracing::debug!(uid = %info.uid, "pod already proxied in this namespace");
                return Ok(());
            }
            tracing::info!(uid = %info.uid, old = %old.net.id(), new = %net.id(), "pod namespace changed, restarting its listeners");
            self.remove(&info.uid);
        }

        let mut bound = Vec::with_capacity(3);
        for kind in ListenerKind::ALL {
            let port = (self.ports)(kind);
            let listener = net.listen(port).await.map_err(|e| {
                anyhow::anyhow!(
                    "binding {} listener on port {port} in {}: {e}",
                    kind.name(),
                    net.id()
                )
            })?;
            bound.push((kind, listener));
        }
        let listeners = bound
            .iter()
            .map(|(k, l)| Ok((*k, l.local_addr()?)))
            .collect::<io::Result<Vec<_>>>()?;
        let pod = Arc::new(Pod {
            info,
            net,
            since: SystemTime::now(),
            listeners,
            accept_stop: self.stop_accepting.child_token(),
            kill: self.kill_all.child_token(),
        });
        for (kind, listener) in bound {
            self.tasks.spawn(accept_loop(
                self.tasks.clone(),
                self.handler.clone(),
                pod.clone(),
                kind,
                listener,
            ));
        }
        {
            let mut pods = self.lock();
            if let Some(raced) = pods.insert(pod.info.uid.clone(), pod.clone()) {
                // Two adds of the same uid ran at once (ZDS is lock-step, so only in tests).
                raced.accept_stop.cancel();
                raced.kill.cancel();
            }
            self.metrics.pods.set(pods.len() as i64);
        }
        tracing::info!(
            uid = %pod.info.uid, pod = %pod.info.name, namespace = %pod.info.namespace,
            netns = %pod.net.id(), "pod added, listeners ready"
        );
        self.handler.pod_added(&pod);
        Ok(())
    }

    /// Stops proxying for a pod now: listeners close and its connections are cut (the pod is
    /// gone). Unknown uids are fine. Returns whether the pod was held.
    pub(crate) fn remove(&self, uid: &str) -> bool {
        let removed = {
            let mut pods = self.lock();
            let removed = pods.remove(uid);
            self.metrics.pods.set(pods.len() as i64);
            removed
        };
        match removed {
            Some(pod) => {
                pod.accept_stop.cancel();
                pod.kill.cancel();
                tracing::info!(uid, pod = %pod.info.name, namespace = %pod.info.namespace, "pod removed");
                self.handler.pod_removed(&pod);
                true
            }
            None => false,
        }
    }

    /// Graceful drain: stop accepting everywhere, let connections finish for up to `grace`,
    /// then cut what is left.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        self.stop_accepting.cancel();
        self.handler.drain();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::info!(
                remaining = self.tasks.len(),
                "drain period over, closing connections"
            );
            self.kill_all.cancel();
            // Connection tasks end at their next poll once killed.
            let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
        }
        let pods: Vec<_> = std::mem::take(&mut *self.lock()).into_values().collect();
        for pod in pods {
            pod.kill.cancel();
            self.handler.pod_removed(&pod);
        }
        self.metrics.pods.set(0);
    }
}

async fn accept_loop(
    tasks: TaskTracker,
    handler: Arc<dyn Handler>,
    pod: Arc<Pod>,
    kind: ListenerKind,
    listener: TcpListener,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = pod.accept_stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of fds and the like: back off instead of spinning.
                    tracing::warn!(uid = %pod.info.uid, listener = kind.name(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tune_accepted(&stream, kind) {
            tracing::debug!(error = %e, "setting socket options");
        }
        let handler = handler.clone();
        let pod = pod.clone();
        tasks.spawn(async move {
            let kill = pod.kill.clone();
            tokio::select! {
                () = kill.cancelled() => {}
                () = handler.handle(pod, kind, stream, peer) => {}
            }
        });
    }
    tracing::debug!(uid = %pod.info.uid, listener = kind.name(), "listener closed");
}

/// TCP_NODELAY everywhere; keepalive (180 s idle, 180 s interval, 9 probes) on the capture
/// ports.
fn tune_accepted(stream: &TcpStream, kind: ListenerKind) -> io::Result<()> {
    stream.set_nodelay(true)?;
    if kind != ListenerKind::InboundHbone {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(180))
            .with_interval(Duration::from_secs(180))
            .with_retries(9);
        socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A "namespace" that is the test's own: listeners on 127.0.0.1 with ephemeral ports,
    /// connections from the host, and a fixed original destination.
    #[derive(Debug)]
    pub(crate) struct HostNetwork {
        pub(crate) id: String,
        pub(crate) original_dst: Mutex<Option<SocketAddr>>,
        pub(crate) connects: AtomicUsize,
    }

    impl HostNetwork {
        pub(crate) fn new(id: &str) -> Arc<Self> {
            Arc::new(Self {
                id: id.to_owned(),
                original_dst: Mutex::new(None),
                connects: AtomicUsize::new(0),
            })
        }
    }

    impl PodNetwork for HostNetwork {
        fn id(&self) -> String {
            self.id.clone()
        }
        fn listen(&self, port: u16) -> BoxFuture<'_, io::Result<TcpListener>> {
            Box::pin(TcpListener::bind(("127.0.0.1", port)))
        }
        fn connect(&self, dst: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>> {
            self.connects.fetch_add(1, Ordering::SeqCst);
            Box::pin(TcpStream::connect(dst))
        }
        fn original_dst(&self, _stream: &TcpStream) -> io::Result<SocketAddr> {
            self.original_dst
                .lock()
                .unwrap()
                .ok_or_else(|| io::Error::other("no original destination set"))
        }
    }

    pub(crate) fn ephemeral(_: ListenerKind) -> u16 {
        0
    }

    /// Echoes on every listener, prefixed with the listener kind.
    struct Echo;
    impl Handler for Echo {
        fn handle(
            self: Arc<Self>,
            _pod: Arc<Pod>,
            kind: ListenerKind,
            mut stream: TcpStream,
            _peer: SocketAddr,
        ) -> BoxFuture<'static, ()> {
            Box::pin(async move {
                let _ = stream.write_all(kind.name().as_bytes()).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            })
        }
    }

    fn info(uid: &str) -> PodInfo {
        PodInfo {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            namespace: "shop".into(),
            service_account: "default".into(),
        }
    }

    fn addr_of(pod: &Pod, kind: ListenerKind) -> SocketAddr {
        pod.listeners.iter().find(|(k, _)| *k == kind).unwrap().1
    }

    async fn hello(addr: SocketAddr) -> io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    #[tokio::test]
    async fn add_opens_three_listeners_and_remove_closes_them() {
        let sup = Supervisor::with_ports(Arc::new(Echo), Metrics::new(), ephemeral);
        sup.add(info("a"), HostNetwork::new("ns-a")).await.unwrap();
        let pod = sup.get("a").unwrap();
        assert_eq!(pod.listeners.len(), 3);
        for kind in ListenerKind::ALL {
            assert_eq!(hello(addr_of(&pod, kind)).await.unwrap(), kind.name());
        }
        assert_eq!(sup.metrics.pods.get(), 1);

        // An open connection is cut when the pod goes away.
        let mut open = TcpStream::connect(addr_of(&pod, ListenerKind::Outbound))
            .await
            .unwrap();
        let mut buf = [0u8; 8];
        let _ = open.read(&mut buf).await.unwrap();
        assert!(sup.remove("a"));
        assert!(!sup.remove("a"), "second remove is a no-op");
        let n = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut Vec::new()))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        // The listeners are gone.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for kind in ListenerKind::ALL {
            assert!(
                hello(addr_of(&pod, kind)).await.is_err(),
                "{kind:?} still listening"
            );
        }
        assert_eq!(sup.metrics.pods.get(), 0);
    }

    #[tokio::test]
    async fn same_namespace_is_idempotent_new_namespace_restarts() {
        let sup = Supervisor::with_ports(Arc::new(Echo), Metrics::new(), ephemeral);
        sup.add(info("a"), HostNetwork::new("ns-1")).await.unwrap();
        let first = sup.get("a").unwrap();
        sup.add(info("a"), HostNetwork::new("ns-1")).await.unwrap();
        assert!(Arc::ptr_eq(&first, &sup.get("a").unwrap()));
        sup.add(info("a"), HostNetwork::new("ns-2")).await.unwrap();
        let second = sup.get("a").unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(first.kill.is_cancelled());
        assert_eq!(sup.pods().len(), 1);
    }

    #[tokio::test]
    async fn bind_failure_is_reported() {
        // Occupy a port, then ask the supervisor to bind it.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        static PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        PORT.store(taken.local_addr().unwrap().port(), Ordering::SeqCst);
        let sup = Supervisor::with_ports(Arc::new(Echo), Metrics::new(), |k| {
            if k == ListenerKind::InboundHbone {
                PORT.load(Ordering::SeqCst)
            } else {
                0
            }
        });
        let err = sup
            .add(info("a"), HostNetwork::new("ns"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("inbound-hbone"), "{err}");
        assert!(sup.get("a").is_none());
    }

    #[tokio::test]
    async fn shutdown_lets_connections_finish_then_cuts_them() {
        let sup = Supervisor::with_ports(Arc::new(Echo), Metrics::new(), ephemeral);
        sup.add(info("a"), HostNetwork::new("ns")).await.unwrap();
        let pod = sup.get("a").unwrap();
        let addr = addr_of(&pod, ListenerKind::InboundPlaintext);
        let mut open = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 32];
        let _ = open.read(&mut buf).await.unwrap();

        let started = std::time::Instant::now();
        let drain = tokio::spawn({
            let sup = sup.clone();
            async move { sup.shutdown(Duration::from_millis(300)).await }
        });
        // During the grace period the connection still works, but nothing new is accepted.
        tokio::time::sleep(Duration::from_millis(50)).await;
        open.write_all(b"x").await.unwrap();
        let n = open.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"x");
        assert!(hello(addr).await.is_err());
        drain.await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(open.read(&mut buf).await.unwrap_or(0), 0);
        assert!(sup.pods().is_empty());
        assert!(sup.add(info("b"), HostNetwork::new("ns")).await.is_err());
    }
}
