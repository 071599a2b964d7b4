//! The pool's bookkeeping: connections per key, stream slots, and dials in progress.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientError, PoolKey};

/// Per-connection state shared by the pool, its tunnels and the connection task.
#[derive(Debug)]
pub(super) struct ConnShared {
    pub(super) id: u64,
    pub(super) active: AtomicUsize,
    pub(super) settings_known: AtomicBool,
    /// Closed, or not to be used for new tunnels (GOAWAY, refused stream).
    pub(super) retired: AtomicBool,
    /// When the last tunnel ended (the dial time until one has), written before `active`
    /// drops, so whoever sees `active` at zero reads the time of that last end.
    pub(super) last_used: Mutex<Instant>,
    /// Signalled (one stored permit) whenever `active` drops to zero.
    pub(super) idle: Notify,
}

impl ConnShared {
    pub(super) fn new(id: u64) -> Self {
        Self {
            id,
            active: AtomicUsize::new(1),
            settings_known: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            last_used: Mutex::new(Instant::now()),
            idle: Notify::new(),
        }
    }

    pub(super) fn last_used(&self) -> MutexGuard<'_, Instant> {
        self.last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the connection carries no tunnel (returns at once if it carries none).
    pub(super) async fn wait_idle(&self) {
        // A drop to zero between the load and the wait leaves a permit: no lost wake-up.
        while self.active.load(Ordering::Acquire) != 0 {
            self.idle.notified().await;
        }
    }
}

/// Counts one tunnel against its connection's stream limit until dropped.
#[derive(Debug)]
pub(super) struct StreamGuard {
    pub(super) conn: Arc<ConnShared>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // The time first: `try_reserve` and the connection task read it once they see zero.
        *self.conn.last_used() = Instant::now();
        if self.conn.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conn.idle.notify_one();
        }
    }
}

#[derive(Debug)]
pub(super) struct PooledConn {
    pub(super) shared: Arc<ConnShared>,
    pub(super) send: h2::client::SendRequest<Bytes>,
}

impl PooledConn {
    /// Not retired, and HTTP/2 still accepts new streams (no GOAWAY, no error).
    pub(super) fn usable(&self) -> bool {
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
    ///
    /// A connection without tunnels for `idle` or longer is not taken, whether or not its
    /// task has released it yet: with a zero `idle`, a connection whose last tunnel has
    /// ended is never used again.
    pub(super) fn try_reserve(&self, max: usize, idle: Duration) -> bool {
        let limit = if self.shared.settings_known.load(Ordering::Acquire) {
            max.min(self.send.current_max_send_streams())
        } else {
            1
        };
        let mut cur = self.shared.active.load(Ordering::Acquire);
        loop {
            // At zero no guard is left to change `last_used`, and only reservations
            // (under the pool lock, which the caller holds) raise the count.
            if cur >= limit || (cur == 0 && self.shared.last_used().elapsed() >= idle) {
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
pub(super) struct DialSlot {
    pub(super) notify: Arc<Notify>,
    pub(super) failed: OnceLock<ClientError>,
}

#[derive(Debug)]
pub(super) struct Dial {
    pub(super) slot: Arc<DialSlot>,
    /// Set once the attempt produced a connection whose SETTINGS are still awaited.
    pub(super) conn_id: Option<u64>,
}

#[derive(Debug, Default)]
pub(super) struct KeyState {
    pub(super) conns: Vec<Arc<PooledConn>>,
    pub(super) dial: Option<Dial>,
}

impl KeyState {
    pub(super) fn is_empty(&self) -> bool {
        self.conns.is_empty() && self.dial.is_none()
    }

    /// Ends the dial if it belongs to connection `id` and wakes its waiters.
    pub(super) fn finish_dial_of(&mut self, id: u64) {
        if self.dial.as_ref().is_some_and(|d| d.conn_id == Some(id))
            && let Some(d) = self.dial.take()
        {
            d.slot.notify.notify_waiters();
        }
    }
}

#[derive(Debug)]
pub(super) struct PoolState {
    pub(super) keys: Mutex<HashMap<PoolKey, KeyState>>,
    pub(super) opened: AtomicU64,
    pub(super) reused: AtomicU64,
    pub(super) closed: AtomicU64,
    pub(super) dial_failures: AtomicU64,
    pub(super) next_id: AtomicU64,
    /// Connections whose task is running.
    pub(super) open: AtomicUsize,
    /// Signalled whenever `open` drops.
    pub(super) open_changed: Notify,
    /// Cancelled by [`Pool::close`]; set under the `keys` lock.
    pub(super) closing: CancellationToken,
}

impl PoolState {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<PoolKey, KeyState>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The server's SETTINGS have been processed: the connection's real limit applies,
    /// and requests waiting for this dial may look again.
    pub(super) fn settings_known(&self, key: &PoolKey, conn: &ConnShared) {
        let mut keys = self.lock();
        conn.settings_known.store(true, Ordering::Release);
        if let Some(ks) = keys.get_mut(key) {
            ks.finish_dial_of(conn.id);
        }
    }

    /// Removes the connection if it has had no tunnels for `idle`. Returns whether it did.
    pub(super) fn evict_if_idle(&self, key: &PoolKey, conn: &ConnShared, idle: Duration) -> bool {
        let mut keys = self.lock();
        if conn.active.load(Ordering::Acquire) != 0 || conn.last_used().elapsed() < idle {
            return false;
        }
        conn.retired.store(true, Ordering::Release);
        Self::remove_conn(&mut keys, key, conn.id);
        true
    }

    pub(super) fn on_closed(&self, key: &PoolKey, conn: &ConnShared) {
        conn.retired.store(true, Ordering::Release);
        {
            let mut keys = self.lock();
            Self::remove_conn(&mut keys, key, conn.id);
            self.closed.fetch_add(1, Ordering::Relaxed);
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
        self.open_changed.notify_waiters();
    }

    pub(super) fn remove_conn(keys: &mut HashMap<PoolKey, KeyState>, key: &PoolKey, id: u64) {
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
pub(super) struct DialGuard<'a> {
    pub(super) state: &'a PoolState,
    pub(super) key: &'a PoolKey,
    pub(super) slot: Arc<DialSlot>,
    pub(super) armed: bool,
}

impl DialGuard<'_> {
    pub(super) fn fail(mut self, e: &ClientError) {
        let _ = self.slot.failed.set(e.clone());
        self.state.dial_failures.fetch_add(1, Ordering::Relaxed);
        self.clear();
        self.armed = false;
    }

    pub(super) fn clear(&self) {
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

pub(super) enum Next {
    Dial(Arc<DialSlot>),
    Wait(Arc<DialSlot>, tokio::sync::futures::OwnedNotified),
}
