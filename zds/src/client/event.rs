//! What the client reports about its connections.

use std::time::Duration;

use super::ClientError;

/// Something that happened in a [`Client`](super::Client), from
/// [`Client::events`](super::Client::events).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A connection to the agent was established and the hello queued.
    Connected,
    /// A connection attempt failed or a connection ended; the client connects again
    /// after `retry_in`.
    Disconnected {
        /// Why.
        error: ClientError,
        /// Wait before the next attempt (exponential back-off with jitter).
        retry_in: Duration,
    },
}
