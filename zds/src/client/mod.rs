//! The proxy side over a real socket: connect, announce, apply, acknowledge, reconnect.
//!
//! [`Client`] keeps a connection to the agent up and hands every update to a
//! [`Handler`]; [`ClientConfig`] holds its settings.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::netns::verify_netns;
use crate::session::{ProxyAction, ProxySession};
use crate::transport::{Connection, RecvError};
use crate::wire::ReadError;
use crate::{Update, Workload};

mod backoff;
mod config;
mod error;
mod event;
mod handler;

pub use config::ClientConfig;
pub use error::ClientError;
pub use event::ClientEvent;
pub use handler::Handler;

use backoff::Backoff;

/// How many [`ClientEvent`]s a subscriber may fall behind before it loses the oldest.
const EVENT_CAPACITY: usize = 64;

/// The proxy side of ZDS: connects to the agent's socket and keeps a connection up,
/// handing every update to a [`Handler`].
///
/// Behaviour:
/// - connects with exponential back-off and jitter, forever, refuses a socket whose
///   owner is not a trusted agent ([`ClientConfig::agent_uids`]), and sends the hello
///   right away;
/// - hands each request to the handler in order and answers it with exactly one ack or
///   NACK, never sending anything else;
/// - on `SnapshotSent`, first deletes (through the handler) every workload it handed out
///   before that the new snapshot did not name;
/// - reconnects after every error: EOF, I/O errors, unreadable requests (NACKed with
///   `failure to read message : …`), failed non-add updates, and protocol errors
///   (NACKed with `failure to process message : ProtocolError("…")`). The next
///   connection starts from a fresh snapshot, so workloads the agent dropped meanwhile
///   are deleted. After a protocol error the back-off is not reset, so an agent that
///   keeps breaking the protocol is retried ever more slowly (up to
///   [`ClientConfig::max_backoff`]);
/// - reports every connection and every error as a [`ClientEvent`] and in its logs;
/// - reports readiness: the snapshot of the current connection was processed and no
///   add is pending.
///
/// A proxy usually starts the client only once its first xDS sync is complete, so that
/// every workload the snapshot names can be looked up right away.
pub struct Client<H> {
    config: ClientConfig,
    handler: H,
    ready: watch::Sender<bool>,
    events: broadcast::Sender<ClientEvent>,
}

impl<H> fmt::Debug for Client<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .field("ready", &*self.ready.borrow())
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Client<H> {
    /// A client that will hand updates to `handler`. Nothing happens until
    /// [`run`](Self::run).
    pub fn new(config: ClientConfig, handler: H) -> Self {
        let (ready, _) = watch::channel(false);
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Self {
            config,
            handler,
            ready,
            events,
        }
    }

    /// A receiver of the readiness flag (`true` while the snapshot of the current
    /// connection was processed and no add is pending).
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// A receiver of the client's [`ClientEvent`]s (connections, and why each attempt
    /// or connection ended). Subscribe before [`run`](Self::run).
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.events.subscribe()
    }

    /// Runs forever, reconnecting after every error. Drop the future to stop the
    /// client; every fd it holds is closed then.
    pub async fn run(mut self) -> Infallible {
        let mut session = ProxySession::<OwnedFd>::new();
        let mut retries = BTreeMap::new();
        let mut backoff = Backoff::new(&self.config);
        loop {
            let error = match self.connect().await {
                Err(e) => e,
                Ok(conn) => {
                    session.connect();
                    info!(path = %self.config.path.display(), "ZDS connected");
                    let _ = self.events.send(ClientEvent::Connected);
                    let mut was_ready = false;
                    let error = self
                        .serve(&conn, &mut session, &mut retries, &mut was_ready)
                        .await;
                    self.ready.send_replace(false);
                    retries.clear();
                    session.handle_disconnect();
                    if was_ready && !error.is_protocol() {
                        backoff.reset();
                    }
                    error
                }
            };
            let retry_in = backoff.next_delay();
            log_disconnect(&error, retry_in);
            let _ = self
                .events
                .send(ClientEvent::Disconnected { error, retry_in });
            tokio::time::sleep(retry_in).await;
        }
    }

    /// Connects and checks who owns the socket.
    async fn connect(&self) -> Result<Connection, ClientError> {
        let conn = Connection::connect(&self.config.path)
            .await
            .map_err(|e| ClientError::Connect(Arc::new(e)))?;
        let uid = conn
            .peer_uid()
            .map_err(|e| ClientError::PeerCredentials(Arc::new(e)))?;
        if !self.config.allows_agent(uid) {
            return Err(ClientError::AgentNotAllowed { uid });
        }
        Ok(conn)
    }

    /// Serves one connection until it ends; returns why.
    async fn serve(
        &mut self,
        conn: &Connection,
        session: &mut ProxySession<OwnedFd>,
        retries: &mut BTreeMap<String, (Workload, OwnedFd)>,
        was_ready: &mut bool,
    ) -> ClientError {
        let mut retry_at: Option<Instant> = None;
        loop {
            while let Some(action) = session.poll_action() {
                match action {
                    ProxyAction::Transmit(bytes) => {
                        if let Err(e) = conn.send(&bytes, None).await {
                            return ClientError::Send(Arc::new(e));
                        }
                    }
                    ProxyAction::Apply(update) => {
                        let outcome = self.apply(update, retries).await;
                        if let Err(e) = session.handle_complete(outcome) {
                            debug!(error = %e, "ZDS completion not accepted");
                        }
                    }
                    ProxyAction::Close(reason) => return ClientError::Closed(reason),
                }
            }
            let ready = session.is_ready();
            *was_ready |= ready;
            self.ready.send_if_modified(|current| {
                let changed = *current != ready;
                *current = ready;
                changed
            });
            // Only adds that are still pending are retried: the agent may have deleted
            // the workload meanwhile (during a snapshot that happens without an update).
            if !retries.is_empty() {
                let pending: BTreeSet<&str> = session.pending().collect();
                retries.retain(|uid, _| pending.contains(uid.as_str()));
            }
            match (self.config.retry_interval, retries.is_empty()) {
                (Some(interval), false) => {
                    if retry_at.is_none() {
                        // An interval too long to represent means "never".
                        retry_at = Instant::now().checked_add(interval);
                    }
                }
                _ => retry_at = None,
            }

            tokio::select! {
                received = conn.recv() => {
                    let fed = match received {
                        Ok(Some(datagram)) => session.handle_datagram(&datagram.bytes, datagram.fds),
                        Ok(None) => return ClientError::ClosedByAgent,
                        Err(RecvError::Truncated) => session.handle_read_error(ReadError::Truncated),
                        Err(RecvError::Io(e)) => return ClientError::Receive(Arc::new(e)),
                    };
                    if let Err(e) = fed {
                        debug!(error = %e, "ZDS datagram not accepted");
                    }
                }
                () = sleep_until(retry_at), if retry_at.is_some() => {
                    retry_at = None;
                    self.retry(session, retries).await;
                }
            }
        }
    }

    async fn apply(
        &mut self,
        update: Update,
        retries: &mut BTreeMap<String, (Workload, OwnedFd)>,
    ) -> Result<(), String> {
        match update {
            Update::Add { workload, netns } => {
                if self.config.verify_netns
                    && let Err(e) = verify_netns(netns.as_fd())
                {
                    warn!(%workload, error = %e, "rejecting netns fd");
                    return Err(e.to_string());
                }
                let copy = match self.config.retry_interval {
                    Some(_) => netns.try_clone().ok(),
                    None => None,
                };
                let uid = workload.uid.clone();
                let kept = copy.as_ref().map(|_| workload.clone());
                match self.handler.handle(Update::Add { workload, netns }).await {
                    Ok(()) => {
                        retries.remove(&uid);
                        Ok(())
                    }
                    Err(e) => {
                        let text = e.to_string();
                        warn!(%uid, error = %text, "workload failed to start");
                        if let (Some(workload), Some(copy)) = (kept, copy) {
                            retries.insert(uid, (workload, copy));
                        }
                        Err(text)
                    }
                }
            }
            Update::Del { uid } => {
                retries.remove(&uid);
                self.handler
                    .handle(Update::Del { uid })
                    .await
                    .map_err(|e| e.to_string())
            }
            other => self.handler.handle(other).await.map_err(|e| e.to_string()),
        }
    }

    async fn retry(
        &mut self,
        session: &mut ProxySession<OwnedFd>,
        retries: &mut BTreeMap<String, (Workload, OwnedFd)>,
    ) {
        for (uid, (workload, fd)) in std::mem::take(retries) {
            let netns = match fd.try_clone() {
                Ok(netns) => netns,
                Err(e) => {
                    debug!(%uid, error = %e, "cannot duplicate netns fd for a retry");
                    retries.insert(uid, (workload, fd));
                    continue;
                }
            };
            let update = Update::Add {
                workload: workload.clone(),
                netns,
            };
            match self.handler.handle(update).await {
                Ok(()) => {
                    info!(%uid, "pending workload started on retry");
                    session.resolve_pending(&uid);
                }
                Err(e) => {
                    debug!(%uid, error = %e, "pending workload still fails");
                    retries.insert(uid, (workload, fd));
                }
            }
        }
    }
}

/// Logs why a connection attempt failed or a connection ended: failed connects (the
/// agent not being up yet is normal) at debug level, an agent closing at info, the rest
/// as warnings.
fn log_disconnect(error: &ClientError, retry_in: Duration) {
    let retry_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX);
    match error {
        ClientError::Connect(_) => debug!(%error, retry_ms, "ZDS connect failed"),
        ClientError::ClosedByAgent => info!(%error, retry_ms, "ZDS reconnecting"),
        ClientError::AgentNotAllowed { uid } => error!(
            %error,
            uid,
            retry_ms,
            "ZDS socket not owned by a trusted agent; if uid {uid} is the agent's, allow it"
        ),
        _ => warn!(%error, retry_ms, "ZDS reconnecting"),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
