//! Why opening a tunnel failed.

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;

use http::StatusCode;
use meshwire_svid::SpiffeId;

use crate::request::{BuildError, Rejection};

/// Why opening a tunnel failed.
///
/// Cheap to clone: when several requests wait for one connection attempt, each gets a
/// copy of its failure.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The connector could not open the transport connection.
    #[error("connecting to the next hop failed: {0}")]
    Connect(#[source] Arc<io::Error>),
    /// The connector did not finish within the connect timeout.
    #[error("connecting to the next hop timed out (is a network policy blocking the HBONE port?)")]
    ConnectTimeout,
    /// The caller's TLS configuration source failed.
    #[error("no TLS client configuration: {0}")]
    TlsConfig(#[source] Arc<dyn StdError + Send + Sync>),
    /// The TLS handshake failed (for example the server's identity is not one of the
    /// expected ones). [`ClientError::tls_error`] gives the rustls error.
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] Arc<io::Error>),
    /// The TLS or HTTP/2 handshake did not finish within the handshake timeout.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The server's certificate carries no SPIFFE ID, or not an expected one.
    #[error("server identity {found:?} is not one of the expected identities")]
    UnexpectedIdentity {
        /// The identity found in the server's certificate, if any.
        found: Option<SpiffeId>,
    },
    /// The server did not answer the CONNECT request within the response timeout.
    #[error("no answer to the CONNECT request within the response timeout")]
    ResponseTimeout,
    /// An HTTP/2 error on the connection or the stream.
    #[error("HTTP/2: {0}")]
    Http2(#[source] Arc<h2::Error>),
    /// The server refused the tunnel with 400, 401 or 503.
    #[error("tunnel refused with status {}", .0.status())]
    Rejected(Rejection),
    /// The server answered with a status other than 200, 400, 401 or 503.
    #[error("tunnel refused with unexpected status {0}")]
    UnexpectedStatus(StatusCode),
    /// The request could not be encoded.
    #[error("invalid request: {0}")]
    Request(#[source] Arc<BuildError>),
    /// The connection closed before the tunnel was established.
    #[error("connection closed")]
    ConnectionClosed,
    /// The [`Pool`](super::Pool) was closed ([`Pool::close`](super::Pool::close)); it
    /// opens no more tunnels.
    #[error("connection pool closed")]
    PoolClosed,
}

impl ClientError {
    /// The rejection, for a 400/401/503 answer.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Self::Rejected(r) => Some(*r),
            _ => None,
        }
    }

    /// The HTTP status the server answered with, for refusals.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Rejected(r) => Some(r.status()),
            Self::UnexpectedStatus(s) => Some(*s),
            _ => None,
        }
    }

    /// The rustls error behind a failed TLS handshake (for example a server identity
    /// that is not expected). A server that refuses *our* certificate is only noticed
    /// after the handshake (TLS 1.3 clients finish first); that arrives as
    /// [`ClientError::Http2`] carrying the alert as an I/O error, without the rustls type.
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            Self::Tls(e) => e.get_ref()?.downcast_ref::<rustls::Error>(),
            _ => None,
        }
    }

    pub(crate) fn http2(e: h2::Error) -> Self {
        Self::Http2(Arc::new(e))
    }

    /// Whether the request certainly never reached the server, so that it can be
    /// retried on another connection.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Self::Http2(e) => {
                e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote())
            }
            Self::ConnectionClosed => true,
            _ => false,
        }
    }
}

impl From<BuildError> for ClientError {
    fn from(e: BuildError) -> Self {
        Self::Request(Arc::new(e))
    }
}
