//! The server's tasks: the listening socket, the accept loop, and one task per proxy
//! connection (hello, snapshot, then requests in lock-step).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_seqpacket::UnixSeqpacketListener;
use tracing::{debug, info, warn};

use super::state::{Cached, ConnHandle, Job, Shared, State};
use super::{ConnectionId, PeerUids, ServerEvent, ZdsError};
use crate::session::AgentSession;
use crate::transport::Connection;
use crate::wire::{Hello, ProtocolError, Request, Response};

pub(super) fn listen(path: &Path) -> io::Result<UnixSeqpacketListener> {
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

pub(super) async fn accept_loop(shared: Arc<Shared>, mut listener: UnixSeqpacketListener) {
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
pub(super) fn peer_allowed(shared: &Shared, socket: &tokio_seqpacket::UnixSeqpacket) -> bool {
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
pub(super) async fn greet(shared: Arc<Shared>, id: ConnectionId, conn: Connection) {
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
pub(super) async fn read_hello(
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
pub(super) fn start_connection(
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
    let (tx, rx) = mpsc::channel(shared.config.queue_capacity.max(1));
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

pub(super) async fn run_connection(
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
pub(super) async fn exchange(
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

pub(super) async fn serve_connection(
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
                        return Err(ProtocolError::UnsolicitedMessage.into());
                    }
                }
            }
        }
    }
}
