//! Two-sided loopback: a rustls client and server, each with an SVID issued by the CA,
//! complete a TLS 1.3 handshake over TCP and see each other's SPIFFE ID.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use meshwire_svid::rustls;
use meshwire_svid::rustls::pki_types::ServerName;
use meshwire_svid::{
    CaConfig, CertificateAuthority, IdentityPolicy, SpiffeId, TrustBundleSet, TrustDomain,
    client_config, peer_spiffe_id, provider, server_config,
};
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
    let td = TrustDomain::new("cluster.local").unwrap();
    let ca = CertificateAuthority::generate_root(&td, CaConfig::default()).unwrap();
    let client = SpiffeId::from_istio(&td, "default", "sleep").unwrap();
    let server = SpiffeId::from_istio(&td, "default", "httpbin").unwrap();
    let client_svid = ca.issue(&client, Duration::from_secs(3600)).unwrap();
    let server_svid = ca.issue(&server, Duration::from_secs(3600)).unwrap();
    let roots = TrustBundleSet::from(ca.bundle());
    let client_cfg = client_config(
        provider::default(),
        &client_svid,
        &roots,
        IdentityPolicy::exact([SpiffeId::new(expected_server).unwrap()]),
    )
    .unwrap();
    let server_cfg = server_config(
        provider::default(),
        &server_svid,
        &roots,
        IdentityPolicy::SameTrustDomain(td),
    )
    .unwrap();
    Setup {
        client,
        server,
        client_cfg: Arc::new(client_cfg),
        server_cfg: Arc::new(server_cfg),
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
    let other_td = TrustDomain::new("other.org").unwrap();
    let other = CertificateAuthority::generate_root(&other_td, CaConfig::default()).unwrap();
    let stranger = other
        .issue(
            &SpiffeId::from_istio(&other_td, "x", "y").unwrap(),
            Duration::from_secs(600),
        )
        .unwrap();
    let verifier = meshwire_svid::dangerous::AcceptAnySpiffeServer::new(provider::default());
    let cfg = meshwire_svid::client_config_with_verifier(provider::default(), &stranger, verifier)
        .unwrap();

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
