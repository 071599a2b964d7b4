//! `tls::incoming_with`: clients that never send a ClientHello hold places of the connection
//! limit only until a newer connection needs one: the oldest unfinished handshake is shed, so
//! a real client gets through.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use meshwire_svid::provider;
use meshwire_svid::test_util::TestPki;
use meshwire_svid::tls::{
    Incoming, IncomingConfig, control_plane_client_config, control_plane_server_config,
    incoming_with,
};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;

struct Setup {
    addr: SocketAddr,
    incoming: Incoming,
    connector: tokio_rustls::TlsConnector,
    /// Connected, silent clients.
    idle: Vec<TcpStream>,
}

/// A listener that holds at most `limit` connections and two connected clients that never
/// send a byte.
async fn stalled(limit: usize) -> Setup {
    let pki = TestPki::new("cluster.local");
    let ca = pki.ca();
    let (chain, key) = ca
        .issue_server_cert(
            &[],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            Duration::from_secs(600),
        )
        .unwrap();
    let server = control_plane_server_config(provider::default(), chain, key, None).unwrap();
    let client =
        control_plane_client_config(provider::default(), ca.root_pem().as_bytes(), None).unwrap();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut limits = IncomingConfig::default();
    limits.limit.max_total = limit;
    limits.handshake_timeout = Duration::from_secs(60);
    let incoming = incoming_with(listener, Arc::new(server), limits);
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // Let the listener accept them and start their handshakes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Setup {
        addr,
        incoming,
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        idle,
    }
}

/// A real client: TLS handshake, then one byte each way.
fn client(s: &Setup) -> tokio::task::JoinHandle<()> {
    let (addr, connector) = (s.addr, s.connector.clone());
    tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"y");
    })
}

/// The next accepted connection answers the client's byte.
async fn answer_one(incoming: &mut Incoming, within: Duration) -> Option<()> {
    let mut conn = tokio::time::timeout(within, incoming.next())
        .await
        .ok()?
        .expect("incoming stream ended")
        .unwrap();
    let mut b = [0u8; 1];
    conn.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"x");
    conn.write_all(b"y").await.unwrap();
    conn.flush().await.unwrap();
    Some(())
}

/// Whether the server closed `idle` (EOF or reset), waiting up to `within`.
async fn closed_by_server(idle: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(within, idle.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sheds_the_oldest_stalled_handshake_when_the_limit_is_full() {
    let mut s = stalled(2).await;
    let c = client(&s);
    answer_one(&mut s.incoming, Duration::from_secs(10))
        .await
        .expect("real client locked out by stalled handshakes");
    tokio::time::timeout(Duration::from_secs(10), c)
        .await
        .unwrap()
        .unwrap();
    // The oldest silent connection made room; the younger one is still open.
    let mut younger = s.idle.pop().unwrap();
    let mut oldest = s.idle.pop().unwrap();
    assert!(closed_by_server(&mut oldest, Duration::from_secs(10)).await);
    assert!(!closed_by_server(&mut younger, Duration::from_millis(300)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_established_connection_is_never_shed() {
    let mut s = stalled(3).await;
    let c = client(&s);
    let mut conn = tokio::time::timeout(Duration::from_secs(10), s.incoming.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Two more silent clients push the limit: the silent ones go, the TLS one stays.
    for _ in 0..2 {
        s.idle.push(TcpStream::connect(s.addr).await.unwrap());
    }
    for mut old in s.idle.drain(..2) {
        assert!(closed_by_server(&mut old, Duration::from_secs(10)).await);
    }
    let mut b = [0u8; 1];
    conn.read_exact(&mut b).await.unwrap();
    conn.write_all(b"y").await.unwrap();
    conn.flush().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), c)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_slot_lets_a_client_through_despite_stalled_handshakes() {
    let mut s = stalled(3).await;
    let c = client(&s);
    answer_one(&mut s.incoming, Duration::from_secs(10))
        .await
        .expect("client blocked although a handshake slot was free");
    tokio::time::timeout(Duration::from_secs(10), c)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.idle.len(), 2);
}

#[test]
fn documented_defaults() {
    let d = IncomingConfig::default();
    assert_eq!(d.handshake_timeout, Duration::from_secs(10));
    assert_eq!(
        d.limit,
        meshwire_svid::tls::ConnectionLimitConfig::default()
    );
}
