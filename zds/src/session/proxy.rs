//! The proxy side of a ZDS connection.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;

use super::SessionError;
use crate::Update;
use crate::wire::{
    Hello, ProtocolError, ReadError, Request, RequestError, Response, process_failure_text,
    protocol_failure_text, read_failure_text, start_failure_text,
};

/// Something the driver of a [`ProxySession`] must do, in the order returned by
/// [`ProxySession::poll_action`].
#[derive(Debug)]
#[non_exhaustive]
pub enum ProxyAction<F> {
    /// Send these bytes as one datagram, without ancillary data.
    Transmit(Vec<u8>),
    /// Apply this update in the application, then report the outcome with
    /// [`ProxySession::handle_complete`]. No further action is produced until then.
    Apply(Update<F>),
    /// Close the connection (after sending everything transmitted before).
    Close(CloseReason),
}

/// Why a [`ProxySession`] asked for its connection to be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// A request could not be read. Reconnect.
    Read(ReadError),
    /// The application failed to process a request other than an add. Reconnect.
    Processing(String),
    /// The agent broke the protocol. Reconnect (with back-off): the next connection
    /// starts from a fresh snapshot, which reconciles the workloads the application holds.
    Protocol(ProtocolError),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(e) => write!(f, "unreadable request: {e}"),
            Self::Processing(e) => write!(f, "request processing failed: {e}"),
            Self::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

/// What the session waits for from the application.
#[derive(Debug)]
enum Step {
    /// Ready for the next request.
    Idle,
    /// An `Update::Add` is being applied.
    Add { uid: String },
    /// An `Update::Keep` is being applied.
    Keep,
    /// An `Update::Del` for a steady-state delete is being applied.
    Del { uid: String },
    /// Reconciliation: an `Update::Del` for `uid` is being applied; `rest` follow.
    Reconcile { uid: String, rest: Vec<String> },
    /// The `Update::SnapshotSent` is being applied.
    SnapshotSent,
    /// A close was requested; nothing more is accepted on this connection.
    Closing,
}

/// The proxy side of ZDS as a state machine without I/O.
///
/// One value lives for the whole life of the proxy process and is reused across
/// connections: it remembers which workloads the application was given (so that the
/// snapshot of a later connection can reconcile them), while the per-connection state
/// (snapshot received, uids named in the snapshot, workloads that failed to start) is
/// reset by every [`connect`](Self::connect).
///
/// Driving it:
///
/// 1. After the socket connects, call [`connect`](Self::connect).
/// 2. Loop on [`poll_action`](Self::poll_action) until it returns `None`:
///    [`Transmit`](ProxyAction::Transmit) bytes,
///    [`Apply`](ProxyAction::Apply) updates and answer each with
///    [`handle_complete`](Self::handle_complete), and on
///    [`Close`](ProxyAction::Close) drop the socket and reconnect (whatever the
///    [reason](CloseReason)).
/// 3. Read one datagram and pass it to [`handle_datagram`](Self::handle_datagram) (or a
///    transport-level read failure such as truncation to
///    [`handle_read_error`](Self::handle_read_error)); go to 2.
/// 4. On EOF or an I/O error call [`handle_disconnect`](Self::handle_disconnect).
///
/// Every request produces exactly one response transmit. Rules applied (all per
/// connection):
///
/// | request | before `SnapshotSent` | after `SnapshotSent` |
/// |---|---|---|
/// | add | remembered as named; applied | applied |
/// | keep | remembered as named; applied | protocol error |
/// | del | forgotten as named, not applied (reconciliation decides) | applied |
/// | snapshot-sent | every earlier workload not named is deleted, then applied | protocol error |
///
/// A failed add is acknowledged with a NACK (`failure to start proxy : <error>`), keeps
/// the connection, and leaves the uid *pending* until it is deleted, added again
/// successfully, or [resolved](Self::resolve_pending). Any other failed update NACKs
/// (`failure to process message : <error>`) and closes the connection.
#[derive(Debug)]
pub struct ProxySession<F> {
    connected: bool,
    snapshot_received: bool,
    snapshot_names: BTreeSet<String>,
    pending: BTreeSet<String>,
    known: BTreeSet<String>,
    step: Step,
    actions: VecDeque<ProxyAction<F>>,
}

impl<F> Default for ProxySession<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F> ProxySession<F> {
    /// A session with no connection and no known workloads.
    pub fn new() -> Self {
        Self {
            connected: false,
            snapshot_received: false,
            snapshot_names: BTreeSet::new(),
            pending: BTreeSet::new(),
            known: BTreeSet::new(),
            step: Step::Idle,
            actions: VecDeque::new(),
        }
    }

    /// Starts a new connection: resets the per-connection state and queues the hello.
    ///
    /// Allowed after any close, protocol errors included: the workloads the application
    /// was given are remembered, and the snapshot of the new connection reconciles them.
    pub fn connect(&mut self) {
        self.connected = true;
        self.snapshot_received = false;
        self.snapshot_names.clear();
        self.pending.clear();
        self.actions.clear();
        self.step = Step::Idle;
        self.actions
            .push_back(ProxyAction::Transmit(Hello::V1.encode()));
    }

    /// The connection ended (EOF or I/O error). Queued actions are dropped, which closes
    /// any netns fd they held.
    pub fn handle_disconnect(&mut self) {
        self.connected = false;
        self.snapshot_received = false;
        self.snapshot_names.clear();
        self.pending.clear();
        self.actions.clear();
        self.step = Step::Idle;
    }

    /// Feeds one received datagram: its bytes and the file descriptors that came with
    /// it. Descriptors not handed to the application are dropped here (closing them
    /// when `F` is an [`OwnedFd`](std::os::fd::OwnedFd)).
    ///
    /// Errors only describe calls in the wrong state; everything about the datagram
    /// itself is answered through actions.
    pub fn handle_datagram(&mut self, bytes: &[u8], fds: Vec<F>) -> Result<(), SessionError> {
        self.check_accepting()?;
        match Request::decode(bytes, fds.len()) {
            Ok(request) => self.handle_request(request, fds.into_iter().next()),
            Err(RequestError::Read(e)) => self.fail_read(e),
            Err(RequestError::Protocol(e)) => self.fail_protocol(e),
        }
        Ok(())
    }

    /// Feeds a read failure detected below the codec (for example a truncated datagram):
    /// the session NACKs it and asks for the connection to be closed.
    pub fn handle_read_error(&mut self, err: ReadError) -> Result<(), SessionError> {
        self.check_accepting()?;
        self.fail_read(err);
        Ok(())
    }

    /// Reports the outcome of the last [`ProxyAction::Apply`]. An error is turned into
    /// NACK text with its `Display` form.
    pub fn handle_complete<E: fmt::Display>(
        &mut self,
        outcome: Result<(), E>,
    ) -> Result<(), SessionError> {
        if !self.connected {
            return Err(SessionError::NotConnected);
        }
        let outcome = outcome.map_err(|e| e.to_string());
        match std::mem::replace(&mut self.step, Step::Idle) {
            Step::Add { uid } => match outcome {
                Ok(()) => {
                    self.pending.remove(&uid);
                    self.ack();
                }
                Err(e) => {
                    self.pending.insert(uid);
                    self.nack(start_failure_text(&e));
                }
            },
            Step::Keep if outcome.is_ok() => self.ack(),
            Step::SnapshotSent if outcome.is_ok() => {
                self.snapshot_received = true;
                self.snapshot_names.clear();
                self.ack();
            }
            Step::Del { uid } if outcome.is_ok() => {
                self.known.remove(&uid);
                self.ack();
            }
            Step::Reconcile { uid, rest } if outcome.is_ok() => {
                self.known.remove(&uid);
                self.reconcile_next(rest);
            }
            Step::Keep | Step::SnapshotSent | Step::Del { .. } | Step::Reconcile { .. } => {
                let e = outcome.err().unwrap_or_default();
                self.nack(process_failure_text(&e));
                self.close(CloseReason::Processing(e));
            }
            step @ (Step::Idle | Step::Closing) => {
                self.step = step;
                return Err(SessionError::Unexpected);
            }
        }
        Ok(())
    }

    /// Marks a pending workload as started (for example after the application retried
    /// it successfully). Returns whether `uid` was pending.
    pub fn resolve_pending(&mut self, uid: &str) -> bool {
        self.pending.remove(uid)
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<ProxyAction<F>> {
        self.actions.pop_front()
    }

    /// Whether the proxy is ready: connected, the snapshot of this connection was fully
    /// processed, and no workload is pending.
    pub fn is_ready(&self) -> bool {
        self.connected
            && self.snapshot_received
            && self.pending.is_empty()
            && !matches!(self.step, Step::Closing)
    }

    /// Whether a connection is open.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether `SnapshotSent` was processed on this connection.
    pub fn snapshot_received(&self) -> bool {
        self.snapshot_received
    }

    /// Uids whose add failed on this connection and has not been resolved.
    pub fn pending(&self) -> impl Iterator<Item = &str> {
        self.pending.iter().map(String::as_str)
    }

    /// Uids the application was given with an add and not yet told to delete. They
    /// survive reconnects and feed snapshot reconciliation.
    pub fn known(&self) -> impl Iterator<Item = &str> {
        self.known.iter().map(String::as_str)
    }

    fn check_accepting(&self) -> Result<(), SessionError> {
        if !self.connected {
            return Err(SessionError::NotConnected);
        }
        match self.step {
            Step::Idle => Ok(()),
            Step::Closing => Err(SessionError::NotConnected),
            _ => Err(SessionError::Busy),
        }
    }

    fn handle_request(&mut self, request: Request, fd: Option<F>) {
        match request {
            Request::Add(workload) => {
                let Some(netns) = fd else {
                    // `Request::decode` guarantees the fd; stay defensive anyway.
                    self.fail_read(ReadError::MissingFd);
                    return;
                };
                if !self.snapshot_received {
                    self.snapshot_names.insert(workload.uid.clone());
                }
                self.known.insert(workload.uid.clone());
                self.step = Step::Add {
                    uid: workload.uid.clone(),
                };
                self.actions
                    .push_back(ProxyAction::Apply(Update::Add { workload, netns }));
            }
            Request::Keep { uid } => {
                if self.snapshot_received {
                    self.fail_protocol(ProtocolError::KeepAfterSnapshot);
                    return;
                }
                self.snapshot_names.insert(uid.clone());
                self.step = Step::Keep;
                self.actions
                    .push_back(ProxyAction::Apply(Update::Keep { uid }));
            }
            Request::Del { uid } => {
                self.pending.remove(&uid);
                if self.snapshot_received {
                    self.step = Step::Del { uid: uid.clone() };
                    self.actions
                        .push_back(ProxyAction::Apply(Update::Del { uid }));
                } else {
                    // Reconciliation at `SnapshotSent` removes it if it is running.
                    self.snapshot_names.remove(&uid);
                    self.ack();
                }
            }
            Request::SnapshotSent => {
                if self.snapshot_received {
                    self.fail_protocol(ProtocolError::SnapshotAlreadyReceived);
                    return;
                }
                let mut stale: Vec<String> = self
                    .known
                    .difference(&self.snapshot_names)
                    .cloned()
                    .collect();
                // Deleted in order, one at a time.
                stale.reverse();
                self.reconcile_next(stale);
            }
        }
    }

    /// `rest` is in reverse order: the next uid to delete is at the end.
    fn reconcile_next(&mut self, mut rest: Vec<String>) {
        if let Some(uid) = rest.pop() {
            self.step = Step::Reconcile {
                uid: uid.clone(),
                rest,
            };
            self.actions
                .push_back(ProxyAction::Apply(Update::Del { uid }));
        } else {
            self.step = Step::SnapshotSent;
            self.actions
                .push_back(ProxyAction::Apply(Update::SnapshotSent));
        }
    }

    fn ack(&mut self) {
        self.actions
            .push_back(ProxyAction::Transmit(Response::Ack.encode()));
    }

    fn nack(&mut self, text: String) {
        self.actions
            .push_back(ProxyAction::Transmit(Response::nack(text).encode()));
    }

    fn close(&mut self, reason: CloseReason) {
        self.step = Step::Closing;
        self.connected = false;
        self.actions.push_back(ProxyAction::Close(reason));
    }

    fn fail_read(&mut self, err: ReadError) {
        self.nack(read_failure_text(&err));
        self.close(CloseReason::Read(err));
    }

    fn fail_protocol(&mut self, err: ProtocolError) {
        self.nack(protocol_failure_text(&err));
        self.close(CloseReason::Protocol(err));
    }
}
