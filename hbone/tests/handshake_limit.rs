//! `ServeConfig::max_concurrent_handshakes`: clients that never send a ClientHello hold at
//! most that many handshake slots; further connections wait for a free slot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use meshwire_hbone::client::PoolConfig;
use meshwire_hbone::server::ServeConfig;
use tokio::net::TcpStream;

/// A server with `limit` handshake slots and two connected clients that never send a byte.
async fn stalled(limit: usize) -> (Fixture, Vec<TcpStream>) {
    let mut sc = ServeConfig::default();
    sc.max_concurrent_handshakes = limit;
    sc.handshake_timeout = Duration::from_secs(60);
    let f = Fixture::start_with(sc).await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(f.addr).await.unwrap());
    }
    // Let the server accept them and start their handshakes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (f, idle)
}

/// Starts a real client: one echoed byte through a tunnel.
fn echo_client(f: &Fixture) -> tokio::task::JoinHandle<()> {
    let pool = f.pool(PoolConfig::default());
    let key = f.key();
    tokio::spawn(async move {
        let mut t = open(&pool, &key, PORT_ECHO).await;
        echo_once(&mut t).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_fill_the_slots_and_a_client_waits_for_one() {
    let (f, mut idle) = stalled(2).await;
    let mut client = echo_client(&f);
    // Both slots are held by the silent connections: the client's handshake does not start.
    assert!(
        tokio::time::timeout(Duration::from_millis(700), &mut client)
            .await
            .is_err(),
        "a third handshake ran with max_concurrent_handshakes = 2"
    );
    assert_eq!(f.server.stats().connections, 0);
    // Closing one silent connection ends its handshake and frees its slot.
    drop(idle.pop());
    tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .expect("client still waiting after a slot was freed")
        .unwrap();
    let stats = f.server.stats();
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.handshake_failures, 1);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_slot_lets_a_client_through_despite_stalled_handshakes() {
    let (f, idle) = stalled(3).await;
    tokio::time::timeout(Duration::from_secs(10), echo_client(&f))
        .await
        .expect("client blocked although a handshake slot was free")
        .unwrap();
    assert_eq!(f.server.stats().connections, 1);
    assert_eq!(f.server.stats().handshake_failures, 0);
    drop(idle);
}
