//! The control-plane accept loop: TCP connections completed as TLS on their own tasks, with a
//! time limit and a bound on concurrent handshakes, yielded as tonic connections that carry
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
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

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
/// TCP accepts run on a background task; each handshake runs on its own task with a time
/// limit, so a slow client cannot hold up others, and at most
/// [`IncomingConfig::max_concurrent_handshakes`] run at once. Failed handshakes are
/// logged and skipped. The background task ends when the stream is dropped.
pub type Incoming = tokio_stream::wrappers::ReceiverStream<io::Result<TlsConnection>>;

/// Limits for the handshakes of [`incoming_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IncomingConfig {
    /// How long an accepted TCP connection may take to finish its TLS handshake. Default
    /// 10 s.
    pub handshake_timeout: Duration,
    /// How many TLS handshakes may run at once. Default 256.
    ///
    /// While all slots are taken the listener accepts nothing: further connections wait in
    /// the kernel's listen backlog (and beyond it the kernel refuses them) until a handshake
    /// ends. This bounds the tasks, memory and CPU that clients which never finish their
    /// handshakes can hold. `0` is treated as `1`.
    pub max_concurrent_handshakes: usize,
}

impl Default for IncomingConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_concurrent_handshakes: 256,
        }
    }
}

/// Accepts TCP connections on `listener` and completes TLS handshakes with `config`, yielding
/// connections whose [`PeerInfo`] reaches tonic handlers as a request extension.
///
/// Uses the default [`IncomingConfig`] (10 s per handshake, at most 256 at once); see
/// [`incoming_with`].
///
/// The client identity in [`PeerInfo`] is only as trustworthy as `config`'s client
/// certificate verifier; [`control_plane_server_config`](super::control_plane_server_config) verifies against trust bundles.
pub fn incoming(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Incoming {
    incoming_with(listener, config, IncomingConfig::default())
}

/// [`incoming`] with explicit handshake limits.
pub fn incoming_with(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: IncomingConfig,
) -> Incoming {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(
        limits
            .max_concurrent_handshakes
            .clamp(1, Semaphore::MAX_PERMITS),
    ));
    let timeout = limits.handshake_timeout;
    tokio::spawn(async move {
        loop {
            // Take a handshake slot before accepting, so that excess connections stay in
            // the listen backlog.
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    // The semaphore is never closed.
                    Err(_) => return,
                },
                () = tx.closed() => return,
            };
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
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(timeout, acceptor.accept(tcp));
                let result = handshake.await;
                drop(permit);
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
                let certs = stream.get_ref().1.peer_certificates().map(|c| {
                    Arc::new(c.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>())
                });
                let peer_identity = certs.as_ref().and_then(|c| peer_spiffe_id(c).ok());
                let info = PeerInfo {
                    remote_addr,
                    peer_certificates: certs,
                    peer_identity,
                };
                let _ = tx.send(Ok(TlsConnection { stream, info })).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
