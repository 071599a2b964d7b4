//! What a client reports: [`ClientEvent`]s and the [`SyncedSignal`].

use std::time::Duration;

use tokio::sync::watch;

use super::handler::Rejection;

/// Something that happened in an [`AdsClient`](super::AdsClient).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A stream was established.
    Connected,
    /// A response was applied and acknowledged (with a NACK if anything was rejected).
    Applied {
        /// Type URL.
        type_url: String,
        /// Nonce of the response.
        nonce: String,
        /// Resources received.
        resources: usize,
        /// Removals received.
        removed: usize,
        /// Rejected resources (sent as a NACK).
        rejected: Vec<Rejection>,
    },
    /// The stream ended; the client reconnects after `retry_in`.
    Disconnected {
        /// Why the stream ended.
        reason: String,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
}

/// Becomes true once the first response of every subscribed type has been applied.
///
/// A response counts as applied even when some of its resources were rejected (and
/// NACKed): the accepted ones are in the store, so one bad resource does not keep the
/// proxy from becoming ready. Callers that want readiness only after a clean ACK can
/// watch [`ClientEvent::Applied`] and its `rejected` list instead. The signal never goes
/// back to false.
#[derive(Debug, Clone)]
pub struct SyncedSignal(pub(super) watch::Receiver<bool>);

impl SyncedSignal {
    /// Whether the client is synced.
    pub fn is_synced(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the client is synced. Returns `false` if the client stopped first.
    pub async fn wait(&mut self) -> bool {
        self.0.wait_for(|synced| *synced).await.is_ok()
    }
}
