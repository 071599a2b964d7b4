//! Why a connection to the agent ended.

use std::io;
use std::sync::Arc;

use crate::session::CloseReason;
use crate::transport::SendError;

/// Why a [`Client`](super::Client) connection attempt failed or a connection ended.
///
/// The client never stops on any of these: it logs the error, reports it as
/// [`ClientEvent::Disconnected`](super::ClientEvent::Disconnected), waits its back-off
/// and connects again, and the next connection starts from a fresh snapshot.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket could not be connected (the agent is not running yet, for example).
    #[error("connecting to the ZDS socket failed: {0}")]
    Connect(Arc<io::Error>),
    /// The credentials of the socket's owner (`SO_PEERCRED`) could not be read.
    #[error("reading the ZDS peer credentials failed: {0}")]
    PeerCredentials(Arc<io::Error>),
    /// The socket belongs to a process whose uid is not allowed (neither root, nor this
    /// process's effective uid, nor in [`ClientConfig::agent_uids`](super::ClientConfig::agent_uids)):
    /// anyone could have created it, so nothing is sent or received on it.
    #[error(
        "refusing the ZDS socket: it belongs to uid {uid}, which is neither root, this \
         process's uid, nor an allowed agent uid"
    )]
    AgentNotAllowed {
        /// The uid of the process that created the listening socket.
        uid: u32,
    },
    /// Sending an answer failed.
    #[error("sending on the ZDS connection failed: {0}")]
    Send(Arc<SendError>),
    /// Receiving failed.
    #[error("receiving on the ZDS connection failed: {0}")]
    Receive(Arc<io::Error>),
    /// The agent closed the connection.
    #[error("the agent closed the ZDS connection")]
    ClosedByAgent,
    /// The client closed the connection after NACKing a request: unreadable, failed to
    /// apply, or breaking the protocol.
    #[error("closed the ZDS connection: {0}")]
    Closed(CloseReason),
}

impl ClientError {
    /// Whether the agent broke the protocol (the back-off then keeps growing even after
    /// a connection that became ready, so a misbehaving agent is not hammered).
    pub(super) fn is_protocol(&self) -> bool {
        matches!(self, Self::Closed(CloseReason::Protocol(_)))
    }
}
