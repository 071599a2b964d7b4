//! What the server's tasks share: the workload cache, the live connections and their
//! queues, and the event channel.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::{Mutex, broadcast, mpsc, oneshot, watch};

use super::{ConnectionId, ServerConfig, ServerEvent, ZdsError};
use crate::Workload;
use crate::session::AgentSession;
use crate::transport::Connection;
use crate::wire::Request;

/// What the cache remembers per uid and re-sends in every snapshot.
#[derive(Debug, Clone)]
pub(super) enum Cached {
    Add(Workload, Arc<OwnedFd>),
    Keep,
}

#[derive(Debug)]
pub(super) struct Job {
    pub(super) request: Request,
    pub(super) netns: Option<Arc<OwnedFd>>,
    pub(super) reply: oneshot::Sender<Result<(), ZdsError>>,
}

#[derive(Debug)]
pub(super) struct ConnHandle {
    pub(super) id: ConnectionId,
    pub(super) tx: mpsc::Sender<Job>,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) cache: BTreeMap<String, Cached>,
    /// Live connections, oldest first.
    pub(super) conns: Vec<ConnHandle>,
    pub(super) seeded: bool,
    /// Connections that said hello while the cache was not seeded yet.
    pub(super) parked: Vec<(ConnectionId, Connection, AgentSession)>,
    pub(super) closed: bool,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) config: ServerConfig,
    pub(super) state: Mutex<State>,
    pub(super) events: broadcast::Sender<ServerEvent>,
    pub(super) next_id: AtomicU64,
    pub(super) shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub(super) fn emit(&self, event: ServerEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }
}
