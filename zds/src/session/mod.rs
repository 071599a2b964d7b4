//! Sans-IO session state machines for both ends of a ZDS connection.

mod agent;
mod proxy;

pub use agent::{AgentPhase, AgentSession};
pub use proxy::{CloseReason, ProxyAction, ProxySession};

use crate::wire::{EncodeError, ProtocolError, ReadError};

/// An input a session cannot accept.
///
/// [`Read`](Self::Read) and [`Protocol`](Self::Protocol) describe a misbehaving peer (the
/// agent session closes itself when it reports them); the other variants describe calls
/// made in the wrong state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer's datagram could not be read.
    #[error("unreadable message: {0}")]
    Read(#[from] ReadError),
    /// The peer (or the caller) broke the sequencing rules.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The request cannot be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// No connection is open (call `connect` first, or the last one was closed).
    #[error("no connection is open")]
    NotConnected,
    /// A request is still waiting for its answer.
    #[error("a request is still outstanding")]
    Busy,
    /// There is nothing waiting for this input.
    #[error("nothing is waiting for this input")]
    Unexpected,
    /// The proxy has not sent its hello yet.
    #[error("the proxy has not sent its hello yet")]
    HelloPending,
}
