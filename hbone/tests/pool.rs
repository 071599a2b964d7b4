//! Pool behaviour over loopback TLS: stream limits, shared dials, idle release, GOAWAY,
//! keepalive, flow control with slow readers, server drain, and closing the pool.

// Helpers outside #[test] functions: a failed step should abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use meshwire_hbone::client::{ClientError, Connector, Pool, PoolConfig, PoolKey};
use meshwire_hbone::server::{ServeConfig, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_once(t: &mut meshwire_hbone::Tunnel) {
    t.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    t.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"x");
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens `n` tunnels at once and holds them all open before closing any.
async fn hold_concurrent(
    pool: &Pool<meshwire_hbone::client::TcpConnector, meshwire_hbone::client::SvidClientTls>,
    key: &PoolKey,
    n: usize,
) {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (pool, key, barrier) = (pool.clone(), key.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = pool
                .connect(&key, &Fixture::request(PORT_ECHO))
                .await
                .unwrap();
            echo_once(&mut t).await;
            barrier.wait().await;
        }));
    }
    // Streams beyond the server's limit would wait forever for a slot: fail instead.
    tokio::time::timeout(Duration::from_secs(60), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("tunnels were not all established: stream limit exceeded?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_tunnels_respect_server_stream_limit() {
    let mut sc = ServeConfig::default();
    sc.http2.max_concurrent_streams = Some(50);
    let f = Fixture::start_with(sc).await;
    let pool = f.pool(PoolConfig::default()); // 100 per connection, the server allows 50
    hold_concurrent(&pool, &f.key(), 1000).await;
    let s = pool.stats();
    assert_eq!(s.opened, 20, "{s:?}");
    assert_eq!(s.reused, 980, "{s:?}");
    assert_eq!(s.dial_failures, 0);
    assert_eq!(f.state.counts.max_per_connection(), 50);
    assert_eq!(f.state.counts.connections(), 20);
    // Everything was released: the next tunnel reuses a connection.
    let mut t = pool
        .connect(&f.key(), &Fixture::request(PORT_ECHO))
        .await
        .unwrap();
    echo_once(&mut t).await;
    assert_eq!(pool.stats().opened, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_stream_limit_below_server_limit() {
    let f = Fixture::start().await; // server allows 200
    let mut pc = PoolConfig::default();
    pc.max_streams_per_connection = 30;
    let pool = f.pool(pc);
    hold_concurrent(&pool, &f.key(), 300).await;
    assert_eq!(pool.stats().opened, 10);
    assert_eq!(f.state.counts.max_per_connection(), 30);
}

#[tokio::test]
async fn different_keys_do_not_share_connections() {
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    let k1 = f.key();
    let mut k2 = f.key();
    k2.expected.insert(id("extra", "sa"));
    let mut k3 = f.key();
    k3.source_addr = Some("127.0.0.1".parse().unwrap());
    for k in [&k1, &k2, &k3, &k1, &k2, &k3] {
        let mut t = pool.connect(k, &Fixture::request(PORT_ECHO)).await.unwrap();
        echo_once(&mut t).await;
    }
    let s = pool.stats();
    assert_eq!((s.opened, s.reused, s.pooled), (3, 3, 3));
}

/// A connector that counts dials and can delay or fail them.
#[derive(Clone, Default)]
struct TestConnector {
    calls: Arc<AtomicUsize>,
    delay: Duration,
    fail: bool,
}

impl Connector for TestConnector {
    type Io = TcpStream;
    async fn connect(&self, key: &PoolKey) -> io::Result<TcpStream> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if self.fail {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "test refusal",
            ));
        }
        TcpStream::connect(key.next_hop).await
    }
}

#[tokio::test]
async fn concurrent_requests_share_one_dial() {
    let f = Fixture::start().await;
    let connector = TestConnector {
        delay: Duration::from_millis(100),
        ..Default::default()
    };
    let pool = Pool::new(
        connector.clone(),
        f.pki.client_tls(&f.client_id),
        PoolConfig::default(),
    );
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (pool, key) = (pool.clone(), f.key());
        tasks.push(tokio::spawn(async move {
            let mut t = pool
                .connect(&key, &Fixture::request(PORT_ECHO))
                .await
                .unwrap();
            echo_once(&mut t).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(connector.calls.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().opened, 1);
    assert_eq!(pool.stats().reused, 49);
}

#[tokio::test]
async fn waiters_share_a_failed_dial() {
    let f = Fixture::start().await;
    let connector = TestConnector {
        delay: Duration::from_millis(100),
        fail: true,
        ..Default::default()
    };
    let pool = Pool::new(
        connector.clone(),
        f.pki.client_tls(&f.client_id),
        PoolConfig::default(),
    );
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (pool, key) = (pool.clone(), f.key());
        tasks.push(tokio::spawn(async move {
            pool.connect(&key, &Fixture::request(PORT_ECHO))
                .await
                .unwrap_err()
        }));
    }
    for t in tasks {
        let err = t.await.unwrap();
        assert!(
            matches!(err, ClientError::Connect(ref e) if e.kind() == io::ErrorKind::ConnectionRefused),
            "{err:?}"
        );
    }
    assert_eq!(connector.calls.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().dial_failures, 1);
}

#[tokio::test]
async fn connect_timeout_is_reported() {
    let f = Fixture::start().await;
    let connector = TestConnector {
        delay: Duration::from_secs(5),
        ..Default::default()
    };
    let mut pc = PoolConfig::default();
    pc.connect_timeout = Duration::from_millis(50);
    let pool = Pool::new(connector, f.pki.client_tls(&f.client_id), pc);
    let err = pool
        .connect(&f.key(), &Fixture::request(PORT_ECHO))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::ConnectTimeout), "{err:?}");
}

#[tokio::test]
async fn unknown_source_identity_is_a_tls_config_error() {
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    let mut key = f.key();
    key.source = id("someone", "else");
    let err = pool
        .connect(&key, &Fixture::request(PORT_ECHO))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::TlsConfig(_)), "{err:?}");
}

#[tokio::test]
async fn idle_connections_are_released() {
    let f = Fixture::start().await;
    let mut pc = PoolConfig::default();
    pc.idle_timeout = Duration::from_millis(200);
    let pool = f.pool(pc);
    let mut t = pool
        .connect(&f.key(), &Fixture::request(PORT_ECHO))
        .await
        .unwrap();
    echo_once(&mut t).await;
    // In use: not released even after the idle timeout.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(pool.stats().closed, 0);
    echo_once(&mut t).await;
    drop(t);
    eventually("idle connection closed", || pool.stats().closed == 1).await;
    assert_eq!(pool.stats().pooled, 0);
    let mut t = pool
        .connect(&f.key(), &Fixture::request(PORT_ECHO))
        .await
        .unwrap();
    echo_once(&mut t).await;
    assert_eq!(pool.stats().opened, 2);
}

/// A TCP relay whose current connections can be frozen (bytes stop flowing both ways,
/// sockets stay open), like a peer that vanished without a FIN.
struct Relay {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let fz = frozen.clone();
        tokio::spawn(async move {
            loop {
                let (down, _) = listener.accept().await.unwrap();
                let up = TcpStream::connect(upstream).await.unwrap();
                let gate = Arc::new(AtomicBool::new(false));
                // Only connections open at freeze time are frozen.
                let (fz, gate2) = (fz.clone(), gate.clone());
                tokio::spawn(async move {
                    loop {
                        if fz.load(Ordering::SeqCst) {
                            gate2.store(true, Ordering::SeqCst);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                });
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, gate.clone()));
                tokio::spawn(pump(ur, dw, gate));
            }
        });
        Self { addr, frozen }
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    gate: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match tokio::time::timeout(Duration::from_millis(10), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) => {
                if gate.load(Ordering::SeqCst) {
                    // Frozen: hold both sockets open, move nothing.
                    std::future::pending::<()>().await;
                }
                continue;
            }
        };
        if gate.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn unanswered_ping_drops_the_connection() {
    let f = Fixture::start().await;
    let relay = Relay::start(f.addr).await;
    let mut pc = PoolConfig::default();
    pc.http2.keepalive_interval = Some(Duration::from_millis(200));
    pc.http2.keepalive_timeout = Duration::from_secs(1);
    let pool = f.pool(pc);
    let mut key = f.key();
    key.next_hop = relay.addr;
    let mut t = pool
        .connect(&key, &Fixture::request(PORT_ECHO))
        .await
        .unwrap();
    echo_once(&mut t).await;
    // Healthy connections survive many keepalive rounds.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pool.stats().closed, 0);
    echo_once(&mut t).await;

    relay.frozen.store(true, Ordering::SeqCst);
    let frozen_at = Instant::now();
    eventually("connection dropped after PING timeout", || {
        pool.stats().closed == 1
    })
    .await;
    assert!(frozen_at.elapsed() >= Duration::from_millis(900));
    // The tunnel on the dead connection fails instead of hanging.
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(2), t.read(&mut b)).await;
    assert!(matches!(r, Ok(Err(_))), "{r:?}");

    relay.frozen.store(false, Ordering::SeqCst);
    let mut t = pool
        .connect(&key, &Fixture::request(PORT_ECHO))
        .await
        .unwrap();
    echo_once(&mut t).await;
    assert_eq!(pool.stats().opened, 2);
}

#[tokio::test]
async fn goaway_moves_new_tunnels_to_a_new_connection() {
    let pki = Pki::new();
    let server_id = id("server-ns", "server");
    let client_id = id("client-ns", "client");
    let mut sc = ServeConfig::default();
    sc.drain_deadline = Duration::from_secs(5);
    let state_a = Arc::new(HandlerState::default());
    let state_b = Arc::new(HandlerState::default());
    let server_a = Server::new(
        pki.server_tls(&server_id),
        handler(state_a.clone()),
        sc.clone(),
    );
    let server_b = Server::new(pki.server_tls(&server_id), handler(state_b.clone()), sc);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = (server_a.clone(), server_b.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let info = meshwire_hbone::server::ConnectionInfo::new(addr, peer);
            // New connections go to B once A drains.
            if a.is_draining() {
                b.spawn_connection(tcp, info);
            } else {
                a.spawn_connection(tcp, info);
            }
        }
    });
    let pool = Pool::new(
        meshwire_hbone::client::TcpConnector::new(),
        pki.client_tls(&client_id),
        PoolConfig::default(),
    );
    let key = PoolKey::new(client_id, [server_id], addr, None);
    let mut old = pool
        .connect(&key, &Fixture::request(PORT_ECHO))
        .await
        .unwrap();
    echo_once(&mut old).await;

    let drain = tokio::spawn({
        let a = server_a.clone();
        async move {
            let start = Instant::now();
            a.shutdown().await;
            start.elapsed()
        }
    });
    // Tunnels opened before the GOAWAY arrives may still go to A; once the client has
    // seen it, new tunnels go to a new connection (served by B).
    let mut new = loop {
        let mut t = pool
            .connect(&key, &Fixture::request(PORT_ECHO))
            .await
            .unwrap();
        echo_once(&mut t).await;
        if state_b.handled.load(Ordering::SeqCst) == 1 {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(pool.stats().opened, 2);
    // The open tunnel keeps working during the drain, and so does the new one.
    echo_once(&mut old).await;
    echo_once(&mut new).await;
    let a_tunnels = state_a.handled.load(Ordering::SeqCst);
    for _ in 0..5 {
        let mut t = pool
            .connect(&key, &Fixture::request(PORT_ECHO))
            .await
            .unwrap();
        echo_once(&mut t).await;
    }
    assert_eq!(
        state_a.handled.load(Ordering::SeqCst),
        a_tunnels,
        "A got new tunnels"
    );
    assert_eq!(pool.stats().opened, 2);
    // Once the old tunnel ends, the drain completes well before its deadline.
    old.shutdown().await.unwrap();
    let mut rest = Vec::new();
    old.read_to_end(&mut rest).await.unwrap();
    drop(old);
    let took = drain.await.unwrap();
    assert!(took < Duration::from_secs(4), "drain took {took:?}");
    eventually("old connection closed", || pool.stats().closed == 1).await;
}

#[tokio::test]
async fn drain_deadline_closes_lingering_connections() {
    let mut sc = ServeConfig::default();
    sc.drain_deadline = Duration::from_millis(300);
    let f = Fixture::start_with(sc).await;
    let pool = f.pool(PoolConfig::default());
    let mut t = pool
        .connect(&f.key(), &Fixture::request(PORT_ECHO))
        .await
        .unwrap();
    echo_once(&mut t).await;
    let start = Instant::now();
    f.server.shutdown().await;
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The tunnel is gone.
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(2), t.read(&mut b)).await;
    assert!(matches!(r, Ok(Err(_)) | Ok(Ok(0))), "{r:?}");
    // New connections are not accepted any more.
    let err = pool
        .connect(&f.key(), &Fixture::request(PORT_ECHO))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Connect(_) | ClientError::Tls(_) | ClientError::Http2(_)
        ),
        "{err:?}"
    );
}

/// Writes until a write stays blocked for `quiet`; returns the bytes accepted. A write
/// that blocks before `at_least` bytes were accepted gets 5 s more, so that a loaded
/// machine is not mistaken for flow control.
async fn write_until_stalled(
    t: &mut meshwire_hbone::Tunnel,
    quiet: Duration,
    at_least: usize,
) -> usize {
    let chunk = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let write = t.write(&chunk);
        tokio::pin!(write);
        match tokio::time::timeout(quiet, &mut write).await {
            Ok(n) => total += n.unwrap(),
            Err(_) if total >= at_least => return total,
            Err(_) => match tokio::time::timeout(Duration::from_secs(5), &mut write).await {
                Ok(n) => total += n.unwrap(),
                Err(_) => return total,
            },
        }
    }
}

async fn take_parked(state: &HandlerState, n: usize) -> Vec<meshwire_hbone::Tunnel> {
    eventually("parked tunnels", || state.parked.lock().unwrap().len() >= n).await;
    std::mem::take(&mut *state.parked.lock().unwrap())
}

#[tokio::test]
async fn slow_reader_bounds_buffered_bytes_by_the_stream_window() {
    const WINDOW: usize = 4 * 1024 * 1024;
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    let mut t = pool
        .connect(&f.key(), &Fixture::request(PORT_PARK))
        .await
        .unwrap();
    let mut server_side = take_parked(&f.state, 1).await.pop().unwrap();

    // Nobody reads: the writer stops at the stream window.
    let written = write_until_stalled(&mut t, Duration::from_millis(300), WINDOW / 2).await;
    assert!(
        written <= WINDOW,
        "{written} bytes accepted, window is {WINDOW}"
    );
    assert!(written >= WINDOW / 2, "only {written} bytes accepted");
    let buffered = server_side.recv_half().buffered_bytes();
    assert!(buffered <= WINDOW, "{buffered}");
    assert_eq!(
        buffered, written,
        "everything accepted sits in the receive window"
    );

    // Reading slowly lets the writer continue, never more than a window ahead.
    let mut read = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total_written = written;
    for _ in 0..8 {
        let mut got = 0;
        while got < 1024 * 1024 {
            let n = server_side.read(&mut buf).await.unwrap();
            got += n;
        }
        read += got;
        total_written += write_until_stalled(&mut t, Duration::from_millis(100), 0).await;
        assert!(
            total_written - read <= WINDOW,
            "{} bytes in flight",
            total_written - read
        );
        assert!(server_side.recv_half().buffered_bytes() <= WINDOW);
    }
    assert!(total_written > written, "writer never resumed");
}

#[tokio::test]
async fn slow_readers_are_bounded_by_the_connection_window() {
    const CONN_WINDOW: usize = 16 * 1024 * 1024;
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    let mut tunnels = Vec::new();
    for _ in 0..6 {
        tunnels.push(
            pool.connect(&f.key(), &Fixture::request(PORT_PARK))
                .await
                .unwrap(),
        );
    }
    assert_eq!(pool.stats().opened, 1);
    let mut parked = take_parked(&f.state, 6).await;
    let mut total = 0;
    for (i, t) in tunnels.iter_mut().enumerate() {
        // The first streams have room in the connection window.
        let at_least = if i < 2 { 2 * 1024 * 1024 } else { 0 };
        total += write_until_stalled(t, Duration::from_millis(200), at_least).await;
    }
    // 6 streams × 4 MiB windows, but the connection window caps the sum.
    assert!(total <= CONN_WINDOW, "{total} bytes accepted");
    assert!(total >= CONN_WINDOW / 2, "{total} bytes accepted");
    let buffered: usize = parked
        .iter_mut()
        .map(|p| p.recv_half().buffered_bytes())
        .sum();
    assert_eq!(buffered, total);
}

#[tokio::test]
async fn server_stream_window_setting_applies() {
    // A smaller stream window set on the server bounds a client writer accordingly.
    let mut sc = ServeConfig::default();
    sc.http2.stream_window = 256 * 1024;
    let f = Fixture::start_with(sc).await;
    let pool = f.pool(PoolConfig::default());
    let mut t = pool
        .connect(&f.key(), &Fixture::request(PORT_PARK))
        .await
        .unwrap();
    let written = write_until_stalled(&mut t, Duration::from_millis(200), 128 * 1024).await;
    assert!((128 * 1024..=256 * 1024).contains(&written), "{written}");
}

#[tokio::test]
async fn server_drops_client_that_stops_answering_pings() {
    let mut sc = ServeConfig::default();
    sc.http2.keepalive_interval = Some(Duration::from_millis(200));
    sc.http2.keepalive_timeout = Duration::from_secs(1);
    let f = Fixture::start_with(sc).await;
    // Serve the relayed connection directly to see how it ends.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let direct = listener.local_addr().unwrap();
    let server = f.server.clone();
    let served = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.unwrap();
        let start = Instant::now();
        let r = server
            .serve_connection(
                tcp,
                meshwire_hbone::server::ConnectionInfo::new(direct, peer),
            )
            .await;
        (r, start.elapsed())
    });
    let relay = Relay::start(direct).await;
    let pool = f.pool(PoolConfig::default());
    let mut key = f.key();
    key.next_hop = relay.addr;
    let mut t = pool
        .connect(&key, &Fixture::request(PORT_ECHO))
        .await
        .unwrap();
    echo_once(&mut t).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    echo_once(&mut t).await;
    relay.frozen.store(true, Ordering::SeqCst);
    let frozen_at = Instant::now();
    let (r, took) = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("server kept the silent connection")
        .unwrap();
    assert!(
        matches!(
            r,
            Err(meshwire_hbone::server::ServerError::KeepaliveTimeout)
        ),
        "{r:?}"
    );
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(frozen_at.elapsed() >= Duration::from_millis(900));
}

/// Serves every connection to `addr` with the fixture's server directly and records how
/// each one ended, to see connections close from the server's side.
struct Observed {
    addr: SocketAddr,
    ended: Arc<std::sync::Mutex<Vec<Result<(), meshwire_hbone::server::ServerError>>>>,
}

impl Observed {
    async fn start(f: &Fixture) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ended = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (server, e) = (f.server.clone(), ended.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = listener.accept().await.unwrap();
                let (server, e) = (server.clone(), e.clone());
                tokio::spawn(async move {
                    let r = server
                        .serve_connection(
                            tcp,
                            meshwire_hbone::server::ConnectionInfo::new(addr, peer),
                        )
                        .await;
                    e.lock().unwrap().push(r);
                });
            }
        });
        Self { addr, ended }
    }

    /// Connections the server has seen end; panics on any that ended with a protocol
    /// error. A reset is tolerated: the server may still write (a PING, its own GOAWAY)
    /// after the client closed its socket.
    fn ended(&self) -> usize {
        let ended = self.ended.lock().unwrap();
        for r in ended.iter() {
            let reset =
                matches!(r, Err(meshwire_hbone::server::ServerError::Http2(e)) if e.is_io());
            assert!(r.is_ok() || reset, "connection ended with {r:?}");
        }
        ended.len()
    }
}

#[tokio::test]
async fn close_releases_idle_connections_and_lets_open_tunnels_finish() {
    let f = Fixture::start().await;
    let observed = Observed::start(&f).await;
    let pool = f.pool(PoolConfig::default());
    let mut busy_key = f.key();
    busy_key.next_hop = observed.addr;
    let mut idle_key = busy_key.clone();
    idle_key.expected.insert(id("other", "sa"));

    let mut busy = pool
        .connect(&busy_key, &Fixture::request(PORT_ECHO))
        .await
        .unwrap();
    echo_once(&mut busy).await;
    let mut t = pool
        .connect(&idle_key, &Fixture::request(PORT_ECHO))
        .await
        .unwrap();
    echo_once(&mut t).await;
    drop(t);
    let s = pool.stats();
    assert_eq!(
        (s.opened, s.pooled, s.open, s.closed),
        (2, 2, 2, 0),
        "{s:?}"
    );
    assert!(!pool.is_closed());

    pool.close();
    assert!(pool.is_closed());
    // The idle connection goes at once, on both ends; the busy one leaves the pool.
    eventually("idle connection closed", || pool.stats().closed == 1).await;
    eventually("server saw the idle connection end", || {
        observed.ended() == 1
    })
    .await;
    let s = pool.stats();
    assert_eq!((s.pooled, s.open), (0, 1), "{s:?}");

    // New tunnels are refused, on every key and through every clone.
    for key in [&busy_key, &idle_key, &f.key()] {
        let err = pool
            .clone()
            .connect(key, &Fixture::request(PORT_ECHO))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::PoolClosed), "{err:?}");
    }
    assert_eq!(pool.stats().opened, 2);

    // The open tunnel keeps working both ways, with a half-close, until it is done.
    let closed = pool.closed();
    tokio::pin!(closed);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut closed)
            .await
            .is_err(),
        "closed() returned while a tunnel was open"
    );
    let payload = vec![5u8; 1024 * 1024];
    busy.write_all(&payload).await.unwrap();
    busy.shutdown().await.unwrap();
    let mut back = Vec::new();
    busy.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, payload);
    assert_eq!(pool.stats().closed, 1);
    assert_eq!(observed.ended(), 1);
    drop(busy);

    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("connections did not close after their last tunnel");
    let s = pool.stats();
    assert_eq!((s.closed, s.open, s.pooled), (2, 0, 0), "{s:?}");
    eventually("server saw the busy connection end", || {
        observed.ended() == 2
    })
    .await;
    // Closing again changes nothing.
    pool.close();
    pool.closed().await;
    assert_eq!(pool.stats().closed, 2);
}

#[tokio::test]
async fn close_abandons_dials_and_their_waiters() {
    let f = Fixture::start().await;
    let connector = TestConnector {
        delay: Duration::from_secs(5),
        ..Default::default()
    };
    let pool = Pool::new(
        connector.clone(),
        f.pki.client_tls(&f.client_id),
        PoolConfig::default(),
    );
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (pool, key) = (pool.clone(), f.key());
        tasks.push(tokio::spawn(async move {
            pool.connect(&key, &Fixture::request(PORT_ECHO)).await
        }));
    }
    eventually("dial started", || {
        connector.calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let start = Instant::now();
    pool.close();
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert!(matches!(err, ClientError::PoolClosed), "{err:?}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let s = pool.stats();
    assert_eq!((s.opened, s.dial_failures, s.open), (0, 0, 0), "{s:?}");
    assert_eq!(connector.calls.load(Ordering::SeqCst), 1);
    tokio::time::timeout(Duration::from_secs(1), pool.closed())
        .await
        .unwrap();
}

#[tokio::test]
async fn dropping_the_last_pool_clone_closes_its_connections() {
    let f = Fixture::start().await;
    let observed = Observed::start(&f).await;
    let pool = f.pool(PoolConfig::default());
    let clone = pool.clone();
    let mut key = f.key();
    key.next_hop = observed.addr;
    let mut idle_key = key.clone();
    idle_key.expected.insert(id("other", "sa"));
    let mut t = pool
        .connect(&idle_key, &Fixture::request(PORT_ECHO))
        .await
        .unwrap();
    echo_once(&mut t).await;
    drop(t);
    let mut busy = pool
        .connect(&key, &Fixture::request(PORT_ECHO))
        .await
        .unwrap();
    echo_once(&mut busy).await;

    drop(pool);
    // A clone still holds the pool: nothing closes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(observed.ended(), 0);
    assert_eq!(clone.stats().open, 2);
    drop(clone);
    eventually("idle connection closed", || observed.ended() == 1).await;
    // The tunnel outlives the pool and keeps its connection.
    echo_once(&mut busy).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(observed.ended(), 1);
    drop(busy);
    eventually("busy connection closed", || observed.ended() == 2).await;
}
