//! The agent side over a real socket: listen, snapshot every proxy, deliver updates.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_seqpacket::UnixSeqpacketListener;
use tracing::{debug, info, warn};

use crate::client::DEFAULT_SOCKET_PATH;
use crate::codec::{Hello, Request, Response};
use crate::error::{BindError, ZdsError};
use crate::session::AgentSession;
use crate::transport::Connection;
use crate::types::Workload;

/// Which peers a [`Server`] serves, by the uid the kernel reports for the process that
/// connected (`SO_PEERCRED`, taken at `connect`). Refused peers are logged, reported as
/// [`ServerEvent::Refused`] and closed before anything is read or sent.
///
/// This adds to the socket file's mode (0600, owner only), which processes with
/// `CAP_DAC_OVERRIDE` or a mount of the socket elsewhere can get around.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerUids {
    /// uid 0 and the server process's effective uid. The default.
    #[default]
    RootAndSelf,
    /// Only these uids.
    Only(Vec<u32>),
    /// Every peer that can open the socket (no check).
    Any,
}

impl PeerUids {
    /// Whether a peer running as `uid` is served.
    pub fn allows(&self, uid: u32) -> bool {
        match self {
            Self::RootAndSelf => uid == 0 || uid == nix::unistd::geteuid().as_raw(),
            Self::Only(uids) => uids.contains(&uid),
            Self::Any => true,
        }
    }
}

/// Settings of a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    path: PathBuf,
    peer_uids: PeerUids,
    hello_timeout: Duration,
    ack_timeout: Duration,
    queue_capacity: usize,
    wait_for_seed: bool,
    event_capacity: usize,
}

impl Default for ServerConfig {
    /// `path` [`DEFAULT_SOCKET_PATH`], hello timeout 5 s, ack timeout 5 s, 100 queued
    /// requests per connection, snapshots not held for seeding, 256 buffered events, peers
    /// [`PeerUids::RootAndSelf`].
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_SOCKET_PATH),
            peer_uids: PeerUids::RootAndSelf,
            hello_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(5),
            queue_capacity: 100,
            wait_for_seed: false,
            event_capacity: 256,
        }
    }
}

impl ServerConfig {
    /// Where to listen. The parent directory is created (mode 0755) and a stale socket
    /// file is replaced. Default [`DEFAULT_SOCKET_PATH`].
    pub fn path(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.path = path.into();
        self
    }

    /// Which peers are served, by their uid. Default [`PeerUids::RootAndSelf`].
    pub fn peer_uids(&mut self, uids: PeerUids) -> &mut Self {
        self.peer_uids = uids;
        self
    }

    /// How long a new connection may take to send its hello. Default 5 s.
    pub fn hello_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.hello_timeout = timeout;
        self
    }

    /// How long sending one request and receiving its answer may take; past it the
    /// connection is closed (lock-step is lost). Default 5 s.
    pub fn ack_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.ack_timeout = timeout;
        self
    }

    /// Requests queued per connection before callers wait. Default 100 (at least 1).
    pub fn queue_capacity(&mut self, capacity: usize) -> &mut Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    /// Hold the snapshot of every connection until [`Server::mark_seeded`] is called, so
    /// that a proxy connecting while the agent is still loading its workloads does not
    /// get a partial snapshot (which would make it drop the rest). Default off.
    pub fn wait_for_seed(&mut self, wait: bool) -> &mut Self {
        self.wait_for_seed = wait;
        self
    }

    /// Events buffered per [`Server::subscribe`] receiver before it starts missing
    /// them. Default 256 (at least 1).
    pub fn event_capacity(&mut self, capacity: usize) -> &mut Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }
}

/// Identifies one accepted proxy connection; later connections have larger ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zds-conn-{}", self.0)
    }
}

/// Something that happened on the server, for logs, metrics and for callers that need
/// to know when a snapshot reached a proxy.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A proxy connected.
    Connected {
        /// The connection.
        id: ConnectionId,
    },
    /// A proxy acknowledged a whole snapshot (`SnapshotSent` answered).
    SnapshotDone {
        /// The connection.
        id: ConnectionId,
        /// Adds and keeps in the snapshot.
        workloads: usize,
        /// Uids in the snapshot whose add or keep the proxy NACKed.
        nacked: Vec<String>,
    },
    /// A proxy NACKed a request. Callers of [`Server::add`] and [`Server::del`] get the
    /// text as their error as well; snapshot NACKs are reported only here.
    Nacked {
        /// The connection.
        id: ConnectionId,
        /// The uid of the request, if it had one.
        uid: Option<String>,
        /// The proxy's text.
        message: String,
    },
    /// A peer was refused by [`ServerConfig::peer_uids`] and closed. It got no
    /// [`ConnectionId`] and no other event.
    Refused {
        /// The peer's uid, or `None` when the kernel did not report its credentials.
        uid: Option<u32>,
        /// The peer's process id, when known.
        pid: Option<i32>,
    },
    /// A connection ended.
    Disconnected {
        /// The connection.
        id: ConnectionId,
        /// Why, or `None` for a clean end of stream or shutdown.
        error: Option<ZdsError>,
    },
}

/// What the cache remembers per uid and re-sends in every snapshot.
#[derive(Debug, Clone)]
enum Cached {
    Add(Workload, Arc<OwnedFd>),
    Keep,
}

#[derive(Debug)]
struct Job {
    request: Request,
    netns: Option<Arc<OwnedFd>>,
    reply: oneshot::Sender<Result<(), ZdsError>>,
}

#[derive(Debug)]
struct ConnHandle {
    id: ConnectionId,
    tx: mpsc::Sender<Job>,
}

#[derive(Debug)]
struct State {
    cache: BTreeMap<String, Cached>,
    /// Live connections, oldest first.
    conns: Vec<ConnHandle>,
    seeded: bool,
    /// Connections that said hello while the cache was not seeded yet.
    parked: Vec<(ConnectionId, Connection, AgentSession)>,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    config: ServerConfig,
    state: Mutex<State>,
    events: broadcast::Sender<ServerEvent>,
    next_id: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn emit(&self, event: ServerEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }
}

/// The agent side of ZDS: listens on the socket, sends every connecting proxy a full
/// snapshot of the workloads it holds, and delivers adds and deletes.
///
/// - The server keeps a cache of workloads (uid → workload and netns fd); every new
///   connection gets the whole cache as its snapshot, so a reconnecting or restarted
///   proxy always converges.
/// - [`add`](Self::add) goes to the newest connection only, [`del`](Self::del) to all
///   of them: during a rolling upgrade the new proxy takes new pods while the old one
///   keeps serving until its pods are deleted or it exits. A connection joins (and takes
///   its snapshot of the cache) when its hello arrives.
/// - Each connection is served lock-step from its own bounded queue; a request that is
///   not answered within the ack timeout closes that connection.
/// - A misbehaving proxy only loses its own connection.
///
/// Dropping the server stops it and closes every connection and cached fd.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on the configured path: creates the parent directory (0755), replaces a
    /// stale socket file, binds, and restricts the socket to its owner (0600).
    ///
    /// A path that exists and is not a socket is left alone and reported as an error.
    /// Must be called inside a Tokio runtime.
    pub async fn bind(config: ServerConfig) -> Result<Self, BindError> {
        let path = config.path.clone();
        let listener = listen(&path).map_err(|source| BindError {
            path: path.clone(),
            source,
        })?;
        info!(path = %path.display(), "ZDS server listening");
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (events, _) = broadcast::channel(config.event_capacity);
        let seeded = !config.wait_for_seed;
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State {
                cache: BTreeMap::new(),
                conns: Vec::new(),
                seeded,
                parked: Vec::new(),
                closed: false,
            }),
            events,
            next_id: AtomicU64::new(1),
            shutdown: shutdown_rx,
        });
        let accept_task = tokio::spawn(accept_loop(shared.clone(), listener));
        Ok(Self {
            shared,
            shutdown,
            accept_task: Some(accept_task),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.shared.config.path
    }

    /// Receives [`ServerEvent`]s from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ServerEvent> {
        self.shared.events.subscribe()
    }

    /// Records `workload` with its network namespace and sends an `AddWorkload` (with
    /// `netns` as `SCM_RIGHTS`) to the newest connected proxy, waiting for its answer.
    ///
    /// The workload is recorded whatever the outcome (replacing an earlier entry for the
    /// same uid), so every later snapshot carries it until [`del`](Self::del). The server
    /// keeps `netns` open until then.
    ///
    /// A connection counts from its hello on (a peer that connects and stays silent never
    /// receives adds). If the newest connection is still receiving its snapshot, the add
    /// waits in its queue until the snapshot is done. Callers that need an overall deadline wrap the
    /// call in `tokio::time::timeout`; the request stays queued and is still delivered.
    ///
    /// Errors: [`ZdsError::Nack`] with the proxy's text; [`ZdsError::NoProxy`] when no
    /// proxy is connected (the next one gets it in its snapshot);
    /// [`ZdsError::Encode`] when the request does not fit a datagram (nothing is
    /// recorded); [`ZdsError::Timeout`], [`ZdsError::ConnectionClosed`] and others when
    /// the connection failed (it is closed and the proxy's reconnect brings a snapshot).
    pub async fn add(&self, workload: Workload, netns: OwnedFd) -> Result<(), ZdsError> {
        let request = Request::Add(workload.clone());
        request.encode()?;
        let netns = Arc::new(netns);
        let reply = {
            let mut state = self.shared.state.lock().await;
            if state.closed {
                return Err(ZdsError::Shutdown);
            }
            state
                .cache
                .insert(workload.uid.clone(), Cached::Add(workload, netns.clone()));
            let mut job = Job {
                request,
                netns: Some(netns),
                reply: oneshot::channel().0,
            };
            let mut delivered = None;
            for conn in state.conns.iter().rev() {
                let (tx, rx) = oneshot::channel();
                job.reply = tx;
                match conn.tx.send(job).await {
                    Ok(()) => {
                        delivered = Some(rx);
                        break;
                    }
                    // That connection is closing; try the next newest.
                    Err(mpsc::error::SendError(back)) => job = back,
                }
            }
            delivered.ok_or(ZdsError::NoProxy)?
        };
        reply.await.unwrap_or(Err(ZdsError::ConnectionClosed))
    }

    /// Forgets `uid` (closing its netns fd) and sends a `DelWorkload` to every connected
    /// proxy, waiting for all answers.
    ///
    /// Succeeds when no proxy NACKed it, including when none is connected. A connection
    /// that fails instead of answering is closed, and the snapshot of its reconnect no
    /// longer names `uid`, which removes it there as well; that is not an error. If
    /// several proxies NACK, the first text is returned (all are in the events).
    pub async fn del(&self, uid: &str) -> Result<(), ZdsError> {
        let request = Request::Del {
            uid: uid.to_owned(),
        };
        request.encode()?;
        let replies = {
            let mut state = self.shared.state.lock().await;
            if state.closed {
                return Err(ZdsError::Shutdown);
            }
            state.cache.remove(uid);
            let mut replies = Vec::with_capacity(state.conns.len());
            for conn in &state.conns {
                let (tx, rx) = oneshot::channel();
                let job = Job {
                    request: request.clone(),
                    netns: None,
                    reply: tx,
                };
                if conn.tx.send(job).await.is_ok() {
                    replies.push(rx);
                }
            }
            replies
        };
        let mut nack = None;
        for reply in replies {
            match reply.await {
                Ok(Ok(())) => {}
                Ok(Err(ZdsError::Nack(text))) => {
                    nack.get_or_insert(text);
                }
                Ok(Err(e)) => debug!(%uid, error = %e, "delete not answered; connection closed"),
                Err(_) => debug!(%uid, "delete not answered; connection closed"),
            }
        }
        match nack {
            Some(text) => Err(ZdsError::Nack(text)),
            None => Ok(()),
        }
    }

    /// Records `uid` as a pod that still exists but whose network namespace this agent
    /// cannot open (for example after an agent restart). Snapshots carry it as
    /// `KeepWorkload`, so a proxy keeps what it runs for it instead of dropping it. It
    /// replaces an add recorded for the same uid. Nothing is sent now: a keep is only
    /// valid inside a snapshot.
    pub async fn keep(&self, uid: &str) -> Result<(), ZdsError> {
        let mut state = self.shared.state.lock().await;
        if state.closed {
            return Err(ZdsError::Shutdown);
        }
        state.cache.insert(uid.to_owned(), Cached::Keep);
        Ok(())
    }

    /// Declares the cache complete. With [`ServerConfig::wait_for_seed`], connections
    /// accepted so far get their snapshots now, and later ones right away.
    pub async fn mark_seeded(&self) {
        let mut state = self.shared.state.lock().await;
        state.seeded = true;
        for (id, conn, session) in std::mem::take(&mut state.parked) {
            start_connection(&self.shared, &mut state, id, conn, session);
        }
    }

    /// Number of proxy connections being served: those that said hello (connections
    /// still waiting for the cache to be seeded are not counted).
    pub async fn connections(&self) -> usize {
        self.shared.state.lock().await.conns.len()
    }

    /// The recorded workloads (adds only), in uid order.
    pub async fn workloads(&self) -> Vec<Workload> {
        let state = self.shared.state.lock().await;
        state
            .cache
            .values()
            .filter_map(|entry| match entry {
                Cached::Add(workload, _) => Some(workload.clone()),
                Cached::Keep => None,
            })
            .collect()
    }

    /// Stops accepting, closes every connection and forgets the cache. The socket file
    /// stays (the next agent replaces it).
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        {
            let mut state = self.shared.state.lock().await;
            state.closed = true;
            state.cache.clear();
            state.parked.clear();
        }
        if let Some(task) = self.accept_task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
    }
}

fn listen(path: &Path) -> io::Result<UnixSeqpacketListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            debug!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "path exists and is not a socket",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixSeqpacketListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn accept_loop(shared: Arc<Shared>, mut listener: UnixSeqpacketListener) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(socket) => {
                if !peer_allowed(&shared, &socket) {
                    continue;
                }
                let id = ConnectionId(shared.next_id.fetch_add(1, Ordering::Relaxed));
                let conn = Connection::from_socket(socket);
                info!(%id, "ZDS proxy connected");
                shared.emit(ServerEvent::Connected { id });
                tokio::spawn(greet(shared.clone(), id, conn));
            }
            Err(e) => {
                // Typically EMFILE; do not spin.
                warn!(error = %e, "ZDS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Checks the peer's uid against [`ServerConfig::peer_uids`]; a refused peer is logged and
/// reported, and closed when the caller drops `socket`.
fn peer_allowed(shared: &Shared, socket: &tokio_seqpacket::UnixSeqpacket) -> bool {
    let policy = &shared.config.peer_uids;
    if *policy == PeerUids::Any {
        return true;
    }
    let (uid, pid) = match socket.peer_cred() {
        Ok(cred) if policy.allows(cred.uid()) => return true,
        Ok(cred) => {
            warn!(uid = cred.uid(), pid = ?cred.pid(), "refusing ZDS peer: uid not allowed");
            (Some(cred.uid()), cred.pid())
        }
        Err(e) => {
            warn!(error = %e, "refusing ZDS peer: no peer credentials");
            (None, None)
        }
    };
    shared.emit(ServerEvent::Refused { uid, pid });
    false
}

/// Waits for the hello of a new connection, then registers it (or parks it until the
/// cache is seeded). Until its hello arrives a connection is not eligible for adds, so a
/// peer that connects and stays silent cannot take them from a working proxy.
async fn greet(shared: Arc<Shared>, id: ConnectionId, conn: Connection) {
    let mut shutdown = shared.shutdown.clone();
    let mut session = AgentSession::new();
    let hello = tokio::select! {
        hello = read_hello(&shared, &mut session, &conn) => hello,
        _ = shutdown.wait_for(|stop| *stop) => {
            shared.emit(ServerEvent::Disconnected { id, error: None });
            return;
        }
    };
    match hello {
        Ok(hello) if !hello.is_v1() => {
            warn!(%id, version = hello.version(), "proxy announced an unknown ZDS version");
        }
        Ok(_) => {}
        Err(e) => {
            warn!(%id, error = %e, "ZDS proxy connection closed before its hello");
            shared.emit(ServerEvent::Disconnected { id, error: Some(e) });
            return;
        }
    }
    let mut state = shared.state.lock().await;
    if state.closed {
        drop(state);
        shared.emit(ServerEvent::Disconnected { id, error: None });
    } else if state.seeded {
        start_connection(&shared, &mut state, id, conn, session);
    } else {
        debug!(%id, "holding snapshot until the cache is seeded");
        state.parked.push((id, conn, session));
    }
}

/// Reads the first datagram of a connection as its hello, within the hello timeout.
async fn read_hello(
    shared: &Shared,
    session: &mut AgentSession,
    conn: &Connection,
) -> Result<Hello, ZdsError> {
    match tokio::time::timeout(shared.config.hello_timeout, conn.recv()).await {
        Err(_) => Err(ZdsError::Timeout),
        Ok(received) => match received? {
            Some(datagram) => Ok(session.handle_hello(&datagram.bytes, datagram.fds.len())?),
            None => Err(ZdsError::ConnectionClosed),
        },
    }
}

/// Registers a connection that said hello with a snapshot of the cache taken under the
/// same lock, so every later update reaches it through its queue and every earlier one
/// through the snapshot.
fn start_connection(
    shared: &Arc<Shared>,
    state: &mut State,
    id: ConnectionId,
    conn: Connection,
    session: AgentSession,
) {
    let snapshot: Vec<(String, Cached)> = state
        .cache
        .iter()
        .map(|(uid, entry)| (uid.clone(), entry.clone()))
        .collect();
    let (tx, rx) = mpsc::channel(shared.config.queue_capacity);
    state.conns.push(ConnHandle { id, tx });
    tokio::spawn(run_connection(
        shared.clone(),
        id,
        conn,
        session,
        snapshot,
        rx,
    ));
}

async fn run_connection(
    shared: Arc<Shared>,
    id: ConnectionId,
    conn: Connection,
    session: AgentSession,
    snapshot: Vec<(String, Cached)>,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut shutdown = shared.shutdown.clone();
    let result = tokio::select! {
        result = serve_connection(&shared, id, &conn, session, snapshot, &mut rx) => result,
        _ = shutdown.wait_for(|stop| *stop) => Ok(()),
    };
    // Close the queue before taking the lock: a caller blocked on a full queue while
    // holding the lock gets its job back instead of waiting forever.
    rx.close();
    while let Ok(job) = rx.try_recv() {
        let _ = job.reply.send(Err(ZdsError::ConnectionClosed));
    }
    drop(conn);
    shared.state.lock().await.conns.retain(|c| c.id != id);
    match &result {
        Ok(()) => info!(%id, "ZDS proxy disconnected"),
        Err(e) => warn!(%id, error = %e, "ZDS proxy connection closed"),
    }
    shared.emit(ServerEvent::Disconnected {
        id,
        error: result.err(),
    });
}

/// Sends one request and waits for its answer, within the ack timeout.
async fn exchange(
    shared: &Shared,
    session: &mut AgentSession,
    conn: &Connection,
    request: &Request,
    netns: Option<&OwnedFd>,
) -> Result<Response, ZdsError> {
    let bytes = session.encode_request(request)?;
    let round_trip = async {
        conn.send(&bytes, netns.map(AsFd::as_fd)).await?;
        match conn.recv().await? {
            Some(datagram) => Ok(session.handle_response(&datagram.bytes, datagram.fds.len())?),
            None => Err(ZdsError::ConnectionClosed),
        }
    };
    match tokio::time::timeout(shared.config.ack_timeout, round_trip).await {
        Ok(result) => result,
        Err(_) => Err(ZdsError::Timeout),
    }
}

async fn serve_connection(
    shared: &Shared,
    id: ConnectionId,
    conn: &Connection,
    mut session: AgentSession,
    snapshot: Vec<(String, Cached)>,
    rx: &mut mpsc::Receiver<Job>,
) -> Result<(), ZdsError> {
    let workloads = snapshot.len();
    let mut nacked = Vec::new();
    for (uid, entry) in snapshot {
        let (request, netns) = match entry {
            Cached::Add(workload, netns) => (Request::Add(workload), Some(netns)),
            Cached::Keep => (Request::Keep { uid: uid.clone() }, None),
        };
        let response = exchange(shared, &mut session, conn, &request, netns.as_deref()).await?;
        if let Response::Nack(message) = response {
            warn!(%id, %uid, %message, "proxy NACKed a snapshot entry");
            shared.emit(ServerEvent::Nacked {
                id,
                uid: Some(uid.clone()),
                message,
            });
            nacked.push(uid);
        }
    }
    if let Response::Nack(message) =
        exchange(shared, &mut session, conn, &Request::SnapshotSent, None).await?
    {
        warn!(%id, %message, "proxy NACKed the end of the snapshot");
        shared.emit(ServerEvent::Nacked {
            id,
            uid: None,
            message,
        });
    }
    info!(%id, workloads, "ZDS snapshot delivered");
    shared.emit(ServerEvent::SnapshotDone {
        id,
        workloads,
        nacked,
    });

    loop {
        tokio::select! {
            job = rx.recv() => {
                let Some(job) = job else { return Ok(()) };
                let uid = job.request.uid().map(str::to_owned);
                match exchange(shared, &mut session, conn, &job.request, job.netns.as_deref()).await {
                    Ok(Response::Ack) => {
                        let _ = job.reply.send(Ok(()));
                    }
                    Ok(Response::Nack(message)) => {
                        shared.emit(ServerEvent::Nacked { id, uid, message: message.clone() });
                        let _ = job.reply.send(Err(ZdsError::Nack(message)));
                    }
                    Err(e) => {
                        let _ = job.reply.send(Err(e.clone()));
                        return Err(e);
                    }
                }
            }
            received = conn.recv() => {
                // Nothing is outstanding: end of stream is a clean close, anything else
                // breaks the protocol.
                match received? {
                    None => return Ok(()),
                    Some(datagram) => {
                        session.handle_response(&datagram.bytes, datagram.fds.len())?;
                        return Err(crate::ProtocolError::UnsolicitedMessage.into());
                    }
                }
            }
        }
    }
}
