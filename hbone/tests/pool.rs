//! Pool behaviour over loopback TLS: stream limits, shared dials, idle release (a zero
//! timeout included), GOAWAY, keepalive and server drain. Flow control is in
//! `flow_control.rs`, closing the pool in `pool_close.rs`.

// Helpers outside #[test] functions: a failed step should abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use meshwire_hbone::client::{ClientError, Pool, PoolConfig, PoolKey, SvidClientTls, TcpConnector};
use meshwire_hbone::server::{ServeConfig, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Opens `n` tunnels at once and holds them all open before closing any.
async fn hold_concurrent(pool: &Pool<TcpConnector, SvidClientTls>, key: &PoolKey, n: usize) {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (pool, key, barrier) = (pool.clone(), key.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = open(&pool, &key, PORT_ECHO).await;
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
    let mut t = f.open(&pool, PORT_ECHO).await;
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
        let mut t = open(&pool, k, PORT_ECHO).await;
        echo_once(&mut t).await;
    }
    let s = pool.stats();
    assert_eq!((s.opened, s.reused, s.pooled), (3, 3, 3));
}

#[tokio::test]
async fn concurrent_requests_share_one_dial() {
    let f = Fixture::start().await;
    let connector = TestConnector {
        delay: Duration::from_millis(100),
        ..Default::default()
    };
    let pool = f.pool_with(connector.clone(), PoolConfig::default());
    for t in connect_concurrently(&f, &pool, PORT_ECHO, 50) {
        echo_once(&mut t.await.unwrap().unwrap()).await;
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
    let pool = f.pool_with(connector.clone(), PoolConfig::default());
    for t in connect_concurrently(&f, &pool, PORT_ECHO, 20) {
        let err = t.await.unwrap().unwrap_err();
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
    let pool = f.pool_with(connector, pc);
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
    let mut t = f.open(&pool, PORT_ECHO).await;
    echo_once(&mut t).await;
    // In use: not released even after the idle timeout.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(pool.stats().closed, 0);
    echo_once(&mut t).await;
    drop(t);
    eventually("idle connection closed", || pool.stats().closed == 1).await;
    assert_eq!(pool.stats().pooled, 0);
    let mut t = f.open(&pool, PORT_ECHO).await;
    echo_once(&mut t).await;
    assert_eq!(pool.stats().opened, 2);
}

/// Opens `n` tunnels one after the other, each dropped before the next starts.
async fn open_sequentially(f: &Fixture, pool: &Pool<TcpConnector, SvidClientTls>, n: usize) {
    for _ in 0..n {
        let mut t = f.open(pool, PORT_ECHO).await;
        echo_once(&mut t).await;
        drop(t);
    }
}

/// A pool of the fixture's client that releases connections with their last tunnel.
fn zero_idle_pool(f: &Fixture) -> Pool<TcpConnector, SvidClientTls> {
    let mut pc = PoolConfig::default();
    pc.idle_timeout = Duration::ZERO;
    f.pool(pc)
}

#[tokio::test]
async fn zero_idle_timeout_gives_each_sequential_tunnel_its_own_connection() {
    let f = Fixture::start().await;
    let pool = zero_idle_pool(&f);
    // Each connect follows the previous drop at once, without yielding to the connection
    // task: the released connection is refused all the same.
    open_sequentially(&f, &pool, 5).await;
    assert_eq!(f.server.stats().connections, 5, "TLS connections accepted");
    let s = pool.stats();
    assert_eq!((s.opened, s.reused), (5, 0), "{s:?}");
    eventually("released connections closed", || pool.stats().closed == 5).await;
    assert_eq!(pool.stats().pooled, 0);
}

#[tokio::test]
async fn default_idle_timeout_shares_one_connection_between_sequential_tunnels() {
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    open_sequentially(&f, &pool, 5).await;
    assert_eq!(f.server.stats().connections, 1, "TLS connections accepted");
    let s = pool.stats();
    assert_eq!((s.opened, s.reused, s.closed), (1, 4, 0), "{s:?}");
}

#[tokio::test]
async fn zero_idle_timeout_keeps_a_busy_connection_usable() {
    let f = Fixture::start().await;
    let pool = zero_idle_pool(&f);
    let mut first = f.open(&pool, PORT_ECHO).await;
    echo_once(&mut first).await;
    // While `first` is open, tunnels come and go on its connection.
    for _ in 0..3 {
        let mut t = f.open(&pool, PORT_ECHO).await;
        echo_once(&mut t).await;
        drop(t);
        tokio::task::yield_now().await;
        echo_once(&mut first).await;
    }
    assert_eq!(f.server.stats().connections, 1, "TLS connections accepted");
    let s = pool.stats();
    assert_eq!((s.opened, s.reused, s.closed), (1, 3, 0), "{s:?}");
    // Its last tunnel gone, the connection is released.
    drop(first);
    eventually("connection released", || pool.stats().closed == 1).await;
    assert_eq!(pool.stats().pooled, 0);
    let mut t = f.open(&pool, PORT_ECHO).await;
    echo_once(&mut t).await;
    assert_eq!(f.server.stats().connections, 2, "TLS connections accepted");
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
    let mut t = open(&pool, &key, PORT_ECHO).await;
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
    let mut t = open(&pool, &key, PORT_ECHO).await;
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
        TcpConnector::new(),
        pki.client_tls(&client_id),
        PoolConfig::default(),
    );
    let key = PoolKey::new(client_id, [server_id], addr, None);
    let mut old = open(&pool, &key, PORT_ECHO).await;
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
        let mut t = open(&pool, &key, PORT_ECHO).await;
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
        let mut t = open(&pool, &key, PORT_ECHO).await;
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
    let mut t = f.open(&pool, PORT_ECHO).await;
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
    let mut t = open(&pool, &key, PORT_ECHO).await;
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
