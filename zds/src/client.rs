//! The proxy side over a real socket: connect, announce, apply, acknowledge, reconnect.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::codec::ReadError;
use crate::error::ClientError;
use crate::netns::verify_netns;
use crate::session::{CloseReason, ProxyAction, ProxySession};
use crate::transport::{Connection, RecvError};
use crate::types::{Update, Workload};

/// Default path of the ZDS socket.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/ztunnel/ztunnel.sock";

/// The application side of a [`Client`]: applies each update and reports the outcome.
///
/// `Ok(())` is acknowledged to the agent; an error is sent back as a NACK carrying the
/// error's `Display` text. A failed add leaves the workload *pending* (the proxy is not
/// ready) and is retried; any other failure makes the client reconnect, which brings a
/// fresh snapshot.
///
/// Implemented for every `FnMut(Update) -> impl Future<Output = Result<(), E>>` closure,
/// so a closure is usually enough:
///
/// ```
/// # fn f() -> meshwire_zds::Client<impl meshwire_zds::Handler> {
/// let client = meshwire_zds::Client::new(meshwire_zds::ClientConfig::default(), |update: meshwire_zds::Update| async move {
///     match update {
///         meshwire_zds::Update::Add { workload, netns } => { /* open listeners in netns */ }
///         meshwire_zds::Update::Del { uid } => { /* drain the workload */ }
///         _ => {}
///     }
///     Ok::<(), std::io::Error>(())
/// });
/// # client }
/// ```
///
/// or, with state, a type implementing the trait with an `async fn`:
///
/// ```
/// use std::collections::HashMap;
/// use std::os::fd::OwnedFd;
///
/// #[derive(Default)]
/// struct Proxies {
///     running: HashMap<String, OwnedFd>,
/// }
///
/// impl meshwire_zds::Handler for Proxies {
///     type Error = std::io::Error;
///
///     async fn handle(&mut self, update: meshwire_zds::Update) -> Result<(), std::io::Error> {
///         match update {
///             meshwire_zds::Update::Add { workload, netns } => {
///                 self.running.insert(workload.uid, netns);
///             }
///             meshwire_zds::Update::Del { uid } => {
///                 self.running.remove(&uid);
///             }
///             _ => {}
///         }
///         Ok(())
///     }
/// }
///
/// let client = meshwire_zds::Client::new(meshwire_zds::ClientConfig::default(), Proxies::default());
/// # drop(client);
/// ```
///
/// Agents wait a few seconds (5 s upstream) for each answer and drop the connection past
/// that, so a handler should finish well within that time.
pub trait Handler: Send {
    /// The error a failed update reports; its `Display` text becomes the NACK text.
    type Error: fmt::Display + Send;

    /// Applies one update.
    fn handle(&mut self, update: Update) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

impl<Func, Fut, E> Handler for Func
where
    Func: FnMut(Update) -> Fut + Send,
    Fut: Future<Output = Result<(), E>> + Send,
    E: fmt::Display + Send,
{
    type Error = E;

    fn handle(&mut self, update: Update) -> impl Future<Output = Result<(), E>> + Send {
        self(update)
    }
}

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    path: PathBuf,
    initial_backoff: Duration,
    max_backoff: Duration,
    retry_interval: Option<Duration>,
    verify_netns: bool,
}

impl Default for ClientConfig {
    /// `path` [`DEFAULT_SOCKET_PATH`], back-off from 10 ms doubling up to 15 s, pending
    /// adds retried every 5 s, netns verification off.
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_SOCKET_PATH),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(15),
            retry_interval: Some(Duration::from_secs(5)),
            verify_netns: false,
        }
    }
}

impl ClientConfig {
    /// The socket to connect to. Default [`DEFAULT_SOCKET_PATH`].
    pub fn path(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.path = path.into();
        self
    }

    /// Back-off before reconnecting: starts at `initial`, doubles before each wait, is
    /// capped at `max`, and restarts at `initial` once a connection became ready.
    /// Default 10 ms and 15 s (so the first wait is 20 ms).
    pub fn backoff(&mut self, initial: Duration, max: Duration) -> &mut Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// How often adds the handler failed are offered to it again, with a duplicate of
    /// the same netns fd; `None` disables retries (a failed add then stays pending until
    /// the agent deletes or re-adds it, or the connection is replaced). Default 5 s.
    pub fn retry_interval(&mut self, interval: Option<Duration>) -> &mut Self {
        self.retry_interval = interval;
        self
    }

    /// Whether to check every received netns fd with [`verify_netns`](crate::verify_netns)
    /// before the handler sees it. An fd that fails is not handed out: the add is NACKed
    /// as a start failure and stays pending. Default off.
    pub fn verify_netns(&mut self, verify: bool) -> &mut Self {
        self.verify_netns = verify;
        self
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }
}

/// Why a connection ended.
enum Outcome {
    Reconnect,
    Terminal(crate::ProtocolError),
}

/// The proxy side of ZDS: connects to the agent's socket and keeps a connection up,
/// handing every update to a [`Handler`].
///
/// Behaviour:
/// - connects with exponential back-off, forever, and sends the hello right away;
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
        let mut delay = self.config.initial_backoff;
        loop {
            let conn = match Connection::connect(&self.config.path).await {
                Ok(conn) => conn,
                Err(e) => {
                    debug!(path = %self.config.path.display(), error = %e, "ZDS connect failed");
                    delay = self.wait(delay).await;
                    continue;
                }
            };
            if let Err(e) = session.connect() {
                // Only possible after a protocol error, which returned below already.
                warn!(error = %e, "ZDS session refused to reconnect");
                return Err(session
                    .terminated()
                    .cloned()
                    .unwrap_or(crate::ProtocolError::UnsolicitedMessage)
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
                        delay = self.config.initial_backoff;
                    }
                    delay = self.wait(delay).await;
                }
            }
        }
    }

    /// Doubles `delay` (capped), sleeps that long, and returns the new delay.
    async fn wait(&self, delay: Duration) -> Duration {
        let next = delay.saturating_mul(2).min(self.config.max_backoff);
        tokio::time::sleep(next).await;
        next
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
