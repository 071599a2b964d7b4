//! Loopback tests over real TLS: data integrity, half-close, refusals, identities, and
//! splicing a tunnel with a socket (live byte counts).

// Helpers outside #[test] functions: a failed step should abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use meshwire_hbone::client::{ClientConnection, ClientError, PoolConfig, PoolKey};
use meshwire_hbone::headers::WorkloadBaggage;
use meshwire_hbone::tunnel::{CopyCounters, CopyDirection, CopyObserver};
use meshwire_hbone::{Http2Config, Rejection};
use meshwire_svid::SpiffeId;
use meshwire_svid::verify::PeerVerifyError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn round_trip_small_and_odd_sizes() {
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    let mut t = f.open(&pool, PORT_ECHO).await;
    assert_eq!(t.response().unwrap().status, 200);
    for size in [1usize, 2, 100, 16_383, 16_384, 16_385, 100_000, 1_048_577] {
        let mut data = vec![0u8; size];
        pattern(size as u64, &mut data);
        echo(&mut t, &data).await;
    }
    t.shutdown().await.unwrap();
    let mut rest = Vec::new();
    t.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    // The server saw our identity and our request.
    assert_eq!(f.state.peers.lock().unwrap()[0], f.client_id);
    assert_eq!(
        f.state.requests.lock().unwrap()[0].authority.port(),
        PORT_ECHO
    );
}

#[tokio::test]
async fn response_baggage_and_request_headers_arrive() {
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    let mut source = WorkloadBaggage::default();
    source.namespace = Some("client-ns".into());
    let req = Fixture::request(PORT_BAGGAGE)
        .with_forwarded(meshwire_hbone::headers::Forwarded::new(
            meshwire_hbone::headers::ForwardedElement::for_client("10.1.2.3:4567".parse().unwrap())
                .with_host("svc.ns.svc.cluster.local"),
        ))
        .with_traceparent(meshwire_hbone::headers::TraceParent::random(
            &mut rand::rng(),
        ))
        .with_baggage(source.to_baggage());
    let t = pool.connect(&f.key(), &req).await.unwrap();
    let resp = t.response().unwrap();
    let wb = WorkloadBaggage::from_baggage(resp.baggage.as_ref().unwrap());
    assert_eq!(wb.namespace.as_deref(), Some("server-ns"));
    let seen = f.state.requests.lock().unwrap()[0].clone();
    assert_eq!(seen, req);
}

/// Transfers `len` bytes up and checks the SHA-256 the server computed.
async fn upload_checked(len: u64) {
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    let mut t = f.open(&pool, PORT_HASH).await;
    let sent = write_pattern(&mut t, len).await.unwrap();
    t.shutdown().await.unwrap();
    let mut answer = String::new();
    t.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, format!("{sent} {len}"));
}

/// 256 MiB up through one tunnel, checked by SHA-256 on both ends (ring's assembly
/// SHA-256 keeps this around a second even in debug builds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_256_mib_checked_by_hash() {
    upload_checked(256 * 1024 * 1024).await;
}

#[tokio::test]
async fn download_checked_by_hash() {
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    let mut t = f.open(&pool, PORT_DOWNLOAD).await;
    let (got, n) = hash_reader(&mut t).await.unwrap();
    let mut sink = tokio::io::sink();
    let expect = write_pattern(&mut sink, DOWNLOAD_LEN).await.unwrap();
    assert_eq!(n, DOWNLOAD_LEN);
    assert_eq!(got, expect);
}

#[tokio::test]
async fn half_close_from_client() {
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    let mut t = f.open(&pool, PORT_HASH).await;
    t.write_all(b"hello").await.unwrap();
    // Half-close: the server only answers after EOF, and the answer still arrives.
    t.shutdown().await.unwrap();
    assert!(t.write_all(b"more").await.is_err(), "write after shutdown");
    let mut answer = String::new();
    t.read_to_string(&mut answer).await.unwrap();
    assert_eq!(
        answer,
        format!(
            "{} 5",
            hex::encode(ring::digest::digest(&ring::digest::SHA256, b"hello"))
        )
    );
}

#[tokio::test]
async fn half_close_from_server() {
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    let mut t = f.open(&pool, PORT_DOWNLOAD).await;
    // The server sends everything and shuts down its side before reading anything.
    let (_, n) = hash_reader(t.recv_half()).await.unwrap();
    assert_eq!(n, DOWNLOAD_LEN);
    // Our side is still open: the server keeps reading until our EOF.
    let data = [7u8; 100_000];
    t.write_all(&data).await.unwrap();
    t.shutdown().await.unwrap();
    let expect = hex::encode(ring::digest::digest(&ring::digest::SHA256, &data));
    let received = &f.state.received;
    eventually("server never saw our EOF", || {
        !received.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        received.lock().unwrap()[0],
        (expect, 100_000),
        "what the server read after its half-close"
    );
}

#[tokio::test]
async fn parked_server_side_half_close_reaches_client() {
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    let mut t = f.open(&pool, PORT_PARK).await;
    let mut server_side = f.take_parked_one().await;
    server_side.write_all(b"bye").await.unwrap();
    server_side.shutdown().await.unwrap();
    let mut got = [0u8; 3];
    t.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"bye");
    assert_eq!(
        t.read(&mut got).await.unwrap(),
        0,
        "EOF after server shutdown"
    );
    // Client to server still flows.
    t.write_all(b"still open").await.unwrap();
    t.shutdown().await.unwrap();
    let mut rest = Vec::new();
    server_side.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"still open");
}

#[tokio::test]
async fn handler_refusals_are_typed_errors() {
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    let cases = [
        (PORT_UNAUTHORIZED, Rejection::Unauthorized, 401),
        (PORT_UNAVAILABLE, Rejection::ServiceUnavailable, 503),
        (PORT_DROP, Rejection::ServiceUnavailable, 503),
    ];
    for (port, want, code) in cases {
        let err = pool
            .connect(&f.key(), &Fixture::request(port))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Rejected(r) if r == want),
            "port {port}: {err:?}"
        );
        assert_eq!(err.status().unwrap().as_u16(), code);
    }
    // Refusals do not break the connection.
    let stats = pool.stats();
    assert_eq!(stats.opened, 1);
    let mut t = f.open(&pool, PORT_ECHO).await;
    echo_once(&mut t).await;
    assert_eq!(pool.stats().opened, 1);
}

#[tokio::test]
async fn wrong_destination_identity_fails_handshake() {
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    let key = PoolKey::new(f.client_id.clone(), [id("other-ns", "other")], f.addr, None);
    let err = pool
        .connect(&key, &Fixture::request(PORT_ECHO))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
    let tls = err.tls_error().expect("a rustls error");
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = tls else {
        panic!("unexpected TLS error {tls:?}");
    };
    let verify = other.0.downcast_ref::<PeerVerifyError>().unwrap();
    assert!(
        matches!(verify, PeerVerifyError::IdentityNotAllowed { peer, .. } if *peer == f.server_id),
        "{verify:?}"
    );
    assert_eq!(f.state.handled.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(pool.stats().dial_failures, 1);
    assert_eq!(pool.stats().opened, 0);
}

#[tokio::test]
async fn untrusted_client_certificate_is_refused() {
    let f = Fixture::start().await;
    // Same trust domain and identity, but signed by a CA the server does not trust.
    let rogue = Pki::new();
    let tls = f.pki.client_config(&rogue.svid(&f.client_id), &f.server_id);
    // Serve one connection directly to see the server's error.
    let (addr, served) = serve_one(&f.server).await;
    // TLS 1.3: the client's handshake completes before the server checks the client
    // certificate, so the refusal shows up as an alert on the first use.
    let result = open_unpooled(addr, tls, &Http2Config::default(), PORT_ECHO).await;
    let err = result.unwrap_err();
    assert!(matches!(err, ClientError::Http2(_)), "{err:?}");
    assert!(err.to_string().contains("alert"), "{err}");

    let server_err = served.await.unwrap().unwrap_err();
    assert!(
        matches!(
            server_err.tls_error(),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature | rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{server_err:?}"
    );
    assert_eq!(f.server.stats().handshake_failures, 1);
    assert_eq!(f.server.stats().connections, 0);
    assert_eq!(f.state.handled.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn client_from_other_trust_domain_is_refused() {
    let f = Fixture::start().await;
    // Trusted root set includes the other domain's CA on the client side only; the
    // server accepts only its own trust domain.
    let other = meshwire_svid::test_util::TestPki::new("other.example");
    let other_id = SpiffeId::new("spiffe://other.example/ns/a/sa/b").unwrap();
    let tls = f.pki.client_config(&other.svid(&other_id), &f.server_id);
    let result = open_unpooled(f.addr, tls, &Http2Config::default(), PORT_ECHO).await;
    // TLS 1.3: the client finishes first; the server's refusal arrives as an alert.
    let err = result.unwrap_err();
    assert!(matches!(err, ClientError::Http2(_)), "{err:?}");
    assert!(err.to_string().contains("alert"), "{err}");
    // The server refused it in the handshake (the client's root is unknown to it).
    eventually("no handshake failure", || {
        f.server.stats().handshake_failures > 0
    })
    .await;
    assert_eq!(f.server.stats().connections, 0);
    assert_eq!(f.state.handled.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unpooled_connection_reports_peer_identity() {
    let f = Fixture::start().await;
    let tcp = TcpStream::connect(f.addr).await.unwrap();
    let conn = ClientConnection::connect(tcp, Arc::new(f.client_config()), &Http2Config::default())
        .await
        .unwrap();
    assert_eq!(conn.peer_identity(), Some(&f.server_id));
    let mut t = conn.open(&Fixture::request(PORT_ECHO)).await.unwrap();
    echo(&mut t, b"ping").await;
}

#[tokio::test]
async fn server_requires_a_client_identity_even_if_tls_config_does_not() {
    let f = Fixture::start().await;
    let provider = provider();
    // A server configuration that does not ask for client certificates at all.
    let svid = f.pki.svid(&f.server_id);
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(svid.cert_chain().to_vec(), svid.private_key())
        .unwrap();
    server_tls.alpn_protocols = vec![b"h2".to_vec()];
    let server = meshwire_hbone::server::Server::new(
        Arc::new(server_tls),
        handler(f.state.clone()),
        meshwire_hbone::server::ServeConfig::default(),
    );
    let (addr, served) = serve_one(&server).await;
    // A client without a certificate.
    let verifier = meshwire_svid::verify::SpiffeServerVerifier::builder(provider.clone())
        .roots(f.pki.roots.clone())
        .expect_ids([f.server_id.clone()])
        .build_server_verifier()
        .unwrap();
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![b"h2".to_vec()];
    let result = open_unpooled(addr, client_tls, &Http2Config::default(), PORT_ECHO).await;
    assert!(result.is_err());
    let r = served.await.unwrap();
    assert!(
        matches!(r, Err(meshwire_hbone::server::ServerError::NoPeerIdentity)),
        "{r:?}"
    );
    assert_eq!(f.state.handled.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn extreme_timer_settings_work_instead_of_panicking() {
    // "Never" spelled as the largest Duration, on both ends.
    let mut sc = meshwire_hbone::server::ServeConfig::default();
    sc.http2.keepalive_interval = Some(Duration::MAX);
    sc.http2.keepalive_timeout = Duration::MAX;
    sc.handshake_timeout = Duration::MAX;
    let f = Fixture::start_with(sc).await;
    let mut pc = PoolConfig::default();
    pc.http2.keepalive_interval = Some(Duration::MAX);
    pc.http2.keepalive_timeout = Duration::MAX;
    pc.idle_timeout = Duration::MAX;
    pc.connect_timeout = Duration::MAX;
    pc.handshake_timeout = Duration::MAX;
    let pool = f.pool(pc);
    for _ in 0..2 {
        let mut t = f.open(&pool, PORT_ECHO).await;
        echo(&mut t, b"ping").await;
        drop(t);
        // Let the connection task see the tunnel go (it computes the idle deadline then).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = pool.stats();
    assert_eq!((s.opened, s.reused, s.closed), (1, 1, 0), "{s:?}");
    // Keepalive without a timeout bound on an unpooled connection too.
    let mut h2 = Http2Config::default();
    h2.keepalive_interval = Some(Duration::MAX);
    h2.keepalive_timeout = Duration::MAX;
    let tcp = TcpStream::connect(f.addr).await.unwrap();
    let conn = ClientConnection::connect(tcp, Arc::new(f.client_config()), &h2)
        .await
        .unwrap();
    let mut t = conn.open(&Fixture::request(PORT_ECHO)).await.unwrap();
    echo_once(&mut t).await;
    assert!(!conn.is_closed());
}

/// A tunnel to a parked server-side tunnel, and a connected loopback TCP pair.
async fn tunnel_and_socket_pair(
    f: &Fixture,
) -> (
    meshwire_hbone::Tunnel,
    meshwire_hbone::Tunnel,
    TcpStream,
    TcpStream,
) {
    let pool = f.pool(PoolConfig::default());
    let t = f.open(&pool, PORT_PARK).await;
    let far = f.take_parked_one().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (io, _) = listener.accept().await.unwrap();
    (t, far, app, io)
}

/// Writes `data` into `from` and asserts that `to` reads exactly that.
async fn carry(
    from: &mut (impl AsyncWriteExt + Unpin),
    to: &mut (impl AsyncReadExt + Unpin),
    data: &[u8],
) {
    from.write_all(data).await.unwrap();
    let mut got = vec![0u8; data.len()];
    to.read_exact(&mut got).await.unwrap();
    assert_eq!(got, data);
}

#[tokio::test]
async fn copy_reports_bytes_while_they_flow_and_keeps_half_closes() {
    let f = Fixture::start().await;
    let (t, mut far, mut app, io) = tunnel_and_socket_pair(&f).await;
    let counters = Arc::new(CopyCounters::new());
    let copy = tokio::spawn(meshwire_hbone::tunnel::copy_bidirectional_with(
        t,
        io,
        counters.clone(),
    ));

    // Socket → tunnel: counted by the time the far end has it, while the copy runs.
    carry(&mut app, &mut far, &[3u8; 300_000]).await;
    eventually("to_tunnel counted", || counters.to_tunnel() == 300_000).await;
    assert_eq!(counters.from_tunnel(), 0);

    // Tunnel → socket.
    carry(&mut far, &mut app, &[4u8; 50_000]).await;
    eventually("from_tunnel counted", || counters.from_tunnel() == 50_000).await;
    assert!(!copy.is_finished());

    // The socket's half-close reaches the far end, which can still answer.
    app.shutdown().await.unwrap();
    let mut rest = Vec::new();
    far.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    far.write_all(b"bye").await.unwrap();
    far.shutdown().await.unwrap();
    let mut rest = Vec::new();
    app.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"bye");

    let stats = tokio::time::timeout(Duration::from_secs(5), copy)
        .await
        .expect("copy did not end after both half-closes")
        .unwrap()
        .unwrap();
    assert_eq!((stats.to_tunnel, stats.from_tunnel), (300_000, 50_003));
    assert_eq!(counters.stats(), stats);
}

/// Records every report, to see that a large transfer is reported piece by piece.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<(CopyDirection, u64)>>);

impl CopyObserver for Recorder {
    fn carried(&self, direction: CopyDirection, bytes: u64) {
        self.0.lock().unwrap().push((direction, bytes));
    }
}

#[tokio::test]
async fn copy_reports_large_transfers_in_pieces_and_keeps_counts_after_an_error() {
    const LEN: usize = 8 * 1024 * 1024;
    let f = Fixture::start().await;
    let (t, mut far, mut app, io) = tunnel_and_socket_pair(&f).await;
    let recorder = Recorder::default();
    let copy = meshwire_hbone::tunnel::copy_bidirectional_with(t, io, &recorder);
    let drive = async {
        let data = vec![9u8; LEN];
        let mut got = vec![0u8; LEN];
        let (w, r) = tokio::join!(app.write_all(&data), far.read_exact(&mut got));
        w.unwrap();
        r.unwrap();
        assert_eq!(got, data);
        far.write_all(b"partial").await.unwrap();
        let mut b = [0u8; 7];
        app.read_exact(&mut b).await.unwrap();
        // The far end aborts the stream: the copy fails, both directions end.
        far.reset(h2::Reason::INTERNAL_ERROR);
        let mut rest = Vec::new();
        let _ = app.read_to_end(&mut rest).await;
        rest
    };
    let (result, rest) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(copy, drive) })
            .await
            .expect("copy did not end after the reset");
    assert!(result.is_err(), "{result:?}");
    assert!(rest.is_empty());
    let reports = recorder.0.lock().unwrap();
    let sum = |d| -> u64 { reports.iter().filter(|r| r.0 == d).map(|r| r.1).sum() };
    assert_eq!(sum(CopyDirection::ToTunnel), LEN as u64);
    assert_eq!(sum(CopyDirection::FromTunnel), 7);
    let pieces = reports
        .iter()
        .filter(|r| r.0 == CopyDirection::ToTunnel)
        .count();
    assert!(pieces > 8, "8 MiB reported in {pieces} pieces");
    assert!(reports.iter().all(|r| r.1 > 0));
}
