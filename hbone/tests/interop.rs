//! Interop with an independent HTTP/2 implementation (hyper): a hyper CONNECT client
//! through our server, and our client through a hyper CONNECT server. TLS on both ends
//! comes from `svid` configurations.

// Helpers outside #[test] functions: a failed step should abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwire_hbone::Rejection;
use meshwire_hbone::client::{ClientError, PoolConfig, PoolKey};
use meshwire_svid::IdentityPolicy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A hyper HTTP/2 client connection over rustls to `addr`.
async fn hyper_client(f: &Fixture) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tls = meshwire_svid::tls::client_config(
        provider(),
        &f.pki.svid(&f.client_id),
        &f.pki.roots,
        IdentityPolicy::exact([f.server_id.clone()]),
    )
    .unwrap();
    let tcp = TcpStream::connect(f.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn connect_request(authority: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(authority)
        .header("baggage", "k8s.namespace.name=hyper")
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn hyper_client_tunnels_through_our_server() {
    let f = Fixture::start().await;
    let mut send = hyper_client(&f).await;
    let resp = send
        .send_request(connect_request(&format!("127.0.0.1:{PORT_HASH}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    let sent = write_pattern(&mut io, 4 * 1024 * 1024).await.unwrap();
    io.shutdown().await.unwrap();
    let mut answer = String::new();
    io.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, format!("{sent} {}", 4 * 1024 * 1024));
    let req = f.state.requests.lock().unwrap()[0].clone();
    assert_eq!(
        req.baggage.unwrap().get("k8s.namespace.name"),
        Some("hyper")
    );
    assert_eq!(f.state.peers.lock().unwrap()[0], f.client_id);

    // Several tunnels on the same hyper connection.
    for _ in 0..3 {
        let resp = send
            .send_request(connect_request(&format!("127.0.0.1:{PORT_ECHO}")))
            .await
            .unwrap();
        let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
        io.write_all(b"abc").await.unwrap();
        let mut b = [0u8; 3];
        io.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"abc");
    }
}

#[tokio::test]
async fn our_server_answers_hyper_with_hbone_statuses() {
    let f = Fixture::start().await;
    let mut send = hyper_client(&f).await;
    let status = |r: Response<hyper::body::Incoming>| r.status().as_u16();
    let r = send
        .send_request(connect_request(&format!("127.0.0.1:{PORT_UNAUTHORIZED}")))
        .await
        .unwrap();
    assert_eq!(status(r), 401);
    let r = send
        .send_request(connect_request(&format!("127.0.0.1:{PORT_UNAVAILABLE}")))
        .await
        .unwrap();
    assert_eq!(status(r), 503);
    // Port 0 is not a valid target: the server answers 400 without the handler.
    let r = send
        .send_request(connect_request("example.com:0"))
        .await
        .unwrap();
    assert_eq!(status(r), 400);
    // Not CONNECT.
    let get = Request::builder()
        .method(Method::GET)
        .uri("https://127.0.0.1/")
        .body(Empty::new())
        .unwrap();
    let r = send.send_request(get).await.unwrap();
    assert_eq!(status(r), 400);
    assert_eq!(f.server.stats().malformed_requests, 2);
    assert_eq!(f.state.handled.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A hyper HTTP/2 server over rustls: CONNECT to port 401 is refused, anything else is
/// answered 200 and then hashed like `PORT_HASH`.
async fn hyper_server(pki: &Pki, server_id: &meshwire_svid::SpiffeId) -> std::net::SocketAddr {
    let tls = pki.server_tls(server_id);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
            tokio::spawn(async move {
                let tls = acceptor.accept(tcp).await.unwrap();
                let service = service_fn(|mut req: Request<hyper::body::Incoming>| async move {
                    assert_eq!(req.method(), Method::CONNECT);
                    let port = req.uri().port_u16().unwrap_or(0);
                    if port == PORT_UNAUTHORIZED {
                        let mut r = Response::new(Empty::<Bytes>::new());
                        *r.status_mut() = StatusCode::UNAUTHORIZED;
                        return Ok::<_, hyper::Error>(r);
                    }
                    tokio::spawn(async move {
                        let upgraded = hyper::upgrade::on(&mut req).await.unwrap();
                        let mut io = TokioIo::new(upgraded);
                        let (h, n) = hash_reader(&mut io).await.unwrap();
                        io.write_all(format!("{h} {n}").as_bytes()).await.unwrap();
                        io.shutdown().await.unwrap();
                    });
                    let mut r = Response::new(Empty::<Bytes>::new());
                    r.headers_mut().insert(
                        "baggage",
                        http::HeaderValue::from_static("k8s.namespace.name=hyper-server"),
                    );
                    Ok(r)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn our_client_tunnels_through_a_hyper_server() {
    let pki = Pki::new();
    let server_id = id("hyper", "server");
    let client_id = id("client-ns", "client");
    let addr = hyper_server(&pki, &server_id).await;
    let pool = meshwire_hbone::client::Pool::new(
        meshwire_hbone::client::TcpConnector::new(),
        pki.client_tls(&client_id),
        PoolConfig::default(),
    );
    let key = PoolKey::new(client_id, [server_id], addr, None);
    for _ in 0..3 {
        let mut t = pool
            .connect(&key, &Fixture::request(PORT_HASH))
            .await
            .unwrap();
        let resp = t.response().unwrap();
        assert_eq!(
            resp.baggage.as_ref().unwrap().get("k8s.namespace.name"),
            Some("hyper-server")
        );
        let sent = write_pattern(&mut t, 4 * 1024 * 1024 + 7).await.unwrap();
        t.shutdown().await.unwrap();
        let mut answer = String::new();
        t.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, format!("{sent} {}", 4 * 1024 * 1024 + 7));
    }
    assert_eq!(pool.stats().opened, 1);
    let err = pool
        .connect(&key, &Fixture::request(PORT_UNAUTHORIZED))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Rejected(Rejection::Unauthorized)),
        "{err:?}"
    );
}
