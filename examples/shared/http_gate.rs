//! HTTP/1.1 serving for the small plain-HTTP endpoints of the example binaries (metrics,
//! readiness, admin), with the limits a listener on all addresses needs against clients that
//! connect and stall: a header-read timeout (hyper only enforces one when it has a timer)
//! and a bound on open connections, where a newcomer beyond the bound sheds the oldest
//! connection that has not sent a complete request yet.
//!
//! One file shared by the proxy and the agent (`#[path]`-included), so there is one
//! implementation of it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use meshwire_svid::tls::{ConnectionLimit, ConnectionLimitConfig};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The limits of an HTTP listener (or of several sharing one [`HttpGate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HttpLimits {
    /// Connections the gate holds at once.
    pub(crate) max_connections: usize,
    /// How long a client may take to send a request's headers (also bounds how long an
    /// idle keep-alive connection stays open).
    pub(crate) header_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a connection was closed before it was served, as told to [`HttpGate`]'s callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// A newer connection needed its place before it sent a request.
    Shed,
    /// Every connection held had sent a request already.
    Refused,
    /// It sent no complete request headers within the header-read timeout.
    Timeout,
    /// It sent a request hyper could not parse (or a head over [`MAX_HEAD_BYTES`]); hyper
    /// answered 400 or 431 and closed it.
    Malformed,
}

/// The largest request head (request line and headers) the endpoints read. They take
/// a path and a few headers; anything longer is an error, not a request.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;

impl Dropped {
    /// The metric label of the reason.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Shed => "shed",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Malformed => "malformed",
        }
    }
}

/// Shared limits of one or more HTTP listeners. Cloning shares them.
#[derive(Clone)]
pub(crate) struct HttpGate {
    limit: ConnectionLimit<()>,
    header_read_timeout: Duration,
    on_drop: Arc<dyn Fn(Dropped) + Send + Sync>,
}

impl std::fmt::Debug for HttpGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGate")
            .field("limit", &self.limit)
            .field("header_read_timeout", &self.header_read_timeout)
            .finish_non_exhaustive()
    }
}

impl HttpGate {
    /// A gate with `limits`; `on_drop` hears of every connection closed before it was served.
    pub(crate) fn new(
        limits: HttpLimits,
        on_drop: impl Fn(Dropped) + Send + Sync + 'static,
    ) -> Self {
        let mut config = ConnectionLimitConfig::default();
        config.max_per_key = limits.max_connections;
        config.max_total = limits.max_connections;
        Self {
            limit: ConnectionLimit::new(config),
            header_read_timeout: limits.header_read_timeout,
            on_drop: Arc::new(on_drop),
        }
    }

    /// Serves HTTP/1.1 with keep-alive on one accepted connection, answering each request
    /// with `handle`, until the client closes, the gate sheds it, or `stop` fires (then
    /// gracefully).
    pub(crate) async fn serve<F, Fut>(&self, stream: TcpStream, handle: F, stop: CancellationToken)
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let slot = match self.limit.admit(()) {
            Ok(s) => Arc::new(s),
            Err(_) => return (self.on_drop)(Dropped::Refused),
        };
        let handle = Arc::new(handle);
        let served = slot.clone();
        let requested = Arc::new(AtomicBool::new(false));
        let seen = requested.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            // A complete request head arrived: no longer a candidate for shedding.
            served.establish();
            seen.store(true, Ordering::Relaxed);
            let handle = handle.clone();
            async move { Ok::<_, Infallible>(handle(req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .keep_alive(true)
            .max_buf_size(MAX_HEAD_BYTES)
            .serve_connection(TokioIo::new(stream), service);
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => match res {
                Ok(()) => {}
                // An idle keep-alive connection timing out is no attack.
                Err(e) if e.is_timeout() && !requested.load(Ordering::Relaxed) => {
                    (self.on_drop)(Dropped::Timeout);
                }
                Err(e) if e.is_parse() || e.is_parse_too_large() => {
                    tracing::debug!(error = %e, "malformed HTTP request");
                    (self.on_drop)(Dropped::Malformed);
                }
                Err(e) => tracing::debug!(error = %e, "http connection"),
            },
            () = slot.shed() => (self.on_drop)(Dropped::Shed),
            () = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}
