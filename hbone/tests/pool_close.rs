//! Closing the pool: idle connections end at once, open tunnels finish, dials in progress
//! are abandoned, and dropping the last clone does the same.

// Helpers outside #[test] functions: a failed step should abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use meshwire_hbone::client::{ClientError, PoolConfig, PoolKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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

    /// Two keys of the fixture's client to this server that do not share connections:
    /// one for a tunnel kept open, one for a connection left idle.
    fn busy_and_idle_keys(&self, f: &Fixture) -> (PoolKey, PoolKey) {
        let mut busy = f.key();
        busy.next_hop = self.addr;
        let mut idle = busy.clone();
        idle.expected.insert(id("other", "sa"));
        (busy, idle)
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
    let (busy_key, idle_key) = observed.busy_and_idle_keys(&f);

    let mut busy = open(&pool, &busy_key, PORT_ECHO).await;
    echo_once(&mut busy).await;
    let mut t = open(&pool, &idle_key, PORT_ECHO).await;
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
    let pool = f.pool_with(connector.clone(), PoolConfig::default());
    let tasks = connect_concurrently(&f, &pool, PORT_ECHO, 5);
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
    let (key, idle_key) = observed.busy_and_idle_keys(&f);
    let mut t = open(&pool, &idle_key, PORT_ECHO).await;
    echo_once(&mut t).await;
    drop(t);
    let mut busy = open(&pool, &key, PORT_ECHO).await;
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
