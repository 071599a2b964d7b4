//! What the server reports about its connections.

use std::fmt;

use super::ZdsError;

/// Identifies one accepted proxy connection; later connections have larger ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub(super) u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zds-conn-{}", self.0)
    }
}

/// Something that happened on the server, for logs, metrics and for callers that need
/// to know when a snapshot reached a proxy.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A proxy connected.
    Connected {
        /// The connection.
        id: ConnectionId,
    },
    /// A proxy acknowledged a whole snapshot (`SnapshotSent` answered).
    SnapshotDone {
        /// The connection.
        id: ConnectionId,
        /// Adds and keeps in the snapshot.
        workloads: usize,
        /// Uids in the snapshot whose add or keep the proxy NACKed.
        nacked: Vec<String>,
    },
    /// A proxy NACKed a request. Callers of [`Server::add`](super::Server::add) and [`Server::del`](super::Server::del) get the
    /// text as their error as well; snapshot NACKs are reported only here.
    Nacked {
        /// The connection.
        id: ConnectionId,
        /// The uid of the request, if it had one.
        uid: Option<String>,
        /// The proxy's text.
        message: String,
    },
    /// A peer was refused by [`ServerConfig::peer_uids`](super::ServerConfig::peer_uids) and closed. It got no
    /// [`ConnectionId`] and no other event.
    Refused {
        /// The peer's uid, or `None` when the kernel did not report its credentials.
        uid: Option<u32>,
        /// The peer's process id, when known.
        pid: Option<i32>,
    },
    /// A connection ended.
    Disconnected {
        /// The connection.
        id: ConnectionId,
        /// Why, or `None` for a clean end of stream or shutdown.
        error: Option<ZdsError>,
    },
}
