//! Why the client stopped.

use crate::wire::ProtocolError;

/// Why a [`Client`](super::Client) stopped for good.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The agent broke the protocol. The client sent a NACK and will not reconnect:
    /// the agent is treated as incompatible.
    #[error("ZDS protocol error from the agent: {0}")]
    Protocol(#[from] ProtocolError),
}
