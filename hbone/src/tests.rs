//! HTTP/2 plumbing tests over an in-memory duplex (no TLS): stream reset mapping and
//! keepalive, with a bare `h2` server on the other end.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::client::ClientConnection;
use crate::config::Http2Config;
use crate::request::ConnectRequest;

type Respond = h2::server::SendResponse<Bytes>;

/// Starts a bare h2 server on one end of a duplex; each request is handed to `on_req`.
/// Returns the client side and a switch that freezes the server (stops polling its
/// connection while keeping the transport open).
fn bare_server(
    on_req: impl Fn(http::Request<h2::RecvStream>, Respond) + Send + 'static,
) -> (DuplexStream, tokio::sync::oneshot::Sender<()>) {
    let (client, server) = tokio::io::duplex(1024 * 1024);
    let (freeze_tx, mut freeze_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut conn = h2::server::handshake(server).await.unwrap();
        loop {
            let frozen = tokio::select! {
                _ = &mut freeze_rx => true,
                r = conn.accept() => match r {
                    Some(Ok((req, respond))) => {
                        on_req(req, respond);
                        false
                    }
                    _ => return,
                },
            };
            if frozen {
                // Keep the connection (and the transport) alive, never poll it.
                let _conn = conn;
                std::future::pending::<()>().await;
                return;
            }
        }
    });
    (client, freeze_tx)
}

fn request() -> ConnectRequest {
    ConnectRequest::new("10.0.0.1:80".parse().unwrap())
}

async fn reset_after_ok(reason: Reason) -> (io::Result<usize>, io::Result<()>) {
    let (io, _freeze) = bare_server(move |_req, mut respond| {
        let mut send = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        send.send_data(Bytes::from_static(b"hi"), false).unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            send.send_reset(reason);
        });
    });
    let conn = ClientConnection::handshake(io, &Http2Config::default())
        .await
        .unwrap();
    let mut t = conn.open(&request()).await.unwrap();
    let mut b = [0u8; 2];
    t.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"hi");
    let read = t.read(&mut b).await;
    // Writes after the reset fail rather than buffer.
    let write = async {
        for _ in 0..10 {
            t.write_all(b"x").await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
    .await;
    (read, write)
}

#[tokio::test]
async fn reset_no_error_and_cancel_read_as_eof() {
    for reason in [Reason::NO_ERROR, Reason::CANCEL] {
        let (read, write) = reset_after_ok(reason).await;
        assert_eq!(read.unwrap(), 0, "{reason:?}");
        assert_eq!(write.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}

#[tokio::test]
async fn reset_stream_closed_is_broken_pipe() {
    let (read, _) = reset_after_ok(Reason::STREAM_CLOSED).await;
    assert_eq!(read.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn other_resets_are_connection_reset() {
    let (read, write) = reset_after_ok(Reason::INTERNAL_ERROR).await;
    assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(write.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn end_stream_is_eof_and_shutdown_sends_end_stream() {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let done_tx = std::sync::Mutex::new(Some(done_tx));
    let (io, _freeze) = bare_server(move |req, mut respond| {
        let mut send = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        send.send_data(Bytes::from_static(b"bye"), true).unwrap();
        let tx = done_tx.lock().unwrap().take().unwrap();
        tokio::spawn(async move {
            let mut body = req.into_body();
            let mut got = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                body.flow_control().release_capacity(chunk.len()).unwrap();
                got.extend_from_slice(&chunk);
            }
            assert!(body.is_end_stream());
            tx.send(got).unwrap();
        });
    });
    let conn = ClientConnection::handshake(io, &Http2Config::default())
        .await
        .unwrap();
    let mut t = conn.open(&request()).await.unwrap();
    let mut got = Vec::new();
    t.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye");
    // The server half-closed; we can still send, then half-close ourselves.
    t.write_all(b"after").await.unwrap();
    t.shutdown().await.unwrap();
    assert_eq!(done_rx.await.unwrap(), b"after");
}

#[tokio::test(start_paused = true)]
async fn keepalive_keeps_healthy_connection_and_drops_silent_one() {
    let (io, freeze) = bare_server(|_, _| {});
    let config = Http2Config::default(); // PING every 10 s, 20 s timeout
    let conn = ClientConnection::handshake(io, &config).await.unwrap();
    // The server answers PINGs: a minute of idle time changes nothing.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!conn.is_closed());

    freeze.send(()).unwrap();
    let frozen_at = tokio::time::Instant::now();
    while !conn.is_closed() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            frozen_at.elapsed() < Duration::from_secs(60),
            "never dropped"
        );
    }
    // The next PING goes out within 10 s and is declared lost 20 s later.
    let waited = frozen_at.elapsed();
    assert!(
        waited >= Duration::from_secs(20) && waited <= Duration::from_secs(31),
        "{waited:?}"
    );
    assert!(matches!(
        conn.open(&request()).await,
        Err(crate::client::ClientError::ConnectionClosed)
    ));
}

#[tokio::test(start_paused = true)]
async fn keepalive_can_be_disabled() {
    let (io, freeze) = bare_server(|_, _| {});
    let config = Http2Config {
        keepalive_interval: None,
        ..Http2Config::default()
    };
    let conn = ClientConnection::handshake(io, &config).await.unwrap();
    freeze.send(()).unwrap();
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(!conn.is_closed());
}
