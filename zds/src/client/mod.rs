//! The proxy side over a real socket: connect, announce, apply, acknowledge, reconnect.
//!
//! [`Client`] keeps a connection to the agent up and hands every update to a
//! [`Handler`]; [`ClientConfig`] holds its settings.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::netns::verify_netns;
use crate::session::{CloseReason, ProxyAction, ProxySession};
use crate::transport::{Connection, RecvError};
use crate::wire::{ProtocolError, ReadError};
use crate::{Update, Workload};

mod backoff;
mod config;
mod error;
mod handler;

pub use config::ClientConfig;
pub use error::ClientError;
pub use handler::Handler;

use backoff::Backoff;

/// Why a connection ended.
enum Outcome {
    Reconnect,
    Terminal(ProtocolError),
}

/// The proxy side of ZDS: connects to the agent's socket and keeps a connection up,
/// handing every update to a [`Handler`].
///
/// Behaviour:
/// - connects with exponential back-off and jitter, forever, and sends the hello right
///   away;
/// - hands each request to the handler in order and answers it with exactly one ack or
///   NACK, never sending anything else;
/// - on `SnapshotSent`, first deletes (through the handler) every workload it handed out
///   before that the new snapshot did not name;
/// - reconnects after EOF, I/O errors, unreadable requests (NACKed with
///   `failure to read message : …`) and failed non-add updates;
/// - stops for good after a protocol error (NACKed with
///   `failure to process message : ProtocolError("…")`): [`run`](Self::run) returns it;
/// - reports readiness: the snapshot of the current connection was processed and no
///   add is pending.
///
/// A proxy usually starts the client only once its first xDS sync is complete, so that
/// every workload the snapshot names can be looked up right away.
pub struct Client<H> {
    config: ClientConfig,
    handler: H,
    ready: watch::Sender<bool>,
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
        Self {
            config,
            handler,
            ready,
        }
    }

    /// A receiver of the readiness flag (`true` while the snapshot of the current
    /// connection was processed and no add is pending).
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Runs until a protocol error. Drop the future to stop the client; every fd it
    /// holds is closed then.
    pub async fn run(mut self) -> Result<Infallible, ClientError> {
        let mut session = ProxySession::<OwnedFd>::new();
        let mut retries = BTreeMap::new();
        let mut backoff = Backoff::new(&self.config);
        loop {
            let conn = match Connection::connect(&self.config.path).await {
                Ok(conn) => conn,
                Err(e) => {
                    debug!(path = %self.config.path.display(), error = %e, "ZDS connect failed");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            if let Err(e) = session.connect() {
                // Only possible after a protocol error, which returned below already.
                warn!(error = %e, "ZDS session refused to reconnect");
                return Err(session
                    .terminated()
                    .cloned()
                    .unwrap_or(ProtocolError::UnsolicitedMessage)
                    .into());
            }
            info!(path = %self.config.path.display(), "ZDS connected");
            let mut was_ready = false;
            let outcome = self
                .serve(&conn, &mut session, &mut retries, &mut was_ready)
                .await;
            self.ready.send_replace(false);
            retries.clear();
            session.handle_disconnect();
            match outcome {
                Outcome::Terminal(e) => {
                    warn!(error = %e, "ZDS protocol error; not reconnecting");
                    return Err(e.into());
                }
                Outcome::Reconnect => {
                    if was_ready {
                        backoff.reset();
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    async fn serve(
        &mut self,
        conn: &Connection,
        session: &mut ProxySession<OwnedFd>,
        retries: &mut BTreeMap<String, (Workload, OwnedFd)>,
        was_ready: &mut bool,
    ) -> Outcome {
        let mut retry_at: Option<Instant> = None;
        loop {
            while let Some(action) = session.poll_action() {
                match action {
                    ProxyAction::Transmit(bytes) => {
                        if let Err(e) = conn.send(&bytes, None).await {
                            warn!(error = %e, "ZDS send failed; reconnecting");
                            return Outcome::Reconnect;
                        }
                    }
                    ProxyAction::Apply(update) => {
                        let outcome = self.apply(update, retries).await;
                        if let Err(e) = session.handle_complete(outcome) {
                            debug!(error = %e, "ZDS completion not accepted");
                        }
                    }
                    ProxyAction::Close(reason) => {
                        warn!(%reason, "closing ZDS connection");
                        return match reason {
                            CloseReason::Protocol(e) => Outcome::Terminal(e),
                            _ => Outcome::Reconnect,
                        };
                    }
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
                        Ok(None) => {
                            info!("ZDS connection closed by the agent; reconnecting");
                            return Outcome::Reconnect;
                        }
                        Err(RecvError::Truncated) => session.handle_read_error(ReadError::Truncated),
                        Err(RecvError::Io(e)) => {
                            warn!(error = %e, "ZDS receive failed; reconnecting");
                            return Outcome::Reconnect;
                        }
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
