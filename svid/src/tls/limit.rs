//! A bound on the connections a TLS listener holds, shared by any number of listeners: at
//! most [`ConnectionLimitConfig::max_per_key`] per key (a pod, a client address) and
//! [`ConnectionLimitConfig::max_total`] in all.
//!
//! A connection takes a [`ConnectionSlot`] as soon as it is accepted, before anything is read
//! from it. Until its owner calls [`ConnectionSlot::establish`] (once the peer is
//! authenticated), the slot is *pending* and may be shed: when a bound is reached, the oldest
//! pending connection under that bound gives its slot to the newcomer, and its owner sees
//! [`ConnectionSlot::shed`] resolve and closes it. Established connections are never shed;
//! when a bound is reached and every connection under it is established, the newcomer is
//! refused ([`LimitReached`]).
//!
//! Shedding the oldest first means that clients that open connections and never finish
//! their handshakes (slowloris) lose their connections to newer ones, while a real client's
//! handshake, which takes milliseconds, completes before enough newer connections arrive to
//! shed it. The limit has no clock: pair it with a deadline on the whole
//! not-yet-authenticated phase.
//!
//! ```
//! use meshwire_svid::tls::{ConnectionLimit, ConnectionLimitConfig, LimitReached};
//!
//! let mut config = ConnectionLimitConfig::default();
//! config.max_per_key = 2;
//! let limit = ConnectionLimit::new(config);
//! let first = limit.admit("pod-a")?;
//! let second = limit.admit("pod-a")?;
//! second.establish();
//! // A third connection of the same pod sheds the oldest pending one ...
//! let third = limit.admit("pod-a")?;
//! assert!(first.is_shed());
//! // ... and once every connection of the pod is established, a newcomer is refused.
//! third.establish();
//! assert_eq!(limit.admit("pod-a").unwrap_err(), LimitReached::PerKey);
//! // Other pods are not affected.
//! assert!(limit.admit("pod-b").is_ok());
//! # Ok::<(), LimitReached>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// The bounds of a [`ConnectionLimit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionLimitConfig {
    /// Connections (pending and established) one key may hold. Default 1024. `0` is treated
    /// as `1`.
    pub max_per_key: usize,
    /// Connections (pending and established) all keys together may hold. Default 16384. `0`
    /// is treated as `1`.
    pub max_total: usize,
}

impl Default for ConnectionLimitConfig {
    fn default() -> Self {
        Self {
            max_per_key: 1024,
            max_total: 16384,
        }
    }
}

/// Counters and gauges of a [`ConnectionLimit`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitStats {
    /// Connections holding a slot now (pending and established).
    pub open: usize,
    /// Of those, the ones not yet established.
    pub pending: usize,
    /// Pending connections shed to make room for newer ones, since the limit was made.
    pub shed: u64,
    /// Connections refused because every slot under the bound was established.
    pub refused: u64,
}

/// A connection was refused: every connection under the bound it hit is established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitReached {
    /// The key already holds [`ConnectionLimitConfig::max_per_key`] established connections.
    #[error("connection limit per key reached, all established")]
    PerKey,
    /// [`ConnectionLimitConfig::max_total`] established connections are open.
    #[error("total connection limit reached, all established")]
    Total,
}

/// A connection bound shared by listeners (cloning shares it): at most
/// [`max_per_key`](ConnectionLimitConfig::max_per_key) connections per key and
/// [`max_total`](ConnectionLimitConfig::max_total) in all; when full, the oldest connection
/// not yet authenticated is shed, and established ones never are.
pub struct ConnectionLimit<K> {
    state: Arc<Mutex<State<K>>>,
}

impl<K> Clone for ConnectionLimit<K> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
        }
    }
}

impl<K> fmt::Debug for ConnectionLimit<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = lock(&self.state);
        f.debug_struct("ConnectionLimit")
            .field("config", &s.config)
            .field("open", &s.open)
            .field("pending", &s.pending.len())
            .finish()
    }
}

struct State<K> {
    config: ConnectionLimitConfig,
    next_id: u64,
    open: usize,
    keys: HashMap<K, KeyState>,
    /// Pending connections by age (ids grow).
    pending: BTreeMap<u64, Pending<K>>,
    /// Shed connections whose slot was not dropped yet.
    shed: HashSet<u64>,
    /// Keys of established connections.
    established: HashMap<u64, K>,
    shed_total: u64,
    refused_total: u64,
}

#[derive(Default)]
struct KeyState {
    open: usize,
    pending: BTreeSet<u64>,
}

struct Pending<K> {
    key: K,
    waker: Option<Waker>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state is consistent between statements; a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K: Eq + Hash + Clone + Send + 'static> ConnectionLimit<K> {
    /// An empty limit with these bounds.
    pub fn new(config: ConnectionLimitConfig) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                config,
                next_id: 0,
                open: 0,
                keys: HashMap::new(),
                pending: BTreeMap::new(),
                shed: HashSet::new(),
                established: HashMap::new(),
                shed_total: 0,
                refused_total: 0,
            })),
        }
    }

    /// Takes a pending slot for a connection of `key`, just accepted.
    ///
    /// If the key is at its bound, its oldest pending connection is shed; if every key
    /// together is at the total bound, the oldest pending connection of any key is shed.
    /// When there is nothing pending to shed under a bound that is reached, the connection
    /// is refused and should be closed at once.
    pub fn admit(&self, key: K) -> Result<ConnectionSlot, LimitReached> {
        let mut s = lock(&self.state);
        let per_key = s.config.max_per_key.max(1);
        let total = s.config.max_total.max(1);
        let (key_open, key_oldest) = s
            .keys
            .get(&key)
            .map_or((0, None), |k| (k.open, k.pending.first().copied()));
        // Decide both victims before shedding anything, so that a refusal sheds nothing.
        let key_victim = if key_open >= per_key {
            match key_oldest {
                Some(id) => Some(id),
                None => {
                    s.refused_total += 1;
                    return Err(LimitReached::PerKey);
                }
            }
        } else {
            None
        };
        // Shedding within the key also frees a slot of the total.
        if key_victim.is_none() && s.open >= total {
            match s.pending.keys().next().copied() {
                Some(id) => s.shed_one(id),
                None => {
                    s.refused_total += 1;
                    return Err(LimitReached::Total);
                }
            }
        }
        if let Some(id) = key_victim {
            s.shed_one(id);
        }
        let id = s.next_id;
        s.next_id += 1;
        s.open += 1;
        let k = s.keys.entry(key.clone()).or_default();
        k.open += 1;
        k.pending.insert(id);
        s.pending.insert(id, Pending { key, waker: None });
        drop(s);
        Ok(ConnectionSlot {
            id,
            state: self.state.clone(),
        })
    }

    /// The limit's counters.
    pub fn stats(&self) -> LimitStats {
        let s = lock(&self.state);
        LimitStats {
            open: s.open,
            pending: s.pending.len(),
            shed: s.shed_total,
            refused: s.refused_total,
        }
    }
}

impl<K: Eq + Hash> State<K> {
    /// Sheds pending connection `id`: its slot is free from now on.
    fn shed_one(&mut self, id: u64) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        self.release_key(&p.key, id);
        self.open -= 1;
        self.shed_total += 1;
        if let Some(w) = p.waker {
            w.wake();
        }
        self.shed.insert(id);
    }

    fn release_key(&mut self, key: &K, id: u64) {
        if let Some(k) = self.keys.get_mut(key) {
            k.open -= 1;
            k.pending.remove(&id);
            if k.open == 0 {
                self.keys.remove(key);
            }
        }
    }
}

/// What a [`ConnectionSlot`] needs from its limit, whatever the key type.
trait SlotState: Send + Sync {
    fn establish(&self, id: u64) -> bool;
    fn release(&self, id: u64);
    fn poll_shed(&self, id: u64, cx: &mut Context<'_>) -> Poll<()>;
    fn is_shed(&self, id: u64) -> bool;
}

impl<K: Eq + Hash + Clone + Send> SlotState for Mutex<State<K>> {
    fn establish(&self, id: u64) -> bool {
        let mut s = lock(self);
        let Some(p) = s.pending.remove(&id) else {
            return false;
        };
        if let Some(k) = s.keys.get_mut(&p.key) {
            k.pending.remove(&id);
        }
        s.established.insert(id, p.key);
        true
    }

    fn release(&self, id: u64) {
        let mut s = lock(self);
        if s.shed.remove(&id) {
            return;
        }
        let key = match s.pending.remove(&id) {
            Some(p) => p.key,
            None => match s.established.remove(&id) {
                Some(k) => k,
                None => return,
            },
        };
        s.release_key(&key, id);
        s.open -= 1;
    }

    fn poll_shed(&self, id: u64, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = lock(self);
        if s.shed.contains(&id) {
            return Poll::Ready(());
        }
        if let Some(p) = s.pending.get_mut(&id) {
            match &mut p.waker {
                Some(w) => w.clone_from(cx.waker()),
                None => p.waker = Some(cx.waker().clone()),
            }
        }
        // Established (or released): never shed.
        Poll::Pending
    }

    fn is_shed(&self, id: u64) -> bool {
        lock(self).shed.contains(&id)
    }
}

/// A connection's place in a [`ConnectionLimit`]; dropping it frees the place.
pub struct ConnectionSlot {
    id: u64,
    state: Arc<dyn SlotState>,
}

impl fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSlot")
            .field("id", &self.id)
            .field("shed", &self.is_shed())
            .finish()
    }
}

impl ConnectionSlot {
    /// Marks the connection established (its peer authenticated): it is never shed from now
    /// on. Returns `false` if it was shed already (close it).
    pub fn establish(&self) -> bool {
        self.state.establish(self.id)
    }

    /// Whether the connection was shed to make room for a newer one.
    pub fn is_shed(&self) -> bool {
        self.state.is_shed(self.id)
    }

    /// Resolves when the connection is shed; never, once it is established.
    pub fn shed(&self) -> Shed<'_> {
        Shed { slot: self }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.state.release(self.id);
    }
}

/// The future of [`ConnectionSlot::shed`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Shed<'a> {
    slot: &'a ConnectionSlot,
}

impl Future for Shed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.slot.state.poll_shed(self.slot.id, cx)
    }
}

#[cfg(test)]
#[path = "limit_tests.rs"]
mod tests;
