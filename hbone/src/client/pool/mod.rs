//! The outbound connection pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    ClientError, ClientTlsProvider, Connector, PoolConfig, PoolKey, h2_handshake, open_stream,
    tls_connect,
};
use crate::keepalive::{ClientDriver, ClientExit, deadline_after};
use crate::request::ConnectRequest;
use crate::tunnel::Tunnel;

mod state;

use state::{ConnShared, Dial, DialGuard, DialSlot, Next, PoolState, PooledConn, StreamGuard};

/// Counters of a [`Pool`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Connections opened (TLS and HTTP/2 handshakes completed).
    pub opened: u64,
    /// Tunnels that reused an already open connection.
    pub reused: u64,
    /// Connections that have closed.
    pub closed: u64,
    /// Connection attempts that failed (not counting those [`Pool::close`] cut short).
    pub dial_failures: u64,
    /// Connections currently offered for reuse.
    pub pooled: usize,
    /// Connections currently open: the pooled ones, plus those that no longer take new
    /// tunnels (after a GOAWAY, or [`Pool::close`]) but still carry some.
    pub open: usize,
}

struct PoolInner<C, T> {
    connector: C,
    tls: T,
    config: PoolConfig,
    state: Arc<PoolState>,
}

/// A pool of HBONE client connections.
///
/// [`Pool::connect`] opens a tunnel on a connection of the given [`PoolKey`], reusing
/// an open connection while it is below its stream limit (the configured
/// [`PoolConfig::max_streams_per_connection`], lowered by the server's
/// SETTINGS_MAX_CONCURRENT_STREAMS) and dialing a new one otherwise. Only one dial per
/// key runs at a time; requests arriving meanwhile wait for it and share it (or its
/// failure). Connections leave the pool after a GOAWAY, an unanswered keepalive PING,
/// or [`PoolConfig::idle_timeout`] without tunnels.
///
/// Cloning is cheap and clones share the pool. Connection tasks run on the tokio
/// runtime current at dial time.
///
/// # Closing
///
/// [`Pool::close`] retires every connection at once: idle ones close immediately
/// (GOAWAY, then the TLS and TCP close), busy ones take no new tunnels and close when
/// their last tunnel ends; open tunnels keep working until then. Afterwards
/// [`Pool::connect`] fails with [`ClientError::PoolClosed`]; a closed pool does not
/// reopen (make a new one). [`Pool::closed`] waits until every connection has ended.
///
/// Dropping the last clone has the same effect on the connections as `close` (tunnels
/// keep their connection alive until they end), without a way to wait for them.
pub struct Pool<C, T> {
    inner: Arc<PoolInner<C, T>>,
}

impl<C, T> Clone for Pool<C, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C, T> std::fmt::Debug for Pool<C, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<C, T> Pool<C, T> {
    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        let s = &self.inner.state;
        PoolStats {
            opened: s.opened.load(Ordering::Relaxed),
            reused: s.reused.load(Ordering::Relaxed),
            closed: s.closed.load(Ordering::Relaxed),
            dial_failures: s.dial_failures.load(Ordering::Relaxed),
            pooled: s.lock().values().map(|k| k.conns.len()).sum(),
            open: s.open.load(Ordering::Acquire),
        }
    }

    /// Closes the pool (all clones): no new tunnels, and every connection closes as
    /// soon as it carries no tunnel.
    ///
    /// * Idle connections close now: HTTP/2 GOAWAY with `NO_ERROR`, then the TLS and TCP
    ///   close. [`PoolStats::closed`] counts each once its task has finished.
    /// * Connections with open tunnels take no new ones; the tunnels keep working in both
    ///   directions until they end, then the connection closes the same way. To bound
    ///   that, end the tunnels (or drop the runtime); the pool does not cut them.
    /// * Dials in progress are abandoned, and their waiters as well as every later
    ///   [`Pool::connect`] get [`ClientError::PoolClosed`]. A `connect` that already
    ///   holds a connection slot still sends its CONNECT.
    ///
    /// The pool stays closed; there is no reopening. Calling `close` again does nothing.
    /// Returns without waiting: see [`Pool::closed`].
    pub fn close(&self) {
        let state = &self.inner.state;
        let taken = {
            let mut keys = state.lock();
            state.closing.cancel();
            std::mem::take(&mut *keys)
        };
        for ks in taken.values() {
            for c in &ks.conns {
                c.shared.retired.store(true, Ordering::Release);
            }
        }
        if !taken.is_empty() {
            tracing::debug!(
                connections = taken.values().map(|k| k.conns.len()).sum::<usize>(),
                "HBONE pool closed"
            );
        }
        // Dropping the last request handle of an HTTP/2 connection makes it send GOAWAY
        // and close once no stream is left.
        drop(taken);
    }

    /// Whether [`Pool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.state.closing.is_cancelled()
    }

    /// Waits until the pool is closed and all its connections have ended (including
    /// those still carrying tunnels when [`Pool::close`] was called).
    ///
    /// Does not close the pool itself; combine with [`tokio::time::timeout`] for a
    /// deadline.
    pub async fn closed(&self) {
        let state = &self.inner.state;
        state.closing.cancelled().await;
        loop {
            let changed = state.open_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if state.open.load(Ordering::Acquire) == 0 {
                return;
            }
            changed.await;
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }
}

impl<C: Connector, T: ClientTlsProvider> Pool<C, T> {
    /// A pool that dials with `connector` and takes TLS configurations from `tls`.
    pub fn new(connector: C, tls: T, config: PoolConfig) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                connector,
                tls,
                config,
                state: Arc::new(PoolState {
                    keys: Mutex::new(HashMap::new()),
                    opened: AtomicU64::new(0),
                    reused: AtomicU64::new(0),
                    closed: AtomicU64::new(0),
                    dial_failures: AtomicU64::new(0),
                    next_id: AtomicU64::new(0),
                    open: AtomicUsize::new(0),
                    open_changed: Notify::new(),
                    closing: CancellationToken::new(),
                }),
            }),
        }
    }

    /// Opens a tunnel for `request` on a connection of `key`.
    ///
    /// A request refused by HTTP/2 before the server saw it (after a GOAWAY, or
    /// REFUSED_STREAM) is retried on another connection, twice at most. A server that does
    /// not answer within [`PoolConfig::response_timeout`] gets its stream reset, and this
    /// fails with [`ClientError::ResponseTimeout`]. After [`Pool::close`] this fails with
    /// [`ClientError::PoolClosed`].
    pub async fn connect(
        &self,
        key: &PoolKey,
        request: &ConnectRequest,
    ) -> Result<Tunnel, ClientError> {
        let mut retries = 0;
        loop {
            let http = request.to_http()?;
            let conn = self.acquire(key).await?;
            let slot = Arc::new(StreamGuard {
                conn: conn.shared.clone(),
            });
            let response = tokio::time::timeout(
                self.inner.config.response_timeout,
                open_stream(conn.send.clone(), http, Some(slot)),
            );
            match response.await.unwrap_or(Err(ClientError::ResponseTimeout)) {
                Err(e) if e.is_retryable() && retries < 2 => {
                    tracing::debug!(error = %e, "retrying tunnel on another connection");
                    conn.shared.retired.store(true, Ordering::Release);
                    retries += 1;
                }
                r => return r,
            }
        }
    }

    /// A connection with a free stream slot (taken), or a dial to perform or wait for.
    async fn acquire(&self, key: &PoolKey) -> Result<Arc<PooledConn>, ClientError> {
        let state = &*self.inner.state;
        let max = self.inner.config.max_streams_per_connection.max(1);
        let idle = self.inner.config.idle_timeout;
        loop {
            let next = {
                let mut keys = state.lock();
                if state.closing.is_cancelled() {
                    return Err(ClientError::PoolClosed);
                }
                let ks = keys.entry(key.clone()).or_default();
                ks.conns.retain(|c| c.usable());
                if let Some(c) = ks.conns.iter().find(|c| c.try_reserve(max, idle)) {
                    state.reused.fetch_add(1, Ordering::Relaxed);
                    return Ok(c.clone());
                }
                match &ks.dial {
                    Some(d) => {
                        let slot = d.slot.clone();
                        let notified = slot.notify.clone().notified_owned();
                        Next::Wait(slot, notified)
                    }
                    None => {
                        let slot = Arc::new(DialSlot::default());
                        ks.dial = Some(Dial {
                            slot: slot.clone(),
                            conn_id: None,
                        });
                        Next::Dial(slot)
                    }
                }
            };
            match next {
                Next::Dial(slot) => return self.dial(key, slot).await,
                Next::Wait(slot, notified) => {
                    tokio::select! {
                        () = notified => {}
                        () = state.closing.cancelled() => return Err(ClientError::PoolClosed),
                    }
                    if let Some(e) = slot.failed.get() {
                        return Err(e.clone());
                    }
                }
            }
        }
    }

    /// Connects, runs the TLS and HTTP/2 handshakes, and adds the connection to the
    /// pool with one stream slot taken for the caller.
    async fn dial(
        &self,
        key: &PoolKey,
        slot: Arc<DialSlot>,
    ) -> Result<Arc<PooledConn>, ClientError> {
        let state = &self.inner.state;
        let guard = DialGuard {
            state,
            key,
            slot,
            armed: true,
        };
        let handshake = tokio::select! {
            r = self.handshake(key) => r,
            () = state.closing.cancelled() => Err(ClientError::PoolClosed),
        };
        match handshake {
            Ok((conn, driver)) => {
                let added = {
                    let mut keys = state.lock();
                    if state.closing.is_cancelled() {
                        false
                    } else {
                        let ks = keys.entry(key.clone()).or_default();
                        ks.conns.push(conn.clone());
                        match &mut ks.dial {
                            Some(d) if Arc::ptr_eq(&d.slot, &guard.slot) => {
                                d.conn_id = Some(conn.shared.id);
                            }
                            _ => {}
                        }
                        state.opened.fetch_add(1, Ordering::Relaxed);
                        state.open.fetch_add(1, Ordering::AcqRel);
                        true
                    }
                };
                if !added {
                    // Closed during the handshake: the connection is dropped unused, and
                    // the guard wakes the waiters, who find the pool closed.
                    return Err(ClientError::PoolClosed);
                }
                let mut guard = guard;
                guard.armed = false;
                self.spawn_connection_task(key.clone(), conn.shared.clone(), driver);
                Ok(conn)
            }
            Err(ClientError::PoolClosed) => Err(ClientError::PoolClosed),
            Err(e) => {
                tracing::debug!(next_hop = %key.next_hop, error = %e, "HBONE dial failed");
                guard.fail(&e);
                Err(e)
            }
        }
    }

    async fn handshake(
        &self,
        key: &PoolKey,
    ) -> Result<
        (
            Arc<PooledConn>,
            ClientDriver<tokio_rustls::client::TlsStream<crate::tls_io::BufferedIo<C::Io>>>,
        ),
        ClientError,
    > {
        let inner = &*self.inner;
        let tls = inner
            .tls
            .client_config(key)
            .await
            .map_err(|e| ClientError::TlsConfig(Arc::new(e)))?;
        let io = tokio::time::timeout(inner.config.connect_timeout, inner.connector.connect(key))
            .await
            .map_err(|_| ClientError::ConnectTimeout)?
            .map_err(|e| ClientError::Connect(Arc::new(e)))?;
        let shared = Arc::new(ConnShared::new(
            inner.state.next_id.fetch_add(1, Ordering::Relaxed),
        ));
        let probe: Box<dyn FnOnce() + Send> = {
            let state = Arc::downgrade(&inner.state);
            let key = key.clone();
            let shared = shared.clone();
            Box::new(move || {
                if let Some(state) = state.upgrade() {
                    state.settings_known(&key, &shared);
                }
            })
        };
        let handshakes = async {
            let (stream, peer) = tls_connect(io, tls).await?;
            if !key.expected.is_empty() && !peer.as_ref().is_some_and(|p| key.expected.contains(p))
            {
                return Err(ClientError::UnexpectedIdentity { found: peer });
            }
            h2_handshake(stream, &inner.config.http2, Some(probe)).await
        };
        let (send, driver) = tokio::time::timeout(inner.config.handshake_timeout, handshakes)
            .await
            .map_err(|_| ClientError::HandshakeTimeout)??;
        Ok((Arc::new(PooledConn { shared, send }), driver))
    }

    fn spawn_connection_task(
        &self,
        key: PoolKey,
        shared: Arc<ConnShared>,
        mut driver: ClientDriver<tokio_rustls::client::TlsStream<crate::tls_io::BufferedIo<C::Io>>>,
    ) {
        let state: Weak<PoolState> = Arc::downgrade(&self.inner.state);
        let idle = self.inner.config.idle_timeout;
        tokio::spawn(async move {
            let released = tokio::select! {
                exit = &mut driver => Some(exit),
                () = release_when_idle(&state, &key, &shared, idle) => None,
            };
            // Released: the pool dropped its handle, so HTTP/2 sends GOAWAY and the driver
            // ends once the last stream has.
            let exit = match released {
                Some(exit) => exit,
                None => driver.await,
            };
            match &exit {
                ClientExit::Closed(Ok(())) => {
                    tracing::debug!(next_hop = %key.next_hop, "HBONE connection closed");
                }
                ClientExit::Closed(Err(e)) => {
                    tracing::debug!(next_hop = %key.next_hop, error = %e, "HBONE connection failed");
                }
                ClientExit::KeepaliveTimeout => {
                    tracing::info!(next_hop = %key.next_hop, "HBONE connection dropped: keepalive PING unanswered");
                }
            }
            if let Some(state) = state.upgrade() {
                state.on_closed(&key, &shared);
            }
        });
    }
}

/// Returns once the connection has been out of use for `idle` and is removed from the
/// pool (or the pool is gone). Waits for the last tunnel to end rather than polling, so a
/// zero `idle` releases the connection as soon as that happens.
async fn release_when_idle(
    state: &Weak<PoolState>,
    key: &PoolKey,
    shared: &ConnShared,
    idle: Duration,
) {
    loop {
        shared.wait_idle().await;
        let deadline = deadline_after(*shared.last_used(), idle);
        tokio::time::sleep_until(deadline).await;
        let Some(state) = state.upgrade() else { return };
        // Fails when a tunnel came in meanwhile: wait for it to end.
        if state.evict_if_idle(key, shared, idle) {
            tracing::debug!(next_hop = %key.next_hop, "idle HBONE connection released");
            return;
        }
    }
}
