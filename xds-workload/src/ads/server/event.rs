//! What a server reports: [`ServerEvent`]s and [`ServerStats`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Something that happened on a stream, for the server's owner.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A stream identified its node.
    Connected {
        /// Stream id (unique within this server).
        stream: u64,
        /// `Node.id` of the client.
        node_id: String,
    },
    /// A response was sent.
    Sent {
        /// Stream id.
        stream: u64,
        /// `Node.id` of the client ("" if it never sent one).
        node_id: String,
        /// Type URL.
        type_url: String,
        /// Nonce of the response.
        nonce: String,
        /// Resources added or updated.
        resources: usize,
        /// Resources removed.
        removed: usize,
    },
    /// A response was accepted.
    Ack {
        /// Stream id.
        stream: u64,
        /// `Node.id` of the client.
        node_id: String,
        /// Type URL.
        type_url: String,
        /// Nonce of the accepted response.
        nonce: String,
    },
    /// A response was rejected (in whole or in part). The server does not resend the
    /// rejected versions; a later change of a resource is pushed as usual.
    Nack {
        /// Stream id.
        stream: u64,
        /// `Node.id` of the client.
        node_id: String,
        /// Type URL.
        type_url: String,
        /// Nonce of the rejected response.
        nonce: String,
        /// `error_detail.code` sent by the client.
        code: i32,
        /// `error_detail.message` sent by the client.
        message: String,
    },
    /// A stream ended.
    Disconnected {
        /// Stream id.
        stream: u64,
        /// `Node.id` of the client.
        node_id: String,
    },
}

/// Counters of an [`AdsServer`](super::AdsServer) since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ServerStats {
    /// Streams currently open.
    pub active_streams: u64,
    /// Responses sent.
    pub responses: u64,
    /// Resources sent (added or updated), summed over responses.
    pub resources: u64,
    /// Removals sent, summed over responses.
    pub removals: u64,
    /// ACKs received.
    pub acks: u64,
    /// NACKs received.
    pub nacks: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) active_streams: AtomicU64,
    pub(super) responses: AtomicU64,
    pub(super) resources: AtomicU64,
    pub(super) removals: AtomicU64,
    pub(super) acks: AtomicU64,
    pub(super) nacks: AtomicU64,
}

impl Counters {
    pub(super) fn stats(&self) -> ServerStats {
        ServerStats {
            active_streams: self.active_streams.load(Ordering::Relaxed),
            responses: self.responses.load(Ordering::Relaxed),
            resources: self.resources.load(Ordering::Relaxed),
            removals: self.removals.load(Ordering::Relaxed),
            acks: self.acks.load(Ordering::Relaxed),
            nacks: self.nacks.load(Ordering::Relaxed),
        }
    }
}
