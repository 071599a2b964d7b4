//! Errors of the server.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::session::SessionError;
use crate::transport::{RecvError, SendError};
use crate::wire::{EncodeError, ProtocolError, ReadError};

/// Why a [`Server`](super::Server) request did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ZdsError {
    /// The proxy answered with a NACK; the text is the proxy's.
    #[error("proxy rejected the request: {0}")]
    Nack(String),
    /// No proxy is connected. For an add, the workload is still recorded and goes out
    /// in the snapshot of the next proxy that connects.
    #[error("no proxy is connected")]
    NoProxy,
    /// The proxy did not answer within the ack timeout; its connection was closed.
    #[error("timed out waiting for the proxy")]
    Timeout,
    /// The connection ended before the proxy answered.
    #[error("connection to the proxy closed before it answered")]
    ConnectionClosed,
    /// The server is shut down.
    #[error("the ZDS server is shut down")]
    Shutdown,
    /// The request does not fit in one datagram; nothing was recorded or sent.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The proxy sent something unreadable; its connection was closed.
    #[error("unreadable message from the proxy: {0}")]
    Read(#[from] ReadError),
    /// The proxy broke the protocol; its connection was closed.
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    /// The socket failed; the connection was closed.
    #[error("I/O error: {0}")]
    Io(#[source] Arc<io::Error>),
}

impl From<io::Error> for ZdsError {
    fn from(e: io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}

impl From<SessionError> for ZdsError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Read(e) => Self::Read(e),
            SessionError::Protocol(e) => Self::Protocol(e),
            SessionError::Encode(e) => Self::Encode(e),
            SessionError::NotConnected
            | SessionError::Busy
            | SessionError::Unexpected
            | SessionError::HelloPending => Self::ConnectionClosed,
        }
    }
}

impl From<SendError> for ZdsError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::TooLarge { size } => Self::Encode(EncodeError::TooLarge { size }),
            SendError::FdMismatch => Self::Io(Arc::new(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an AddWorkload must carry exactly one fd and other messages none",
            ))),
            SendError::Io(e) => e.into(),
        }
    }
}

impl From<RecvError> for ZdsError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Truncated => Self::Read(ReadError::Truncated),
            RecvError::Io(e) => e.into(),
        }
    }
}

/// Why [`Server::bind`](super::Server::bind) failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {path}: {source}")]
pub struct BindError {
    /// The socket path.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub source: io::Error,
}
