//! Errors of namespace and socket operations.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::ns::NsId;

/// An error while opening or entering a network namespace or making a socket in it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The namespace file could not be opened.
    #[error("cannot open network namespace {}: {source}", path.display())]
    Open {
        /// The path that was opened.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file descriptor could not be inspected.
    #[error("cannot inspect {what}: {source}")]
    Inspect {
        /// What was inspected.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// The file is not a network namespace.
    #[error("{what} is not a network namespace")]
    NotNetworkNamespace {
        /// What was opened.
        what: String,
    },
    /// `setns` into the namespace failed (needs `CAP_SYS_ADMIN`).
    #[error("cannot enter network namespace {id}: {source}")]
    Enter {
        /// The namespace.
        id: NsId,
        /// The cause.
        source: io::Error,
    },
    /// A helper thread could not be started or ended without a result.
    #[error("namespace helper thread failed: {0}")]
    Thread(io::Error),
    /// A socket operation failed.
    #[error("socket {op} failed: {source}")]
    Socket {
        /// The operation.
        op: SocketOp,
        /// The cause.
        source: io::Error,
    },
}

/// The socket operation that failed, in [`Error::Socket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketOp {
    /// `socket(2)`.
    Create,
    /// `setsockopt(2)` of the named option.
    SetOption(&'static str),
    /// `bind(2)`.
    Bind,
    /// `listen(2)`.
    Listen,
    /// `connect(2)`.
    Connect,
    /// Registering the socket with the tokio reactor.
    Register,
}

impl fmt::Display for SocketOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Create => f.write_str("create"),
            Self::SetOption(name) => write!(f, "option {name}"),
            Self::Bind => f.write_str("bind"),
            Self::Listen => f.write_str("listen"),
            Self::Connect => f.write_str("connect"),
            Self::Register => f.write_str("registration"),
        }
    }
}

impl Error {
    /// The underlying I/O error, if there is one.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::Open { source, .. }
            | Self::Inspect { source, .. }
            | Self::Enter { source, .. }
            | Self::Socket { source, .. }
            | Self::Thread(source) => Some(source),
            Self::NotNetworkNamespace { .. } => None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = e.io_error().map_or(io::ErrorKind::InvalidInput, Self::kind);
        Self::new(kind, e)
    }
}
