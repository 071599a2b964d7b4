//! The certificate manager: one certificate per identity, shared by every holder, refreshed
//! at half-life or as soon as the source pushes a new one, fetched with bounded concurrency
//! and priorities, retried with back-off; and
//! a rustls certificate resolver that always presents the current certificate
//! ([`CertificateResolver`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::ExponentialBackoff;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::id::SpiffeId;
use crate::x509::FetchedSvid;

mod driver;
mod resolver;

pub use resolver::CertificateResolver;

/// Where certificates come from: the gRPC `service::client::CaClient` (feature `service`), a
/// local `ca::CertificateAuthority` (feature `ca`), or anything else (a SPIRE agent, a test
/// double).
pub trait CertificateSource: Send + Sync + 'static {
    /// Why a fetch failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Obtains a fresh certificate for `id`.
    fn fetch(&self, id: &SpiffeId)
    -> impl Future<Output = Result<FetchedSvid, Self::Error>> + Send;

    /// The manager forgot `id` (its last holder is gone): a source that keeps state per
    /// identity (a SPIRE subscription) may drop it. The default does nothing.
    fn forget(&self, id: &SpiffeId) {
        let _ = id;
    }

    /// Pushed certificates: called after each fetch of `id` (after a failed one only while
    /// no receiver of `id` is being watched), returns a receiver
    /// that changes when the source holds a certificate for `id` other than the one that
    /// fetch returned (a rotation the SPIRE agent pushed on its stream). The manager then
    /// fetches again at once instead of at the refresh time; the receiver must therefore be
    /// marked changed already if such a certificate arrived before this call. A receiver
    /// whose sender is gone stops the watch until the next fetch. The default,
    /// `None`, suits sources that only answer fetches (the CA client).
    fn pushes(&self, id: &SpiffeId) -> Option<watch::Receiver<()>> {
        let _ = id;
        None
    }
}

impl<T: CertificateSource> CertificateSource for Arc<T> {
    type Error = T::Error;
    fn fetch(
        &self,
        id: &SpiffeId,
    ) -> impl Future<Output = Result<FetchedSvid, Self::Error>> + Send {
        T::fetch(self, id)
    }
    fn forget(&self, id: &SpiffeId) {
        T::forget(self, id);
    }
    fn pushes(&self, id: &SpiffeId) -> Option<watch::Receiver<()>> {
        T::pushes(self, id)
    }
}

/// How urgently a certificate is wanted. Requests waiting for a free slot start in this
/// order: [`OnDemand`](Priority::OnDemand), then [`Prefetch`](Priority::Prefetch), then
/// [`Rotation`](Priority::Rotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Priority {
    /// Replacing a certificate that is still valid (background).
    Rotation,
    /// Warming up for a workload that will need it soon.
    Prefetch,
    /// A connection is waiting for it now.
    OnDemand,
}

/// Settings of a [`CertificateManager`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ManagerConfig {
    /// Most fetches running at once. Default: 8.
    pub max_in_flight: usize,
    /// First retry delay after a failure. Default: 1 second.
    pub initial_backoff: Duration,
    /// Longest retry delay. Default: 150 seconds.
    pub max_backoff: Duration,
    /// Stretch each retry delay by a random 0–100 % (the jitter of backon's
    /// `ExponentialBuilder`), so that many clients of one CA do not retry in step. Default:
    /// `true`.
    pub jitter: bool,
    /// Shortest delay before a refresh, so a certificate whose half-life is already past
    /// does not cause a tight loop. Default: 1 second.
    pub min_refresh_delay: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 8,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(150),
            jitter: true,
            min_refresh_delay: Duration::from_secs(1),
        }
    }
}

/// Why no certificate could be handed out.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The last fetch failed and no valid certificate is held; a retry is scheduled.
    #[error("fetching the certificate for {id} failed: {source}")]
    FetchFailed {
        /// The identity.
        id: SpiffeId,
        /// The source's error (downcast it to the [`CertificateSource::Error`] type, for
        /// example to read the gRPC status of a `service::client::CaClientError`).
        #[source]
        source: FetchError,
    },
    /// The manager has shut down.
    #[error("certificate manager has shut down")]
    Closed,
}

/// The error of a failed fetch, shared by every holder: the source's own error value.
pub type FetchError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A certificate source that panicked (the fetch then counts as failed).
#[derive(Debug, thiserror::Error)]
#[error("the certificate source panicked")]
struct SourcePanicked;

/// What holders observe for one identity.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CertificateState {
    /// The valid certificate, if any. Removed when it expires.
    pub certificate: Option<Arc<FetchedSvid>>,
    /// The error of the last fetch, cleared on success.
    pub last_error: Option<FetchError>,
    /// Number of fetches that finished (successfully or not).
    pub attempts: u64,
}

struct Entry {
    holders: usize,
    state: watch::Sender<CertificateState>,
    /// Waiting for a slot, with this priority and queue order.
    queued: Option<(Priority, u64)>,
    /// A fetch is running.
    task: Option<AbortHandle>,
    /// Follows the source's pushes ([`CertificateSource::pushes`]).
    watcher: Option<AbortHandle>,
    /// The next refresh or retry, and its priority.
    scheduled: Option<(Instant, Priority)>,
    /// The retry delays after consecutive failures; reset by a success.
    backoff: Option<ExponentialBackoff>,
    /// When the held certificate expires.
    expires: Option<Instant>,
    generation: u64,
}

impl Entry {
    /// Queues a fetch at `priority` (keeping a higher one and the place of a queued fetch).
    fn enqueue(&mut self, priority: Priority, seq: u64) {
        self.queued = Some(match self.queued {
            Some((q, s)) => (q.max(priority), s),
            None => (priority, seq),
        });
    }

    /// Aborts the fetch and the push watcher; returns whether a fetch was running.
    fn stop(&mut self) -> bool {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        self.task.take().map(|t| t.abort()).is_some()
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<SpiffeId, Entry>,
    in_flight: usize,
    seq: u64,
    generation: u64,
}

struct Shared<S> {
    source: Arc<S>,
    config: ManagerConfig,
    state: Mutex<State>,
    wake: Arc<Notify>,
    driver: Mutex<Option<AbortHandle>>,
}

impl<S> Drop for Shared<S> {
    fn drop(&mut self) {
        if let Ok(mut d) = self.driver.lock()
            && let Some(h) = d.take()
        {
            h.abort();
        }
        let st = match self.state.get_mut() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        for e in st.entries.values_mut() {
            e.stop();
        }
    }
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than stopping; keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Hands out one certificate per identity to any number of holders.
///
/// - [`hold`](CertificateManager::hold) registers interest and starts a fetch (at the given
///   priority) if the identity is new; the returned [`CertificateHandle`] releases on drop,
///   and the identity is forgotten when its last holder goes.
/// - A certificate is refreshed at half-life ([`X509Svid::refresh_at`](crate::X509Svid::refresh_at))
///   with [`Priority::Rotation`]. At most [`ManagerConfig::max_in_flight`] fetches run at
///   once; queued fetches start by priority.
/// - A source that pushes rotations ([`CertificateSource::pushes`], e.g. SPIRE's stream) has
///   its new certificate fetched and installed as soon as it announces it, also with
///   [`Priority::Rotation`], without waiting for the refresh time. A push while a retry
///   waits after a failure (an entry registered after the first fetch) brings the retry
///   forward to [`initial_backoff`](ManagerConfig::initial_backoff) from the push; a failure
///   still lengthens the back-off. A fetch returning
///   the certificate already held (same chain, same roots) changes nothing for holders.
/// - A failed fetch is retried after an exponential back-off (backon's `ExponentialBuilder`:
///   from [`initial_backoff`](ManagerConfig::initial_backoff), doubling, up to
///   [`max_backoff`](ManagerConfig::max_backoff), each delay stretched by a random 0–100 %
///   when [`jitter`](ManagerConfig::jitter) is on), never later than the expiry of the
///   certificate still held. That certificate keeps being served until it expires.
///
/// Timers use `tokio::time`, so tests can run under paused time. Create it inside a tokio
/// runtime: it spawns a driver task, which stops when the manager, its clones and all handles
/// are gone.
pub struct CertificateManager<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for CertificateManager<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S> fmt::Debug for CertificateManager<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("CertificateManager")
            .field("identities", &st.entries.len())
            .field("in_flight", &st.in_flight)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<S: CertificateSource> CertificateManager<S> {
    /// A manager fetching from `source`. Must be called inside a tokio runtime.
    pub fn new(source: S, config: ManagerConfig) -> Self {
        let mut config = config;
        config.max_in_flight = config.max_in_flight.max(1);
        let shared = Arc::new(Shared {
            source: Arc::new(source),
            config,
            state: Mutex::new(State::default()),
            wake: Arc::new(Notify::new()),
            driver: Mutex::new(None),
        });
        let task = tokio::spawn(driver::drive(Arc::downgrade(&shared), shared.wake.clone()));
        if let Ok(mut d) = shared.driver.lock() {
            *d = Some(task.abort_handle());
        }
        Self { shared }
    }

    /// Registers a holder of `id`'s certificate. A new identity is fetched at `priority`; a
    /// known one that is still waiting for its first certificate has its priority raised if
    /// `priority` is higher.
    pub fn hold(&self, id: &SpiffeId, priority: Priority) -> CertificateHandle {
        let mut st = self.shared.lock();
        let seq = next_seq(&mut st);
        let st = &mut *st;
        let rx = match st.entries.get_mut(id) {
            Some(e) => {
                e.holders += 1;
                raise(e, priority);
                e.state.subscribe()
            }
            None => {
                st.generation += 1;
                let (tx, rx) = watch::channel(CertificateState::default());
                st.entries.insert(
                    id.clone(),
                    Entry {
                        holders: 1,
                        state: tx,
                        queued: Some((priority, seq)),
                        task: None,
                        watcher: None,
                        scheduled: None,
                        backoff: None,
                        expires: None,
                        generation: st.generation,
                    },
                );
                rx
            }
        };
        self.shared.wake.notify_one();
        CertificateHandle {
            id: id.clone(),
            rx,
            manager: self.shared.clone(),
        }
    }

    /// The identities currently held.
    pub fn identities(&self) -> Vec<SpiffeId> {
        self.shared.lock().entries.keys().cloned().collect()
    }

    /// Number of fetches running now.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight
    }
}

/// The entry of `id` if it is still the one of `generation` (not forgotten meanwhile).
fn live<'a>(
    entries: &'a mut HashMap<SpiffeId, Entry>,
    id: &SpiffeId,
    generation: u64,
) -> Option<&'a mut Entry> {
    entries.get_mut(id).filter(|e| e.generation == generation)
}

fn next_seq(st: &mut State) -> u64 {
    st.seq += 1;
    st.seq
}

/// Raises the priority of a fetch that has not produced a certificate yet.
fn raise(e: &mut Entry, priority: Priority) {
    let has_cert = e.state.borrow().certificate.is_some();
    if let Some((p, _)) = &mut e.queued
        && *p < priority
    {
        *p = priority;
    }
    if let Some((_, p)) = &mut e.scheduled
        && *p < priority
        && !has_cert
    {
        *p = priority;
    }
}

/// Object-safe part of the manager that handles need.
trait Release: Send + Sync {
    fn release(&self, id: &SpiffeId);
    fn want_now(&self, id: &SpiffeId);
}

impl<S: CertificateSource> Release for Shared<S> {
    fn release(&self, id: &SpiffeId) {
        let mut st = self.lock();
        let Some(e) = st.entries.get_mut(id) else {
            return;
        };
        e.holders = e.holders.saturating_sub(1);
        if e.holders > 0 {
            return;
        }
        if let Some(mut e) = st.entries.remove(id)
            && e.stop()
        {
            st.in_flight = st.in_flight.saturating_sub(1);
        }
        tracing::debug!(identity = %id, "forgot identity");
        drop(st);
        self.source.forget(id);
        self.wake.notify_one();
    }

    fn want_now(&self, id: &SpiffeId) {
        let mut st = self.lock();
        if let Some(e) = st.entries.get_mut(id) {
            raise(e, Priority::OnDemand);
        }
        drop(st);
        self.wake.notify_one();
    }
}

/// A holder's share of one identity's certificate. Dropping it releases the share; the
/// identity is forgotten when the last share goes. A handle keeps the manager running.
pub struct CertificateHandle {
    id: SpiffeId,
    rx: watch::Receiver<CertificateState>,
    manager: Arc<dyn Release>,
}

impl fmt::Debug for CertificateHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateHandle")
            .field("id", &self.id)
            .field("has_certificate", &self.rx.borrow().certificate.is_some())
            .finish()
    }
}

impl CertificateHandle {
    /// The identity.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The current valid certificate, if any.
    pub fn current(&self) -> Option<Arc<FetchedSvid>> {
        self.rx.borrow().certificate.clone()
    }

    /// The full state (certificate, last error, number of attempts).
    pub fn state(&self) -> CertificateState {
        self.rx.borrow().clone()
    }

    /// A receiver that changes whenever the certificate is replaced, expires, or a fetch
    /// fails; use it to rebuild TLS configurations on rotation.
    pub fn subscribe(&self) -> watch::Receiver<CertificateState> {
        self.rx.clone()
    }

    /// Returns the current certificate, or waits for one. A fetch still waiting for a slot is
    /// moved to [`Priority::OnDemand`]. Returns an error when no valid certificate is held
    /// and the last fetch failed (a retry stays scheduled), or when the next fetch fails.
    pub async fn get(&self) -> Result<Arc<FetchedSvid>, ManagerError> {
        let mut rx = self.rx.clone();
        let start_attempts = {
            let s = rx.borrow_and_update();
            if let Some(c) = &s.certificate {
                return Ok(c.clone());
            }
            if let Some(source) = &s.last_error {
                return Err(ManagerError::FetchFailed {
                    id: self.id.clone(),
                    source: source.clone(),
                });
            }
            s.attempts
        };
        self.manager.want_now(&self.id);
        loop {
            if rx.changed().await.is_err() {
                return Err(ManagerError::Closed);
            }
            let s = rx.borrow_and_update();
            if let Some(c) = &s.certificate {
                return Ok(c.clone());
            }
            if s.attempts > start_attempts
                && let Some(source) = &s.last_error
            {
                return Err(ManagerError::FetchFailed {
                    id: self.id.clone(),
                    source: source.clone(),
                });
            }
        }
    }
}

impl Drop for CertificateHandle {
    fn drop(&mut self) {
        self.manager.release(&self.id);
    }
}
