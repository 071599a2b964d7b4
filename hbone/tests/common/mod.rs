//! Shared fixtures: a CA, SVIDs, an HBONE server on loopback with a scriptable handler.
#![allow(dead_code, unreachable_pub)]
// Test fixtures: a failed setup step should abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshwire_hbone::client::{
    ClientConnection, ClientError, ClientTlsProvider, Connector, Pool, PoolConfig, PoolKey,
    SvidClientTls, TcpConnector,
};
use meshwire_hbone::server::{
    ConnectionInfo, ConnectionLimit, IncomingTunnel, ServeConfig, Server, ServerError,
};
use meshwire_hbone::{ConnectRequest, Http2Config, Rejection, Tunnel};
use meshwire_svid::test_util::TestPki;
use meshwire_svid::{IdentityPolicy, SpiffeId, TrustBundleSet, X509Svid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const TD: &str = "cluster.local";

/// Ports of the authority select the test handler's behaviour.
pub const PORT_ECHO: u16 = 7;
/// Reads to EOF, then answers with the SHA-256 (hex) of what it read and the count.
pub const PORT_HASH: u16 = 9;
/// Sends `DOWNLOAD_LEN` pattern bytes, shuts down, then hashes what it reads.
pub const PORT_DOWNLOAD: u16 = 19;
pub const PORT_UNAUTHORIZED: u16 = 401;
pub const PORT_UNAVAILABLE: u16 = 503;
/// Drops the request without answering.
pub const PORT_DROP: u16 = 504;
/// Accepts and parks the tunnel in `Fixture::parked` without reading.
pub const PORT_PARK: u16 = 600;
/// Requests to this port are held and never answered.
pub const PORT_SILENT: u16 = 601;
/// Answers 200 with baggage, then echoes.
pub const PORT_BAGGAGE: u16 = 8;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    meshwire_svid::provider::default()
}

pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://{TD}/ns/{ns}/sa/{sa}")).unwrap()
}

pub struct Pki {
    pub pki: TestPki,
    pub roots: TrustBundleSet,
}

impl Pki {
    pub fn new() -> Self {
        let pki = TestPki::new(TD);
        let roots = pki.roots().clone();
        Self { pki, roots }
    }

    pub fn svid(&self, id: &SpiffeId) -> X509Svid {
        self.pki.svid(id)
    }

    pub fn server_tls(&self, id: &SpiffeId) -> Arc<rustls::ServerConfig> {
        Arc::new(self.pki.server_config(id))
    }

    pub fn client_tls(&self, id: &SpiffeId) -> SvidClientTls {
        SvidClientTls::new(provider(), self.svid(id), self.roots.clone())
    }

    /// A rustls client configuration (for an unpooled connection) presenting `svid`,
    /// trusting this PKI's roots and accepting only `server` as the peer.
    pub fn client_config(&self, svid: &X509Svid, server: &SpiffeId) -> rustls::ClientConfig {
        meshwire_svid::tls::client_config(
            provider(),
            svid,
            &self.roots,
            IdentityPolicy::exact([server.clone()]),
        )
        .unwrap()
    }
}

/// Per-connection stream accounting seen by the handler.
#[derive(Default)]
pub struct StreamCounts {
    /// Current and highest concurrent accepted streams, per client address.
    pub per_conn: Mutex<HashMap<SocketAddr, (usize, usize)>>,
}

impl StreamCounts {
    fn enter(&self, peer: SocketAddr) {
        let mut m = self.per_conn.lock().unwrap();
        let e = m.entry(peer).or_default();
        e.0 += 1;
        e.1 = e.1.max(e.0);
    }
    fn exit(&self, peer: SocketAddr) {
        let mut m = self.per_conn.lock().unwrap();
        if let Some(e) = m.get_mut(&peer) {
            e.0 -= 1;
        }
    }
    pub fn max_per_connection(&self) -> usize {
        self.per_conn
            .lock()
            .unwrap()
            .values()
            .map(|e| e.1)
            .max()
            .unwrap_or(0)
    }
    pub fn connections(&self) -> usize {
        self.per_conn.lock().unwrap().len()
    }
}

pub const DOWNLOAD_LEN: u64 = 8 * 1024 * 1024;

#[derive(Default)]
pub struct HandlerState {
    pub counts: StreamCounts,
    pub handled: AtomicUsize,
    pub parked: Mutex<Vec<Tunnel>>,
    /// `PORT_SILENT` requests, unanswered.
    pub silent: Mutex<Vec<IncomingTunnel>>,
    pub peers: Mutex<Vec<SpiffeId>>,
    pub requests: Mutex<Vec<ConnectRequest>>,
    /// What `PORT_DOWNLOAD` tunnels received after their half-close: (SHA-256 hex, bytes).
    pub received: Mutex<Vec<(String, u64)>>,
}

pub type TestServer = Server<
    Box<dyn Fn(IncomingTunnel) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>,
    Arc<rustls::ServerConfig>,
>;

pub struct Fixture {
    pub pki: Pki,
    pub server_id: SpiffeId,
    pub client_id: SpiffeId,
    pub addr: SocketAddr,
    pub server: TestServer,
    pub state: Arc<HandlerState>,
}

/// A deterministic byte pattern, cheap to produce at any offset.
pub fn pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = offset + i as u64;
        *b = (x ^ (x >> 8) ^ (x >> 16).wrapping_mul(31)) as u8;
    }
}

pub fn handler(
    state: Arc<HandlerState>,
) -> Box<dyn Fn(IncomingTunnel) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync> {
    Box::new(move |t: IncomingTunnel| {
        let state = state.clone();
        Box::pin(async move {
            state.handled.fetch_add(1, Ordering::SeqCst);
            state.peers.lock().unwrap().push(t.peer_identity().clone());
            state.requests.lock().unwrap().push(t.request().clone());
            let peer = t.connection().peer_addr;
            match t.request().authority.port() {
                PORT_UNAUTHORIZED => t.reject(Rejection::Unauthorized),
                PORT_UNAVAILABLE => t.reject(Rejection::ServiceUnavailable),
                PORT_DROP => drop(t),
                PORT_SILENT => state.silent.lock().unwrap().push(t),
                PORT_PARK => {
                    let tunnel = t.accept().unwrap();
                    state.parked.lock().unwrap().push(tunnel);
                }
                port => {
                    let mut tunnel = if port == PORT_BAGGAGE {
                        let mut b = meshwire_hbone::headers::WorkloadBaggage::default();
                        b.namespace = Some("server-ns".into());
                        t.accept_with_baggage(b.to_baggage()).unwrap()
                    } else {
                        t.accept().unwrap()
                    };
                    state.counts.enter(peer);
                    if let Ok(Some(received)) = serve_tunnel(port, &mut tunnel).await {
                        state.received.lock().unwrap().push(received);
                    }
                    state.counts.exit(peer);
                }
            }
        })
    })
}

/// Serves one accepted tunnel; `PORT_DOWNLOAD` returns what it read after its half-close.
async fn serve_tunnel(port: u16, tunnel: &mut Tunnel) -> std::io::Result<Option<(String, u64)>> {
    match port {
        PORT_HASH => {
            let (h, n) = hash_reader(tunnel.recv_half()).await?;
            tunnel.write_all(format!("{h} {n}").as_bytes()).await?;
            tunnel.shutdown().await?;
            Ok(None)
        }
        PORT_DOWNLOAD => {
            write_pattern(tunnel.send_half(), DOWNLOAD_LEN).await?;
            tunnel.shutdown().await?;
            hash_reader(tunnel.recv_half()).await.map(Some)
        }
        _ => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = tunnel.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                tunnel.write_all(&buf[..n]).await?;
            }
            tunnel.shutdown().await?;
            Ok(None)
        }
    }
}

pub async fn hash_reader<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<(String, u64)> {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).await?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finish()), n))
}

/// Writes `len` bytes (slices of a pattern block at shifting offsets, so that chunks
/// differ); returns their SHA-256 (hex).
pub async fn write_pattern<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    len: u64,
) -> std::io::Result<String> {
    const CHUNK: usize = 1024 * 1024;
    let mut block = vec![0u8; CHUNK + 4096];
    pattern(0, &mut block);
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut off = 0u64;
    let mut i = 0usize;
    while off < len {
        let k = (len - off).min(CHUNK as u64) as usize;
        let start = (i * 7919) % 4096;
        let chunk = &block[start..start + k];
        h.update(chunk);
        w.write_all(chunk).await?;
        off += k as u64;
        i += 1;
    }
    Ok(hex::encode(h.finish()))
}

impl Fixture {
    pub async fn start() -> Self {
        Self::start_with(ServeConfig::default()).await
    }

    pub async fn start_with(config: ServeConfig) -> Self {
        Self::start_serving(config, None).await
    }

    /// A server whose listener admits connections through `limit` (key `0`).
    pub async fn start_limited(config: ServeConfig, limit: ConnectionLimit<u8>) -> Self {
        Self::start_serving(config, Some(limit)).await
    }

    async fn start_serving(config: ServeConfig, limit: Option<ConnectionLimit<u8>>) -> Self {
        let pki = Pki::new();
        let server_id = id("server-ns", "server");
        let client_id = id("client-ns", "client");
        let state = Arc::new(HandlerState::default());
        let server = Server::new(pki.server_tls(&server_id), handler(state.clone()), config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = server.clone();
        tokio::spawn(async move {
            match limit {
                Some(l) => s.serve_with_limit(listener, &l, 0).await,
                None => s.serve(listener).await,
            }
        });
        Self {
            pki,
            server_id,
            client_id,
            addr,
            server,
            state,
        }
    }

    pub fn key(&self) -> PoolKey {
        PoolKey::new(
            self.client_id.clone(),
            [self.server_id.clone()],
            self.addr,
            None,
        )
    }

    pub fn pool(&self, config: PoolConfig) -> Pool<TcpConnector, SvidClientTls> {
        self.pool_with(TcpConnector::new(), config)
    }

    /// A pool of the fixture's client that dials with `connector`.
    pub fn pool_with<C: Connector>(
        &self,
        connector: C,
        config: PoolConfig,
    ) -> Pool<C, SvidClientTls> {
        Pool::new(connector, self.pki.client_tls(&self.client_id), config)
    }

    pub fn request(port: u16) -> ConnectRequest {
        ConnectRequest::new(format!("127.0.0.1:{port}").parse().unwrap())
    }

    /// Opens a tunnel through `pool` to this server's `port` handler.
    pub async fn open<C: Connector, T: ClientTlsProvider>(
        &self,
        pool: &Pool<C, T>,
        port: u16,
    ) -> Tunnel {
        open(pool, &self.key(), port).await
    }

    /// The client's rustls configuration for an unpooled connection to this server.
    pub fn client_config(&self) -> rustls::ClientConfig {
        self.pki
            .client_config(&self.pki.svid(&self.client_id), &self.server_id)
    }

    /// Waits until the handler has parked at least `n` tunnels, and takes them all.
    pub async fn take_parked(&self, n: usize) -> Vec<Tunnel> {
        let parked = &self.state.parked;
        eventually("parked tunnels", || parked.lock().unwrap().len() >= n).await;
        std::mem::take(&mut *parked.lock().unwrap())
    }

    /// Waits for the handler to park one tunnel, and takes it.
    pub async fn take_parked_one(&self) -> Tunnel {
        self.take_parked(1).await.pop().unwrap()
    }
}

/// Opens a tunnel through `pool` on a connection of `key`, to the `port` handler.
pub async fn open<C: Connector, T: ClientTlsProvider>(
    pool: &Pool<C, T>,
    key: &PoolKey,
    port: u16,
) -> Tunnel {
    pool.connect(key, &Fixture::request(port)).await.unwrap()
}

/// Starts `n` concurrent tunnels through `pool` on the fixture's key, each in its own
/// task, to the `port` handler.
pub fn connect_concurrently(
    f: &Fixture,
    pool: &Pool<TestConnector, SvidClientTls>,
    port: u16,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<Tunnel, ClientError>>> {
    (0..n)
        .map(|_| {
            let (pool, key) = (pool.clone(), f.key());
            tokio::spawn(async move { pool.connect(&key, &Fixture::request(port)).await })
        })
        .collect()
}

/// Over a new unpooled connection to `addr` (TLS with `tls`, then HTTP/2 with `http2`),
/// opens one tunnel to the `port` handler.
pub async fn open_unpooled(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    http2: &Http2Config,
    port: u16,
) -> Result<Tunnel, ClientError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let conn = ClientConnection::connect(tcp, Arc::new(tls), http2).await?;
    conn.open(&Fixture::request(port)).await
}

/// Serves the first connection to a new loopback listener with `server` directly, to see
/// how that connection ends. Returns the listener's address and the outcome.
pub async fn serve_one(
    server: &TestServer,
) -> (SocketAddr, tokio::task::JoinHandle<Result<(), ServerError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = server.clone();
    let served = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.unwrap();
        server
            .serve_connection(tcp, ConnectionInfo::new(addr, peer))
            .await
    });
    (addr, served)
}

/// Writes `data` into the tunnel and reads back the echo, which must be the same.
pub async fn echo(t: &mut Tunnel, data: &[u8]) {
    t.write_all(data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    t.read_exact(&mut back).await.unwrap();
    assert!(back == data, "echo of {} bytes differs", data.len());
}

pub async fn echo_once(t: &mut Tunnel) {
    echo(t, b"x").await;
}

pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A connector that counts dials and can delay or fail them.
#[derive(Clone, Default)]
pub struct TestConnector {
    pub calls: Arc<AtomicUsize>,
    pub delay: Duration,
    pub fail: bool,
}

impl Connector for TestConnector {
    type Io = TcpStream;
    async fn connect(&self, key: &PoolKey) -> std::io::Result<TcpStream> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if self.fail {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "test refusal",
            ));
        }
        TcpStream::connect(key.next_hop).await
    }
}
