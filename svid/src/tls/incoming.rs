//! The control-plane accept loop: TCP connections completed as TLS on their own tasks, with a
//! time limit and a bound on open connections that sheds the oldest unfinished handshake, yielded as tonic connections that carry
//! the client's verified identity ([`PeerInfo`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use super::limit::{ConnectionLimit, ConnectionLimitConfig, ConnectionSlot};
use super::peer_spiffe_id;
use crate::id::SpiffeId;

/// The default of [`IncomingConfig::handshake_timeout`].
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What tonic request handlers see about the connection (as a request extension) when the
/// server accepts through [`incoming`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The client's certificate chain, if it presented one (verified by the server config).
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The first SPIFFE ID of the client's leaf, if it presented a certificate.
    pub peer_identity: Option<SpiffeId>,
}

/// A server-side TLS connection accepted by [`incoming`].
#[derive(Debug)]
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
    /// The connection's place in the listener's limit, held until it closes.
    _slot: ConnectionSlot,
}

impl TlsConnection {
    /// What is known about the peer.
    pub fn peer_info(&self) -> &PeerInfo {
        &self.info
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A stream of TLS connections for `tonic::transport::Server::serve_with_incoming`.
///
/// TCP accepts run on a background task; each handshake runs on its own task, so a slow
/// client cannot hold up others. Every accepted connection takes a slot of a
/// [`ConnectionLimit`] keyed by the client's IP ([`IncomingConfig::limit`]) and keeps it
/// until it closes; when a bound is reached, the oldest connection still in its handshake is
/// closed to make room, so clients that never finish their handshakes cannot lock real
/// clients out. Failed, timed-out and shed handshakes are logged and skipped. The background
/// task ends when the stream is dropped.
pub type Incoming = tokio_stream::wrappers::ReceiverStream<io::Result<TlsConnection>>;

/// Limits for the connections of [`incoming_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IncomingConfig {
    /// How long an accepted TCP connection may take to finish its TLS handshake, counted from
    /// the accept. Default 10 s.
    pub handshake_timeout: Duration,
    /// Bounds on the open connections (in their handshake or handed to the server) per
    /// client IP and in all. Default [`ConnectionLimitConfig::default`]. A connection
    /// beyond a bound sheds the oldest one still in its handshake, or is closed at once
    /// when every connection under the bound completed its handshake.
    pub limit: ConnectionLimitConfig,
}

impl Default for IncomingConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            limit: ConnectionLimitConfig::default(),
        }
    }
}

/// Accepts TCP connections on `listener` and completes TLS handshakes with `config`, yielding
/// connections whose [`PeerInfo`] reaches tonic handlers as a request extension.
///
/// Uses the default [`IncomingConfig`]; see [`incoming_with`].
///
/// The client identity in [`PeerInfo`] is only as trustworthy as `config`'s client
/// certificate verifier; [`control_plane_server_config`](super::control_plane_server_config) verifies against trust bundles.
pub fn incoming(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Incoming {
    incoming_with(listener, config, IncomingConfig::default())
}

/// [`incoming`] with explicit limits.
pub fn incoming_with(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: IncomingConfig,
) -> Incoming {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let acceptor = TlsAcceptor::from(config);
    let slots = ConnectionLimit::new(limits.limit);
    let timeout = limits.handshake_timeout;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = tx.closed() => return,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Avoid a hot loop on persistent errors such as EMFILE.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let deadline = tokio::time::Instant::now() + timeout;
            let slot = match slots.admit(remote_addr.ip().to_canonical()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%remote_addr, error = %e, "connection refused");
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let result = tokio::select! {
                    r = tokio::time::timeout_at(deadline, acceptor.accept(tcp)) => r,
                    () = slot.shed() => {
                        tracing::debug!(%remote_addr, "TLS handshake shed for a newer connection");
                        return;
                    }
                };
                let stream = match result {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote_addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote_addr, "TLS handshake timed out");
                        return;
                    }
                };
                if !slot.establish() {
                    return;
                }
                let certs = stream.get_ref().1.peer_certificates().map(|c| {
                    Arc::new(c.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>())
                });
                let peer_identity = certs.as_ref().and_then(|c| peer_spiffe_id(c).ok());
                let info = PeerInfo {
                    remote_addr,
                    peer_certificates: certs,
                    peer_identity,
                };
                let _ = tx
                    .send(Ok(TlsConnection {
                        stream,
                        info,
                        _slot: slot,
                    }))
                    .await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
