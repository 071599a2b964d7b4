//! Shared fixtures: a CA, SVIDs, an HBONE server on loopback with a scriptable handler.
#![allow(dead_code, unreachable_pub)]
// Test fixtures: a failed setup step should abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshwire_hbone::client::{Connector, Pool, PoolConfig, PoolKey, SvidClientTls, TcpConnector};
use meshwire_hbone::server::{IncomingTunnel, ServeConfig, Server};
use meshwire_hbone::{ConnectRequest, Rejection};
use meshwire_svid::test_util::TestPki;
use meshwire_svid::{SpiffeId, TrustBundleSet, X509Svid};
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
    pub parked: Mutex<Vec<meshwire_hbone::Tunnel>>,
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
async fn serve_tunnel(
    port: u16,
    tunnel: &mut meshwire_hbone::Tunnel,
) -> std::io::Result<Option<(String, u64)>> {
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
        let pki = Pki::new();
        let server_id = id("server-ns", "server");
        let client_id = id("client-ns", "client");
        let state = Arc::new(HandlerState::default());
        let server = Server::new(pki.server_tls(&server_id), handler(state.clone()), config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = server.clone();
        tokio::spawn(async move { s.serve(listener).await });
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
        Pool::new(
            TcpConnector::new(),
            self.pki.client_tls(&self.client_id),
            config,
        )
    }

    pub fn request(port: u16) -> ConnectRequest {
        ConnectRequest::new(format!("127.0.0.1:{port}").parse().unwrap())
    }
}

pub async fn echo_once(t: &mut meshwire_hbone::Tunnel) {
    t.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    t.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"x");
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
