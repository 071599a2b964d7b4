//! Two-sided loopback: a rustls client and server, each with an SVID issued by the CA,
//! complete a TLS 1.3 handshake over TCP and see each other's SPIFFE ID.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use meshwire_svid::rustls::pki_types::ServerName;
use meshwire_svid::test_util::TestPki;
use meshwire_svid::tls::peer_spiffe_id;
use meshwire_svid::verify::dangerous::AcceptAnySpiffeServer;
use meshwire_svid::{IdentityPolicy, SpiffeId, provider, rustls, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct Setup {
    client: SpiffeId,
    server: SpiffeId,
    client_cfg: Arc<rustls::ClientConfig>,
    server_cfg: Arc<rustls::ServerConfig>,
}

fn setup(expected_server: &str) -> Setup {
    let pki = TestPki::new("cluster.local");
    let client = pki.istio_id("default", "sleep");
    let server = pki.istio_id("default", "httpbin");
    let expected = IdentityPolicy::exact([SpiffeId::new(expected_server).unwrap()]);
    Setup {
        client_cfg: Arc::new(pki.client_config(&client, expected)),
        server_cfg: Arc::new(pki.server_config(&server)),
        client,
        server,
    }
}

#[tokio::test]
async fn mutual_tls13_handshake_sees_both_identities() {
    let s = setup("spiffe://cluster.local/ns/default/sa/httpbin");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(s.server_cfg.clone());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let (_, conn) = tls.get_ref();
        let peer = peer_spiffe_id(conn.peer_certificates().unwrap()).unwrap();
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        assert!(conn.server_name().is_none(), "client must not send SNI");
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(b"pong").await.unwrap();
        tls.shutdown().await.unwrap();
        (peer, buf)
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = TlsConnector::from(s.client_cfg.clone());
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let (_, conn) = tls.get_ref();
    let server_id = peer_spiffe_id(conn.peer_certificates().unwrap()).unwrap();
    let suite = conn.negotiated_cipher_suite().unwrap().suite();
    assert!(provider::ALLOWED_SUITES.contains(&suite), "{suite:?}");
    tls.write_all(b"ping").await.unwrap();
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, b"pong");
    let (client_seen, ping) = server.await.unwrap();
    assert_eq!(&ping, b"ping");
    assert_eq!(server_id, s.server);
    assert_eq!(client_seen, s.client);
}

#[tokio::test]
async fn client_refuses_unexpected_server_identity() {
    let s = setup("spiffe://cluster.local/ns/default/sa/somebody-else");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(s.server_cfg.clone());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.is_ok()
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = TlsConnector::from(s.client_cfg.clone());
    let err = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("IdentityNotAllowed"), "{err}");
    assert!(
        !server.await.unwrap(),
        "server must not complete the handshake"
    );
}

#[tokio::test]
async fn server_refuses_client_from_other_trust_domain() {
    let s = setup("spiffe://cluster.local/ns/default/sa/httpbin");
    // A client whose SVID comes from a different CA and trust domain; it accepts any server
    // so that only the server's check can fail.
    let other = TestPki::new("other.org");
    let stranger = other.svid(&other.istio_id("x", "y"));
    let verifier = AcceptAnySpiffeServer::new(provider::default());
    let cfg = tls::client_config_with_verifier(provider::default(), &stranger, verifier).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(s.server_cfg.clone());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor
            .accept(tcp)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = TlsConnector::from(Arc::new(cfg));
    // In TLS 1.3 the client may finish before the server rejects its certificate; then the
    // first read fails with the server's alert.
    if let Ok(mut tls) = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
    {
        let mut buf = Vec::new();
        assert!(tls.read_to_end(&mut buf).await.is_err() || buf.is_empty());
    }
    let err = server.await.unwrap().unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}
