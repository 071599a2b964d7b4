//! The outbound connection pool.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use meshwire_svid::{IdentityPolicy, SpiffeId, TrustBundleSet, X509Svid};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientError, h2_handshake, open_stream, tls_connect};
use crate::config::PoolConfig;
use crate::driver::{ClientExit, deadline_after};
use crate::request::ConnectRequest;
use crate::tunnel::Tunnel;

/// What makes two tunnels share a connection: only tunnels with equal keys do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PoolKey {
    /// The identity the client presents (source workload).
    pub source: SpiffeId,
    /// The server identities accepted for this hop (any one of them). The pool checks
    /// the server certificate's SPIFFE ID against this set after the handshake, on top
    /// of the TLS provider's verifier; an empty set skips that check.
    pub expected: BTreeSet<SpiffeId>,
    /// The next hop: `<ip>:15008` of the destination, waypoint or gateway.
    pub next_hop: SocketAddr,
    /// The local address to connect from, if the connector should bind one.
    pub source_addr: Option<IpAddr>,
}

impl PoolKey {
    /// A key from its parts.
    pub fn new(
        source: SpiffeId,
        expected: impl IntoIterator<Item = SpiffeId>,
        next_hop: SocketAddr,
        source_addr: Option<IpAddr>,
    ) -> Self {
        Self {
            source,
            expected: expected.into_iter().collect(),
            next_hop,
            source_addr,
        }
    }

    /// The server-identity policy for this hop: exactly the expected identities.
    pub fn expected_policy(&self) -> IdentityPolicy {
        IdentityPolicy::Exact(self.expected.clone())
    }
}

/// Opens the transport connection to a pool key's next hop.
///
/// The proxy implements this to create sockets inside a pod's network namespace with a
/// packet mark; [`TcpConnector`] is the plain version.
pub trait Connector: Send + Sync + 'static {
    /// The connected byte stream.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Connects to `key.next_hop` (from `key.source_addr` if the connector binds).
    fn connect(&self, key: &PoolKey) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// A [`Connector`] that opens a TCP connection from the current network namespace,
/// binds `source_addr` when the key has one, and sets `TCP_NODELAY`.
#[derive(Debug, Clone, Default)]
pub struct TcpConnector {
    _priv: (),
}

impl TcpConnector {
    /// A new connector.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Connector for TcpConnector {
    type Io = TcpStream;

    async fn connect(&self, key: &PoolKey) -> io::Result<TcpStream> {
        let stream = match key.source_addr {
            None => TcpStream::connect(key.next_hop).await?,
            Some(src) => {
                let socket = if key.next_hop.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(src, 0))?;
                socket.connect(key.next_hop).await?
            }
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Supplies the rustls client configuration for a pool key: the source identity's SVID
/// and a verifier for the key's expected identities.
pub trait ClientTlsProvider: Send + Sync + 'static {
    /// Why no configuration is available (for example no certificate yet).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The configuration for connections of `key`.
    fn client_config(
        &self,
        key: &PoolKey,
    ) -> impl Future<Output = Result<Arc<rustls::ClientConfig>, Self::Error>> + Send;
}

/// Why [`SvidClientTls`] could not make a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SvidClientTlsError {
    /// The key asks for a source identity this provider does not hold.
    #[error("no SVID for source identity {0}")]
    UnknownSource(SpiffeId),
    /// Building the configuration failed.
    #[error(transparent)]
    Config(#[from] meshwire_svid::TlsConfigError),
}

/// A [`ClientTlsProvider`] holding one SVID: builds [`meshwire_svid::client_config`] with the
/// key's expected identities.
#[derive(Debug, Clone)]
pub struct SvidClientTls {
    provider: Arc<rustls::crypto::CryptoProvider>,
    svid: X509Svid,
    roots: TrustBundleSet,
}

impl SvidClientTls {
    /// A provider presenting `svid` and trusting `roots`.
    pub fn new(
        provider: Arc<rustls::crypto::CryptoProvider>,
        svid: X509Svid,
        roots: TrustBundleSet,
    ) -> Self {
        Self {
            provider,
            svid,
            roots,
        }
    }
}

impl ClientTlsProvider for SvidClientTls {
    type Error = SvidClientTlsError;

    async fn client_config(
        &self,
        key: &PoolKey,
    ) -> Result<Arc<rustls::ClientConfig>, SvidClientTlsError> {
        if &key.source != self.svid.spiffe_id() {
            return Err(SvidClientTlsError::UnknownSource(key.source.clone()));
        }
        Ok(Arc::new(meshwire_svid::client_config(
            self.provider.clone(),
            &self.svid,
            &self.roots,
            key.expected_policy(),
        )?))
    }
}

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

/// Per-connection state shared by the pool, its tunnels and the connection task.
#[derive(Debug)]
struct ConnShared {
    id: u64,
    active: AtomicUsize,
    settings_known: AtomicBool,
    /// Closed, or not to be used for new tunnels (GOAWAY, refused stream).
    retired: AtomicBool,
    last_used: Mutex<Instant>,
}

impl ConnShared {
    fn last_used(&self) -> MutexGuard<'_, Instant> {
        self.last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts one tunnel against its connection's stream limit until dropped.
#[derive(Debug)]
pub(crate) struct StreamGuard {
    conn: Arc<ConnShared>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.conn.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.conn.last_used() = Instant::now();
        }
    }
}

#[derive(Debug)]
struct PooledConn {
    shared: Arc<ConnShared>,
    send: h2::client::SendRequest<Bytes>,
}

impl PooledConn {
    /// Not retired, and HTTP/2 still accepts new streams (no GOAWAY, no error).
    fn usable(&self) -> bool {
        if self.shared.retired.load(Ordering::Acquire) {
            return false;
        }
        let mut send = self.send.clone();
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(Err(_)) = send.poll_ready(&mut cx) {
            self.shared.retired.store(true, Ordering::Release);
            return false;
        }
        true
    }

    /// Takes one stream slot if the connection is below its limit: the configured
    /// maximum, lowered by the server's SETTINGS_MAX_CONCURRENT_STREAMS. Until the
    /// server's SETTINGS are known only the dialing request uses the connection.
    fn try_reserve(&self, max: usize) -> bool {
        let limit = if self.shared.settings_known.load(Ordering::Acquire) {
            max.min(self.send.current_max_send_streams())
        } else {
            1
        };
        let mut cur = self.shared.active.load(Ordering::Acquire);
        loop {
            if cur >= limit {
                return false;
            }
            match self.shared.active.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }
}

/// One connection attempt that others may wait for.
#[derive(Debug, Default)]
struct DialSlot {
    notify: Arc<Notify>,
    failed: OnceLock<ClientError>,
}

#[derive(Debug)]
struct Dial {
    slot: Arc<DialSlot>,
    /// Set once the attempt produced a connection whose SETTINGS are still awaited.
    conn_id: Option<u64>,
}

#[derive(Debug, Default)]
struct KeyState {
    conns: Vec<Arc<PooledConn>>,
    dial: Option<Dial>,
}

impl KeyState {
    fn is_empty(&self) -> bool {
        self.conns.is_empty() && self.dial.is_none()
    }

    /// Ends the dial if it belongs to connection `id` and wakes its waiters.
    fn finish_dial_of(&mut self, id: u64) {
        if self.dial.as_ref().is_some_and(|d| d.conn_id == Some(id))
            && let Some(d) = self.dial.take()
        {
            d.slot.notify.notify_waiters();
        }
    }
}

#[derive(Debug)]
struct PoolState {
    keys: Mutex<HashMap<PoolKey, KeyState>>,
    opened: AtomicU64,
    reused: AtomicU64,
    closed: AtomicU64,
    dial_failures: AtomicU64,
    next_id: AtomicU64,
    /// Connections whose task is running.
    open: AtomicUsize,
    /// Signalled whenever `open` drops.
    open_changed: Notify,
    /// Cancelled by [`Pool::close`]; set under the `keys` lock.
    closing: CancellationToken,
}

impl PoolState {
    fn lock(&self) -> MutexGuard<'_, HashMap<PoolKey, KeyState>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The server's SETTINGS have been processed: the connection's real limit applies,
    /// and requests waiting for this dial may look again.
    fn settings_known(&self, key: &PoolKey, conn: &ConnShared) {
        let mut keys = self.lock();
        conn.settings_known.store(true, Ordering::Release);
        if let Some(ks) = keys.get_mut(key) {
            ks.finish_dial_of(conn.id);
        }
    }

    /// Removes the connection if it has had no tunnels for `idle`. Returns whether it did.
    fn evict_if_idle(&self, key: &PoolKey, conn: &ConnShared, idle: std::time::Duration) -> bool {
        let mut keys = self.lock();
        if conn.active.load(Ordering::Acquire) != 0 || conn.last_used().elapsed() < idle {
            return false;
        }
        conn.retired.store(true, Ordering::Release);
        Self::remove_conn(&mut keys, key, conn.id);
        true
    }

    fn on_closed(&self, key: &PoolKey, conn: &ConnShared) {
        conn.retired.store(true, Ordering::Release);
        {
            let mut keys = self.lock();
            Self::remove_conn(&mut keys, key, conn.id);
            self.closed.fetch_add(1, Ordering::Relaxed);
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
        self.open_changed.notify_waiters();
    }

    fn remove_conn(keys: &mut HashMap<PoolKey, KeyState>, key: &PoolKey, id: u64) {
        if let Some(ks) = keys.get_mut(key) {
            ks.conns.retain(|c| c.shared.id != id);
            ks.finish_dial_of(id);
            if ks.is_empty() {
                keys.remove(key);
            }
        }
    }
}

/// Clears an unfinished dial if the dialing request is dropped or fails.
struct DialGuard<'a> {
    state: &'a PoolState,
    key: &'a PoolKey,
    slot: Arc<DialSlot>,
    armed: bool,
}

impl DialGuard<'_> {
    fn fail(mut self, e: &ClientError) {
        let _ = self.slot.failed.set(e.clone());
        self.state.dial_failures.fetch_add(1, Ordering::Relaxed);
        self.clear();
        self.armed = false;
    }

    fn clear(&self) {
        let mut keys = self.state.lock();
        if let Some(ks) = keys.get_mut(self.key) {
            if ks
                .dial
                .as_ref()
                .is_some_and(|d| Arc::ptr_eq(&d.slot, &self.slot))
            {
                ks.dial = None;
            }
            if ks.is_empty() {
                keys.remove(self.key);
            }
        }
        self.slot.notify.notify_waiters();
    }
}

impl Drop for DialGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.clear();
        }
    }
}

enum Next {
    Dial(Arc<DialSlot>),
    Wait(Arc<DialSlot>, tokio::sync::futures::OwnedNotified),
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
    /// REFUSED_STREAM) is retried on another connection, twice at most. After
    /// [`Pool::close`] this fails with [`ClientError::PoolClosed`].
    pub async fn connect(
        &self,
        key: &PoolKey,
        request: &ConnectRequest,
    ) -> Result<Tunnel, ClientError> {
        let mut retries = 0;
        loop {
            let http = request.to_http()?;
            let conn = self.acquire(key).await?;
            let guard = Arc::new(StreamGuard {
                conn: conn.shared.clone(),
            });
            match open_stream(conn.send.clone(), http, Some(guard)).await {
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
        loop {
            let next = {
                let mut keys = state.lock();
                if state.closing.is_cancelled() {
                    return Err(ClientError::PoolClosed);
                }
                let ks = keys.entry(key.clone()).or_default();
                ks.conns.retain(|c| c.usable());
                if let Some(c) = ks.conns.iter().find(|c| c.try_reserve(max)) {
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
            crate::driver::ClientDriver<tokio_rustls::client::TlsStream<C::Io>>,
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
        let shared = Arc::new(ConnShared {
            id: inner.state.next_id.fetch_add(1, Ordering::Relaxed),
            active: AtomicUsize::new(1),
            settings_known: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            last_used: Mutex::new(Instant::now()),
        });
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
        mut driver: crate::driver::ClientDriver<tokio_rustls::client::TlsStream<C::Io>>,
    ) {
        let state: Weak<PoolState> = Arc::downgrade(&self.inner.state);
        let idle = self.inner.config.idle_timeout;
        tokio::spawn(async move {
            let mut evicted = false;
            let exit = loop {
                let since = if shared.active.load(Ordering::Acquire) == 0 {
                    *shared.last_used()
                } else {
                    Instant::now()
                };
                let deadline = deadline_after(since, idle);
                tokio::select! {
                    exit = &mut driver => break exit,
                    () = tokio::time::sleep_until(deadline), if !evicted => {
                        if let Some(state) = state.upgrade() {
                            evicted = state.evict_if_idle(&key, &shared, idle);
                        } else {
                            evicted = true;
                        }
                        if evicted {
                            tracing::debug!(next_hop = %key.next_hop, "idle HBONE connection released");
                        }
                    }
                }
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
