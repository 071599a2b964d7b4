//! The inbound HBONE server.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::HeaderMap;
use meshwire_svid::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::baggage::Baggage;
use crate::config::ServeConfig;
use crate::driver::Keepalive;
use crate::request::{ConnectRequest, ConnectResponse, Rejection};
use crate::tunnel::Tunnel;

/// Addresses of an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// Our address (the destination the client connected to).
    pub local_addr: SocketAddr,
    /// The client's address.
    pub peer_addr: SocketAddr,
}

impl ConnectionInfo {
    /// Connection addresses.
    pub fn new(local_addr: SocketAddr, peer_addr: SocketAddr) -> Self {
        Self {
            local_addr,
            peer_addr,
        }
    }
}

/// Decides what happens to each well-formed CONNECT request.
///
/// Requests that are not CONNECT or whose authority does not parse never reach the
/// handler: the server answers 400 itself. The handler must call
/// [`IncomingTunnel::accept`] or [`IncomingTunnel::reject`]; dropping the tunnel
/// unanswered sends 503. Each call runs in its own task.
///
/// Closures `Fn(IncomingTunnel) -> impl Future<Output = ()>` implement this trait.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    fn handle(&self, tunnel: IncomingTunnel) -> impl Future<Output = ()> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(IncomingTunnel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    fn handle(&self, tunnel: IncomingTunnel) -> impl Future<Output = ()> + Send {
        self(tunnel)
    }
}

/// Supplies the rustls server configuration for an accepted connection (so that
/// certificates can rotate, or differ per listening address).
///
/// `Arc<rustls::ServerConfig>` implements it with a fixed configuration. Use
/// [`meshwire_svid::server_config`]: it requires a client certificate from the trust domain.
pub trait ServerTlsProvider: Send + Sync + 'static {
    /// Why no configuration is available.
    type Error: StdError + Send + Sync + 'static;

    /// The configuration for the connection described by `info`.
    fn server_config(
        &self,
        info: &ConnectionInfo,
    ) -> impl Future<Output = Result<Arc<rustls::ServerConfig>, Self::Error>> + Send;
}

impl ServerTlsProvider for Arc<rustls::ServerConfig> {
    type Error = Infallible;

    async fn server_config(&self, _info: &ConnectionInfo) -> Result<Self, Infallible> {
        Ok(self.clone())
    }
}

/// Why a connection ended with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The TLS configuration source failed.
    #[error("no TLS server configuration: {0}")]
    TlsConfig(#[source] Box<dyn StdError + Send + Sync>),
    /// The TLS handshake failed (for example an untrusted client certificate).
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
    /// The TLS or HTTP/2 handshake took longer than the handshake timeout.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The client presented no certificate, or one without a SPIFFE ID.
    #[error("client presented no SPIFFE identity")]
    NoPeerIdentity,
    /// HTTP/2 connection error.
    #[error("HTTP/2: {0}")]
    Http2(#[source] h2::Error),
    /// A keepalive PING was not answered in time.
    #[error("keepalive PING unanswered")]
    KeepaliveTimeout,
}

impl ServerError {
    /// The rustls error behind a failed handshake.
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            Self::Tls(e) => e.get_ref()?.downcast_ref::<rustls::Error>(),
            _ => None,
        }
    }
}

/// Counters of a [`Server`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections that completed the TLS and HTTP/2 handshakes.
    pub connections: u64,
    /// Connections refused during the handshakes.
    pub handshake_failures: u64,
    /// CONNECT requests passed to the handler.
    pub requests: u64,
    /// Requests answered 400 by the server itself (not CONNECT, bad authority).
    pub malformed_requests: u64,
}

/// A CONNECT request waiting for the handler's decision.
#[derive(Debug)]
pub struct IncomingTunnel {
    peer: SpiffeId,
    info: ConnectionInfo,
    request: ConnectRequest,
    headers: HeaderMap,
    respond: Option<SendResponse<Bytes>>,
    recv: Option<RecvStream>,
}

impl IncomingTunnel {
    /// The client's verified SPIFFE ID (from its certificate).
    pub fn peer_identity(&self) -> &SpiffeId {
        &self.peer
    }

    /// The connection's addresses.
    pub fn connection(&self) -> &ConnectionInfo {
        &self.info
    }

    /// The validated request.
    pub fn request(&self) -> &ConnectRequest {
        &self.request
    }

    /// All request headers as received.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Answers 200 and returns the tunnel.
    pub fn accept(self) -> io::Result<Tunnel> {
        self.respond_ok(ConnectResponse::ok())
    }

    /// Answers 200 with `baggage` describing the destination workload.
    pub fn accept_with_baggage(self, baggage: Baggage) -> io::Result<Tunnel> {
        self.respond_ok(ConnectResponse::ok().with_baggage(baggage))
    }

    fn respond_ok(mut self, response: ConnectResponse) -> io::Result<Tunnel> {
        let http = response
            .to_http()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (Some(mut respond), Some(recv)) = (self.respond.take(), self.recv.take()) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let send = respond
            .send_response(http, false)
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        Ok(Tunnel::new(recv, send, None, None))
    }

    /// Refuses the tunnel with the rejection's status (a headers-only response).
    pub fn reject(mut self, rejection: Rejection) {
        if let Some(respond) = self.respond.take() {
            send_status(respond, rejection);
        }
    }
}

impl Drop for IncomingTunnel {
    fn drop(&mut self) {
        if let Some(respond) = self.respond.take() {
            send_status(respond, Rejection::ServiceUnavailable);
        }
    }
}

fn send_status(mut respond: SendResponse<Bytes>, rejection: Rejection) {
    if let Err(e) = respond.send_response(rejection.to_http(), true) {
        tracing::debug!(error = %e, "could not send CONNECT refusal");
    }
}

struct ServerInner<H, T> {
    handler: H,
    tls: T,
    config: ServeConfig,
    drain: CancellationToken,
    tracker: TaskTracker,
    /// Slots for connections in their handshakes ([`ServeConfig::max_concurrent_handshakes`]).
    handshakes: Semaphore,
    connections: AtomicU64,
    handshake_failures: AtomicU64,
    requests: AtomicU64,
    malformed: AtomicU64,
}

/// An HBONE server: TLS with a mandatory client certificate, HTTP/2, and one handler
/// call per CONNECT stream.
///
/// Feed it accepted connections with [`serve_connection`](Self::serve_connection) /
/// [`spawn_connection`](Self::spawn_connection), or a listener with
/// [`serve`](Self::serve). [`shutdown`](Self::shutdown) drains: GOAWAY on every
/// connection, then connections still open after [`ServeConfig::drain_deadline`] are
/// closed. Cloning is cheap and clones share the server.
pub struct Server<H, T> {
    inner: Arc<ServerInner<H, T>>,
}

impl<H, T> Clone for Server<H, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<H, T> std::fmt::Debug for Server<H, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.inner.config)
            .field("draining", &self.inner.drain.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl<H: Handler, T: ServerTlsProvider> Server<H, T> {
    /// A server using `tls` for handshakes and `handler` for requests.
    pub fn new(tls: T, handler: H, config: ServeConfig) -> Self {
        let slots = config
            .max_concurrent_handshakes
            .clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(ServerInner {
                handler,
                tls,
                config,
                drain: CancellationToken::new(),
                tracker: TaskTracker::new(),
                handshakes: Semaphore::new(slots),
                connections: AtomicU64::new(0),
                handshake_failures: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                malformed: AtomicU64::new(0),
            }),
        }
    }

    /// The server's counters.
    pub fn stats(&self) -> ServerStats {
        let i = &self.inner;
        ServerStats {
            connections: i.connections.load(Ordering::Relaxed),
            handshake_failures: i.handshake_failures.load(Ordering::Relaxed),
            requests: i.requests.load(Ordering::Relaxed),
            malformed_requests: i.malformed.load(Ordering::Relaxed),
        }
    }

    /// Accepts connections from `listener` (setting `TCP_NODELAY`) until a drain
    /// starts. Each connection runs in its own task.
    pub async fn serve(&self, listener: TcpListener) -> io::Result<()> {
        let local_addr = listener.local_addr()?;
        loop {
            let (stream, peer_addr) = tokio::select! {
                () = self.inner.drain.cancelled() => return Ok(()),
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        // Per-connection accept errors (ECONNABORTED, EMFILE…) must not
                        // end the listener.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY");
            }
            self.spawn_connection(stream, ConnectionInfo::new(local_addr, peer_addr));
        }
    }

    /// Serves one accepted connection in a new task (awaited by
    /// [`shutdown`](Self::shutdown)). Errors are logged.
    pub fn spawn_connection<IO>(&self, io: IO, info: ConnectionInfo)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        self.inner.tracker.spawn(async move {
            if let Err(e) = this.serve_connection(io, info).await {
                tracing::debug!(peer = %info.peer_addr, error = %e, "HBONE connection ended");
            }
        });
    }

    /// Serves one accepted connection until it closes: TLS handshake, client identity,
    /// HTTP/2, and a handler task per CONNECT stream.
    ///
    /// The handshakes first wait for one of the
    /// [`ServeConfig::max_concurrent_handshakes`] slots (a drain ends the wait).
    pub async fn serve_connection<IO>(
        &self,
        io: IO,
        info: ConnectionInfo,
    ) -> Result<(), ServerError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let inner = &*self.inner;
        if inner.drain.is_cancelled() {
            return Ok(());
        }
        let permit = tokio::select! {
            biased;
            () = inner.drain.cancelled() => return Ok(()),
            p = inner.handshakes.acquire() => match p {
                Ok(p) => p,
                // The semaphore is never closed.
                Err(_) => return Ok(()),
            },
        };
        let result =
            tokio::time::timeout(inner.config.handshake_timeout, self.handshake(io, &info))
                .await
                .unwrap_or(Err(ServerError::HandshakeTimeout));
        drop(permit);
        let (conn, peer) = match result {
            Ok(c) => c,
            Err(e) => {
                inner.handshake_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        inner.connections.fetch_add(1, Ordering::Relaxed);
        self.run(conn, peer, info).await
    }

    async fn handshake<IO>(
        &self,
        io: IO,
        info: &ConnectionInfo,
    ) -> Result<
        (
            h2::server::Connection<tokio_rustls::server::TlsStream<IO>, Bytes>,
            SpiffeId,
        ),
        ServerError,
    >
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tls = self
            .inner
            .tls
            .server_config(info)
            .await
            .map_err(|e| ServerError::TlsConfig(Box::new(e)))?;
        let stream = tokio_rustls::TlsAcceptor::from(tls)
            .accept(io)
            .await
            .map_err(ServerError::Tls)?;
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .filter(|c| !c.is_empty())
            .and_then(|c| meshwire_svid::peer_spiffe_id(c).ok())
            .ok_or(ServerError::NoPeerIdentity)?;
        let conn = self
            .inner
            .config
            .http2
            .server_builder()
            .handshake(stream)
            .await
            .map_err(ServerError::Http2)?;
        Ok((conn, peer))
    }

    /// The connection loop: accept streams, keepalive, drain.
    async fn run<IO>(
        &self,
        mut conn: h2::server::Connection<IO, Bytes>,
        peer: SpiffeId,
        info: ConnectionInfo,
    ) -> Result<(), ServerError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let inner = &*self.inner;
        let mut keepalive = Keepalive::new(conn.ping_pong(), &inner.config.http2, None);
        let mut drain = Box::pin(inner.drain.clone().cancelled_owned());
        let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let outcome = std::future::poll_fn(|cx| {
            if deadline.is_none() && drain.as_mut().poll(cx).is_ready() {
                tracing::debug!(peer = %info.peer_addr, "draining HBONE connection");
                conn.graceful_shutdown();
                deadline = Some(Box::pin(tokio::time::sleep(inner.config.drain_deadline)));
            }
            if let Some(d) = deadline.as_mut()
                && d.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Outcome::DrainDeadline);
            }
            if keepalive.poll_timeout(cx).is_ready() {
                return Poll::Ready(Outcome::KeepaliveTimeout);
            }
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        self.on_stream(req, respond, &peer, info)
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Outcome::Error(e)),
                    Poll::Ready(None) => return Poll::Ready(Outcome::Closed),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        match outcome {
            Outcome::Closed => Ok(()),
            Outcome::Error(e) => Err(ServerError::Http2(e)),
            Outcome::DrainDeadline | Outcome::KeepaliveTimeout => {
                conn.abrupt_shutdown(Reason::NO_ERROR);
                // Give the GOAWAY a moment to leave, then drop the connection.
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    std::future::poll_fn(|cx| conn.poll_closed(cx)),
                )
                .await;
                if matches!(outcome, Outcome::KeepaliveTimeout) {
                    Err(ServerError::KeepaliveTimeout)
                } else {
                    tracing::debug!(peer = %info.peer_addr, "HBONE connection closed at drain deadline");
                    Ok(())
                }
            }
        }
    }

    fn on_stream(
        &self,
        req: http::Request<RecvStream>,
        respond: SendResponse<Bytes>,
        peer: &SpiffeId,
        info: ConnectionInfo,
    ) {
        let (parts, recv) = req.into_parts();
        let request = match ConnectRequest::from_parts(&parts.method, &parts.uri, &parts.headers) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "refusing malformed CONNECT");
                self.inner.malformed.fetch_add(1, Ordering::Relaxed);
                send_status(respond, Rejection::BadRequest);
                return;
            }
        };
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let tunnel = IncomingTunnel {
            peer: peer.clone(),
            info,
            request,
            headers: parts.headers,
            respond: Some(respond),
            recv: Some(recv),
        };
        let this = self.clone();
        tokio::spawn(async move { this.inner.handler.handle(tunnel).await });
    }

    /// Starts a drain and waits for it: stops [`serve`](Self::serve) loops, sends
    /// GOAWAY on every connection, lets open tunnels finish, and closes connections
    /// still open after [`ServeConfig::drain_deadline`]. Returns when every connection
    /// task has ended.
    pub async fn shutdown(&self) {
        self.inner.drain.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.inner.drain.is_cancelled()
    }
}

enum Outcome {
    Closed,
    Error(h2::Error),
    DrainDeadline,
    KeepaliveTimeout,
}
