//! Slowloris defence of the server: one deadline from the accept to the first CONNECT
//! request (`ServeConfig::accept_timeout`), and a `ConnectionLimit` that sheds the oldest
//! connection whose client is not authenticated yet.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use meshwire_hbone::client::{ClientConnection, PoolConfig};
use meshwire_hbone::server::{ConnectionLimit, ConnectionLimitConfig, ServeConfig};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

fn limit(max_per_key: usize, max_total: usize) -> ConnectionLimit<u8> {
    let mut c = ConnectionLimitConfig::default();
    c.max_per_key = max_per_key;
    c.max_total = max_total;
    ConnectionLimit::new(c)
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut b)).await {
            Ok(Ok(0) | Err(_)) => return true,
            // TLS bytes from the server: keep reading.
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

async fn silent_clients(f: &Fixture, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(TcpStream::connect(f.addr).await.unwrap());
    }
    // The server accepts (and takes slots) in connection order: these are older than any
    // connection made after them.
    out
}

/// A server whose handshakes would wait a minute: only the accept deadline can end them.
fn patient(accept_timeout: Duration) -> ServeConfig {
    let mut sc = ServeConfig::default();
    sc.handshake_timeout = Duration::from_secs(60);
    sc.accept_timeout = accept_timeout;
    sc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_accept_deadline() {
    let f = Fixture::start_with(patient(Duration::from_millis(300))).await;
    let mut silent = TcpStream::connect(f.addr).await.unwrap();
    assert!(closed_by_server(&mut silent, Duration::from_secs(10)).await);
    eventually("timeout counted", || f.server.stats().accept_timeouts == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_covers_the_wait_for_a_handshake_slot() {
    // One handshake slot, held by the first silent client; the second waits for it. The
    // deadline, counted from the accept, closes both.
    let mut sc = patient(Duration::from_millis(400));
    sc.max_concurrent_handshakes = 1;
    let f = Fixture::start_with(sc).await;
    let mut first = TcpStream::connect(f.addr).await.unwrap();
    let mut waiting = TcpStream::connect(f.addr).await.unwrap();
    assert!(closed_by_server(&mut waiting, Duration::from_secs(10)).await);
    assert!(closed_by_server(&mut first, Duration::from_secs(10)).await);
    eventually("both timeouts counted", || {
        f.server.stats().accept_timeouts == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_client_without_a_connect_request_is_closed_at_the_deadline() {
    let f = Fixture::start_with(patient(Duration::from_millis(300))).await;
    let tcp = TcpStream::connect(f.addr).await.unwrap();
    let conn = ClientConnection::connect(
        tcp,
        Arc::new(f.client_config()),
        &meshwire_hbone::Http2Config::client(),
    )
    .await
    .unwrap();
    eventually("handshake completed", || f.server.stats().connections == 1).await;
    eventually("timeout counted", || f.server.stats().accept_timeouts == 1).await;
    eventually("connection closed", || conn.is_closed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_request_in_time_keeps_the_connection() {
    let f = Fixture::start_with(patient(Duration::from_millis(300))).await;
    let pool = f.pool(PoolConfig::default());
    let mut t = open(&pool, &f.key(), PORT_ECHO).await;
    // Well past the deadline, the tunnel still works.
    tokio::time::sleep(Duration::from_millis(600)).await;
    echo_once(&mut t).await;
    assert_eq!(f.server.stats().accept_timeouts, 0);
}

/// A server with `limit` and a patient accept deadline, two silent connections to it, and
/// then a real client that must get through (and echo) within ten seconds.
async fn two_silent_then_a_real_client(limit: ConnectionLimit<u8>) -> (Fixture, Vec<TcpStream>) {
    let f = Fixture::start_limited(patient(Duration::from_secs(60)), limit).await;
    let idle = silent_clients(&f, 2).await;
    let pool = f.pool(PoolConfig::default());
    let mut t = tokio::time::timeout(Duration::from_secs(10), open(&pool, &f.key(), PORT_ECHO))
        .await
        .expect("real client locked out by silent connections");
    echo_once(&mut t).await;
    (f, idle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_sheds_the_oldest_silent_connection_of_its_key() {
    let (f, mut idle) = two_silent_then_a_real_client(limit(2, 100)).await;
    let mut younger = idle.pop().unwrap();
    let mut oldest = idle.pop().unwrap();
    assert!(closed_by_server(&mut oldest, Duration::from_secs(10)).await);
    assert!(!closed_by_server(&mut younger, Duration::from_millis(300)).await);
    assert_eq!(f.server.stats().shed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_bound_sheds_too() {
    let (_f, mut idle) = two_silent_then_a_real_client(limit(100, 2)).await;
    assert!(closed_by_server(&mut idle[0], Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn established_tunnels_are_never_shed() {
    let f = Fixture::start_limited(patient(Duration::from_secs(60)), limit(2, 100)).await;
    let pool = f.pool(PoolConfig::default());
    let mut t = open(&pool, &f.key(), PORT_ECHO).await;
    // Silent clients push the bound again and again: only silent ones go.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(f.addr).await.unwrap());
    }
    for s in idle.iter_mut().take(3) {
        assert!(closed_by_server(s, Duration::from_secs(10)).await);
    }
    echo_once(&mut t).await;
    assert_eq!(f.server.stats().connections, 1);
    assert_eq!(f.server.stats().shed, 3);
    // Once the one silent place left is taken by an established client too, newcomers are
    // refused at once.
    drop(idle);
    let other = f.pool(PoolConfig::default());
    let mut t2 = open(&other, &f.key(), PORT_ECHO).await;
    echo_once(&mut t2).await;
    let mut refused = TcpStream::connect(f.addr).await.unwrap();
    assert!(closed_by_server(&mut refused, Duration::from_secs(10)).await);
    echo_once(&mut t).await;
    echo_once(&mut t2).await;
}
