//! Malformed input on a pod's HBONE port (15008): a truncated TLS record, HTTP/2 garbage
//! after a good handshake, and CONNECT headers over the header-list bound. Each ends with
//! a clear error and a counter, never a panic, and the pod keeps serving real clients.

use super::*;
use tokio_rustls::TlsConnector;

/// A mutual-TLS connection to `hbone` as `CLIENT_ID`, with no HTTP/2 on it yet.
async fn tls_to(env: &Env, hbone: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tls = env.pki.client_config(
        &SpiffeId::new(CLIENT_ID).unwrap(),
        IdentityPolicy::exact([SpiffeId::new(SERVER_ID).unwrap()]),
    );
    let tcp = TcpStream::connect(hbone).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("server.shop").unwrap();
    TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// A real client still gets through to the pod's app.
async fn still_serves(env: &Env, hbone: SocketAddr, app: SocketAddr) {
    let conn = raw_client(&env.pki, CLIENT_ID, SERVER_ID, hbone)
        .await
        .unwrap();
    assert_eq!(echo_through(&conn, app, b"ok").await, b"server-1:ok");
}

fn dropped(env: &Env, reason: &str) -> u64 {
    value(
        &env.metrics_text(),
        "meshwire_connections_dropped_total",
        &[("listener", "hbone"), ("reason", reason)],
    )
}

#[tokio::test]
async fn a_truncated_tls_record_is_a_counted_handshake_failure() {
    let mut env = Env::new().await;
    env.pod("server-1", "shop", "server", [127, 0, 0, 81], true)
        .await;
    let app = echo_app([127, 0, 0, 81], "server-1:").await;
    let hbone = env.listener("server-1", ListenerKind::InboundHbone);
    // A handshake record header announcing 512 bytes, a ClientHello's first bytes, then EOF.
    let mut s = TcpStream::connect(hbone).await.unwrap();
    s.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .await
    .unwrap();
    s.shutdown().await.unwrap();
    assert!(closed_by_proxy(&mut s, Duration::from_secs(10)).await);
    wait_for(|| env.metrics.tls_handshake_failures.get() == 1).await;
    still_serves(&env, hbone, app).await;
}

#[tokio::test]
async fn http2_garbage_after_the_handshake_is_a_counted_protocol_error() {
    let mut env = Env::new().await;
    env.pod("server-1", "shop", "server", [127, 0, 0, 82], true)
        .await;
    let app = echo_app([127, 0, 0, 82], "server-1:").await;
    let hbone = env.listener("server-1", ListenerKind::InboundHbone);

    // Not the HTTP/2 connection preface at all.
    let mut s = tls_to(&env, hbone).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    s.flush().await.unwrap();
    assert!(closed_by_proxy(&mut s, Duration::from_secs(10)).await);
    wait_for(|| dropped(&env, "protocol error") == 1).await;

    // The preface, then a DATA frame on stream 0 (a connection error in HTTP/2).
    let mut s = tls_to(&env, hbone).await;
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // SETTINGS, empty
    bytes.extend_from_slice(&[0, 0, 4, 0x0, 0, 0, 0, 0, 0, b'j', b'u', b'n', b'k']);
    s.write_all(&bytes).await.unwrap();
    s.flush().await.unwrap();
    assert!(closed_by_proxy(&mut s, Duration::from_secs(10)).await);
    wait_for(|| dropped(&env, "protocol error") == 2).await;

    assert_eq!(env.metrics.tls_handshake_failures.get(), 0);
    still_serves(&env, hbone, app).await;
}

#[tokio::test]
async fn oversized_connect_headers_are_refused_and_the_pod_still_serves() {
    let mut env = Env::new().await;
    env.pod("server-1", "shop", "server", [127, 0, 0, 83], true)
        .await;
    let app = echo_app([127, 0, 0, 83], "server-1:").await;
    let hbone = env.listener("server-1", ListenerKind::InboundHbone);

    let tls = tls_to(&env, hbone).await;
    let mut builder = h2::client::Builder::new();
    // Let the client send what the server's bound refuses.
    builder.max_header_list_size(16 * 1024 * 1024);
    let (client, conn) = builder.handshake::<_, bytes::Bytes>(tls).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(app.to_string())
        .header("x-padding", "p".repeat(256 * 1024))
        .body(())
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let (response, _send) = client.send_request(request, false)?;
        response.await
    })
    .await
    .expect("no answer to an oversized CONNECT");
    println!("oversized CONNECT: {answer:?}");
    match answer {
        Ok(r) => assert_ne!(
            r.status(),
            http::StatusCode::OK,
            "oversized CONNECT accepted"
        ),
        Err(e) => assert!(e.is_reset() || e.is_go_away() || e.is_io(), "{e}"),
    }
    wait_for(|| dropped(&env, "protocol error") == 1).await;
    still_serves(&env, hbone, app).await;
}
