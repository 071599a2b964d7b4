//! The agent side over a real socket: listen, snapshot every proxy, deliver updates.
//!
//! [`Server`] keeps the workloads the agent enrolled (uid → workload and netns fd) and
//! hands every proxy that connects a snapshot of them; [`ServerConfig`] holds its settings
//! and [`ServerEvent`]s report what happens on its connections.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::{Mutex, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::Workload;
use crate::wire::Request;

mod config;
mod connection;
mod error;
mod event;
mod state;

pub use config::{PeerUids, ServerConfig};
pub use error::{BindError, ZdsError};
pub use event::{ConnectionId, ServerEvent};

use connection::{accept_loop, listen, start_connection};
use state::{Cached, Job, Shared, State};

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
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
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
