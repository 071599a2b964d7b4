//! Why a server connection ended with an error.

use std::error::Error as StdError;
use std::io;

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
    /// No CONNECT request arrived within the accept timeout (counted from the accept).
    #[error("no CONNECT request within the accept timeout")]
    AcceptTimeout,
    /// The connection was shed from its connection limit for a newer one before its client
    /// was authenticated.
    #[error("shed for a newer connection")]
    Shed,
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
