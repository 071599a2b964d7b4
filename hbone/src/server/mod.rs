//! The inbound side: an HBONE [`Server`] that accepts mutual-TLS connections, requires a
//! client certificate with a SPIFFE ID, and hands each CONNECT request to a [`Handler`]
//! as an [`IncomingTunnel`].
//!
//! Before dialing anything for a request, a handler applies the destination rules every
//! HBONE server needs: [`Admission`] (the target must be one of the workload's own
//! addresses, never one of the proxy's own ports). Malformed requests (not CONNECT, no or
//! a bad authority) never reach the handler: the server answers 400 itself.
//!
//! Against clients that connect and then stall (slowloris), one deadline
//! ([`ServeConfig::accept_timeout`]) covers everything from the accept to the first CONNECT
//! request, and a [`ConnectionLimit`] shared by any number of servers bounds the connections
//! per key (a pod) and in all: take a slot when accepting
//! ([`ConnectionLimit::admit`]) and serve with [`Server::serve_limited`]. When a bound is
//! reached the oldest connection whose client is not yet authenticated is shed; established
//! connections never are.
//!
//! ```no_run
//! use std::sync::Arc;
//! use meshwire_hbone::Rejection;
//! use meshwire_hbone::server::{Admission, IncomingTunnel, ServeConfig, Server, Target};
//!
//! # async fn run(tls: Arc<meshwire_hbone::rustls::ServerConfig>) -> std::io::Result<()> {
//! let admission = Arc::new(Admission::default());
//! let handler = move |incoming: IncomingTunnel| {
//!     let admission = admission.clone();
//!     async move {
//!         let target = match admission.check(incoming.request(), incoming.connection()) {
//!             Ok(Target::Addr(addr)) => addr,
//!             // A service host name would be resolved by the caller here.
//!             Ok(_) => return incoming.reject(Rejection::ServiceUnavailable),
//!             Err(refused) => return incoming.reject(refused.rejection()),
//!         };
//!         let Ok(upstream) = tokio::net::TcpStream::connect(target).await else {
//!             return incoming.reject(Rejection::ServiceUnavailable);
//!         };
//!         if let Ok(tunnel) = incoming.accept() {
//!             let _ = meshwire_hbone::tunnel::copy_bidirectional(tunnel, upstream).await;
//!         }
//!     }
//! };
//! let server = Server::new(tls, handler, ServeConfig::default());
//! server.serve(tokio::net::TcpListener::bind("[::]:15008").await?).await
//! # }
//! ```

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use meshwire_svid::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::keepalive::Keepalive;
use crate::request::{ConnectRequest, Rejection};

mod admission;
mod config;
mod error;
mod incoming;
mod tls;

pub use admission::{Admission, AdmissionError, PROXY_PORTS, Target};
pub use config::ServeConfig;
pub use error::ServerError;
pub use incoming::{ConnectionInfo, Handler, IncomingTunnel};
pub use meshwire_svid::tls::{
    ConnectionLimit, ConnectionLimitConfig, ConnectionSlot, LimitReached, LimitStats,
};
pub use tls::ServerTlsProvider;

use incoming::send_status;

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
    /// Connections closed because they sent no CONNECT request within
    /// [`ServeConfig::accept_timeout`].
    pub accept_timeouts: u64,
    /// Connections shed from their [`ConnectionLimit`] for a newer one before their client
    /// was authenticated.
    pub shed: u64,
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
    accept_timeouts: AtomicU64,
    shed: AtomicU64,
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
                accept_timeouts: AtomicU64::new(0),
                shed: AtomicU64::new(0),
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
            accept_timeouts: i.accept_timeouts.load(Ordering::Relaxed),
            shed: i.shed.load(Ordering::Relaxed),
        }
    }

    /// Accepts connections from `listener` (setting `TCP_NODELAY`) until a drain
    /// starts. Each connection runs in its own task.
    pub async fn serve(&self, listener: TcpListener) -> io::Result<()> {
        self.accept_loop(listener, |stream, info| self.spawn_connection(stream, info))
            .await
    }

    /// Like [`serve`](Self::serve), with every connection holding a slot of `limit` under
    /// `key` from its accept on: a connection beyond a bound sheds the oldest one whose
    /// client is not authenticated yet, or is closed at once when all are established.
    /// Several listeners (and servers) may share one limit.
    pub async fn serve_with_limit<K>(
        &self,
        listener: TcpListener,
        limit: &ConnectionLimit<K>,
        key: K,
    ) -> io::Result<()>
    where
        K: Eq + std::hash::Hash + Clone + Send + 'static,
    {
        self.accept_loop(listener, |stream, info| match limit.admit(key.clone()) {
            Ok(slot) => self.spawn_limited(stream, info, slot),
            Err(e) => tracing::debug!(peer = %info.peer_addr, error = %e, "connection refused"),
        })
        .await
    }

    async fn accept_loop(
        &self,
        listener: TcpListener,
        mut accepted: impl FnMut(tokio::net::TcpStream, ConnectionInfo),
    ) -> io::Result<()> {
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
            accepted(stream, ConnectionInfo::new(local_addr, peer_addr));
        }
    }

    /// [`spawn_connection`](Self::spawn_connection) for a connection holding `slot` (see
    /// [`serve_limited`](Self::serve_limited)).
    pub fn spawn_limited<IO>(&self, io: IO, info: ConnectionInfo, slot: ConnectionSlot)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        self.inner.tracker.spawn(async move {
            if let Err(e) = this.serve_limited(io, info, slot).await {
                tracing::debug!(peer = %info.peer_addr, error = %e, "HBONE connection ended");
            }
        });
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
    /// [`ServeConfig::max_concurrent_handshakes`] slots (a drain ends the wait). Everything
    /// up to the first CONNECT request must happen within [`ServeConfig::accept_timeout`],
    /// counted from this call.
    pub async fn serve_connection<IO>(
        &self,
        io: IO,
        info: ConnectionInfo,
    ) -> Result<(), ServerError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_inner(io, info, None).await
    }

    /// Like [`serve_connection`](Self::serve_connection) for a connection that holds `slot`
    /// of a [`ConnectionLimit`], taken when it was accepted. Until the client is
    /// authenticated the connection may be shed for a newer one (it then ends with
    /// [`ServerError::Shed`]); from then on it is established and keeps its place until it
    /// closes.
    pub async fn serve_limited<IO>(
        &self,
        io: IO,
        info: ConnectionInfo,
        slot: ConnectionSlot,
    ) -> Result<(), ServerError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_inner(io, info, Some(slot)).await
    }

    async fn serve_inner<IO>(
        &self,
        io: IO,
        info: ConnectionInfo,
        slot: Option<ConnectionSlot>,
    ) -> Result<(), ServerError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let inner = &*self.inner;
        let deadline = tokio::time::Instant::now() + inner.config.accept_timeout;
        if inner.drain.is_cancelled() {
            return Ok(());
        }
        let handshakes = async {
            let permit = tokio::select! {
                biased;
                () = inner.drain.cancelled() => return Ok(None),
                p = inner.handshakes.acquire() => match p {
                    Ok(p) => p,
                    // The semaphore is never closed.
                    Err(_) => return Ok(None),
                },
            };
            let result =
                tokio::time::timeout(inner.config.handshake_timeout, self.handshake(io, &info))
                    .await
                    .unwrap_or(Err(ServerError::HandshakeTimeout));
            drop(permit);
            result.map(Some)
        };
        let shed = async {
            match &slot {
                Some(s) => s.shed().await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = tokio::time::timeout_at(deadline, handshakes) => {
                r.unwrap_or(Err(ServerError::AcceptTimeout))
            }
            () = shed => Err(ServerError::Shed),
        };
        let (conn, peer) = match result {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.count_failure(&e);
                return Err(e);
            }
        };
        // Authenticated: never shed from now on.
        if let Some(s) = &slot
            && !s.establish()
        {
            self.count_failure(&ServerError::Shed);
            return Err(ServerError::Shed);
        }
        inner.connections.fetch_add(1, Ordering::Relaxed);
        let result = self.run(conn, peer, info, deadline).await;
        if matches!(result, Err(ServerError::AcceptTimeout)) {
            inner.accept_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        drop(slot);
        result
    }

    fn count_failure(&self, e: &ServerError) {
        let inner = &*self.inner;
        let counter = match e {
            ServerError::Shed => &inner.shed,
            ServerError::AcceptTimeout => &inner.accept_timeouts,
            _ => &inner.handshake_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    async fn handshake<IO>(
        &self,
        io: IO,
        info: &ConnectionInfo,
    ) -> Result<
        (
            h2::server::Connection<
                tokio_rustls::server::TlsStream<crate::tls_io::BufferedIo<IO>>,
                Bytes,
            >,
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
        let mut stream = tokio_rustls::TlsAcceptor::from(tls)
            .accept(crate::tls_io::buffered(io))
            .await
            .map_err(ServerError::Tls)?;
        stream
            .get_mut()
            .1
            .set_buffer_limit(Some(crate::tls_io::TLS_SEND_BUFFER));
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .filter(|c| !c.is_empty())
            .and_then(|c| meshwire_svid::tls::peer_spiffe_id(c).ok())
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
        first_request_by: tokio::time::Instant,
    ) -> Result<(), ServerError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let inner = &*self.inner;
        // Until the first well-formed CONNECT request arrives.
        let mut first_request = Some(Box::pin(tokio::time::sleep_until(first_request_by)));
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
            if let Some(s) = first_request.as_mut()
                && s.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Outcome::AcceptTimeout);
            }
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        if self.on_stream(req, respond, &peer, info) {
                            first_request = None;
                        }
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
            Outcome::DrainDeadline | Outcome::KeepaliveTimeout | Outcome::AcceptTimeout => {
                conn.abrupt_shutdown(Reason::NO_ERROR);
                // Give the GOAWAY a moment to leave, then drop the connection.
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    std::future::poll_fn(|cx| conn.poll_closed(cx)),
                )
                .await;
                if matches!(outcome, Outcome::KeepaliveTimeout) {
                    Err(ServerError::KeepaliveTimeout)
                } else if matches!(outcome, Outcome::AcceptTimeout) {
                    Err(ServerError::AcceptTimeout)
                } else {
                    tracing::debug!(peer = %info.peer_addr, "HBONE connection closed at drain deadline");
                    Ok(())
                }
            }
        }
    }

    /// Hands a stream to the handler; `false` if it was malformed (answered 400).
    fn on_stream(
        &self,
        req: http::Request<RecvStream>,
        respond: SendResponse<Bytes>,
        peer: &SpiffeId,
        info: ConnectionInfo,
    ) -> bool {
        let (parts, recv) = req.into_parts();
        let request = match ConnectRequest::from_parts(&parts.method, &parts.uri, &parts.headers) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "refusing malformed CONNECT");
                self.inner.malformed.fetch_add(1, Ordering::Relaxed);
                send_status(respond, Rejection::BadRequest);
                return false;
            }
        };
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let tunnel = IncomingTunnel::new(peer.clone(), info, request, parts.headers, respond, recv);
        let this = self.clone();
        tokio::spawn(async move { this.inner.handler.handle(tunnel).await });
        true
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
    AcceptTimeout,
}
