//! A [`CertificateSource`] over the SPIRE agent's Delegated Identity API.
//!
//! The first fetch of an identity starts a subscription (`SubscribeToX509SVIDs`) for its
//! [`Subject`]: the selectors given with [`SpireSource::set_subject`], a PID, or by default
//! `k8s:ns:<ns>` and `k8s:sa:<sa>` from an Istio-shaped ID. The subscription follows
//! rotations pushed by the agent and re-subscribes with back-off when the stream fails (an
//! agent restart); it keeps the last SVID meanwhile. A fetch returns the newest SVID the
//! stream delivered since the previous fetch, or, when none arrived within the deadline,
//! the current one while it is still valid. Each new SVID on the stream is announced to the
//! certificate manager ([`CertificateSource::pushes`]), which fetches it at once: a rotation
//! reaches new connections as soon as the agent pushes it, not at the manager's refresh
//! time. The trust bundles of every trust domain are
//! followed (`SubscribeToX509Bundles`) and handed out with each SVID as its roots (several
//! during a CA rotation), and to verifiers as they arrive: [`SpireSource::bundles`] to
//! watch them, [`SpireSource::shared_bundles`] to build verifiers that check every handshake
//! against the latest ones.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use spire_api::pb::spire::api::agent::delegatedidentity::v1::SubscribeToX509sviDsRequest;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::stream::{SvidState, follow_bundles, follow_svids};
use super::{Selector, SpireError, unix_channel};
use crate::bundle::{SharedTrustBundles, TrustBundleSet};
use crate::id::SpiffeId;
use crate::manager::CertificateSource;
use crate::x509::{FetchedSvid, X509Svid};

/// Settings of a [`SpireSource`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SourceConfig {
    /// Deadline of each call, and longest wait of a fetch (ztunnel's `SPIRE_TIMEOUT`).
    /// Default: 10 seconds.
    pub timeout: Duration,
    /// First delay before re-subscribing after a failure. Default: 200 ms.
    pub initial_backoff: Duration,
    /// Longest delay before re-subscribing. Default: 10 seconds.
    pub max_backoff: Duration,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Whom the agent attests for an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Subject {
    /// A process of the workload; the agent's workload attestors find its selectors.
    Pid(u32),
    /// The workload's selectors, trusted as given (e.g. `k8s:ns:<ns>`, `k8s:sa:<sa>`).
    Selectors(Vec<Selector>),
}

impl Subject {
    pub(super) fn to_request(&self) -> SubscribeToX509sviDsRequest {
        match self {
            Self::Pid(pid) => SubscribeToX509sviDsRequest {
                selectors: Vec::new(),
                pid: i32::try_from(*pid).unwrap_or(0),
            },
            Self::Selectors(selectors) => SubscribeToX509sviDsRequest {
                selectors: selectors.iter().map(Into::into).collect(),
                pid: 0,
            },
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pid(pid) => write!(f, "pid {pid}"),
            Self::Selectors(selectors) => {
                f.write_str("selectors [")?;
                for (i, s) in selectors.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{s}")?;
                }
                f.write_str("]")
            }
        }
    }
}

struct Subscription {
    subject: Subject,
    rx: watch::Receiver<SvidState>,
    task: AbortHandle,
    /// Changes when the stream brings a new SVID (its sender is the stream task's).
    pushed: watch::Receiver<()>,
    /// The leaf of the SVID the last fetch returned.
    handed: Option<CertificateDer<'static>>,
}

struct Inner {
    channel: Channel,
    config: SourceConfig,
    subjects: Mutex<HashMap<SpiffeId, Subject>>,
    subscriptions: Mutex<HashMap<SpiffeId, Subscription>>,
    bundles: watch::Receiver<Option<TrustBundleSet>>,
    shared: SharedTrustBundles,
    bundle_task: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.bundle_task.abort();
        for sub in lock(&self.subscriptions).values() {
            sub.task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// SVIDs from the SPIRE agent's Delegated Identity API, for the certificate manager.
/// Cloning shares the subscriptions.
#[derive(Clone)]
pub struct SpireSource {
    inner: Arc<Inner>,
}

impl fmt::Debug for SpireSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpireSource")
            .field("config", &self.inner.config)
            .field("subscriptions", &lock(&self.inner.subscriptions).len())
            .finish()
    }
}

impl SpireSource {
    /// A source over `channel` to the agent's admin socket (see
    /// [`unix_channel`]). Starts following the trust bundles. Must be
    /// called inside a tokio runtime.
    pub fn new(channel: Channel, config: SourceConfig) -> Self {
        let (tx, bundles) = watch::channel(None);
        let shared = SharedTrustBundles::default();
        let bundle_task = tokio::spawn(follow_bundles(
            channel.clone(),
            config.clone(),
            tx,
            shared.clone(),
        ))
        .abort_handle();
        Self {
            inner: Arc::new(Inner {
                channel,
                config,
                subjects: Mutex::new(HashMap::new()),
                subscriptions: Mutex::new(HashMap::new()),
                bundles,
                shared,
                bundle_task,
            }),
        }
    }

    /// A source over the agent's admin socket (`unix:///path` or `/path`), connected
    /// lazily. Must be called inside a tokio runtime.
    pub fn connect_unix(endpoint: &str, config: SourceConfig) -> Result<Self, SpireError> {
        Ok(Self::new(unix_channel(endpoint, config.timeout)?, config))
    }

    /// Attests `id` through `subject` from now on (a running subscription with another
    /// subject is replaced at the next fetch).
    pub fn set_subject(&self, id: &SpiffeId, subject: Subject) {
        lock(&self.inner.subjects).insert(id.clone(), subject);
    }

    /// Forgets `id`: its subject and its subscription.
    pub fn forget(&self, id: &SpiffeId) {
        lock(&self.inner.subjects).remove(id);
        if let Some(sub) = lock(&self.inner.subscriptions).remove(id) {
            sub.task.abort();
        }
    }

    /// The trust bundles the agent sent last (`None` until the first arrives); changes on
    /// every push, e.g. when a new root is added during a CA rotation.
    pub fn bundles(&self) -> watch::Receiver<Option<TrustBundleSet>> {
        self.inner.bundles.clone()
    }

    /// The trust bundles the agent sent last, for verifiers
    /// ([`SpiffeVerifierBuilder::roots`](crate::verify::SpiffeVerifierBuilder::roots),
    /// [`CertificateResolver::client_config`](crate::manager::CertificateResolver::client_config)):
    /// every push replaces them before [`bundles`](Self::bundles) announces it, so a root
    /// SPIRE adds during a CA rotation is trusted at the next handshake, without new TLS
    /// configurations or SVIDs. Empty until the first push.
    pub fn shared_bundles(&self) -> SharedTrustBundles {
        self.inner.shared.clone()
    }

    /// The identities with a running subscription.
    pub fn subscribed(&self) -> Vec<SpiffeId> {
        lock(&self.inner.subscriptions).keys().cloned().collect()
    }

    /// Fetches `id`'s SVID attested through exactly `subject` (replacing a subscription of
    /// `id` with another subject), with no fall-back to another subject: a caller that
    /// names its workloads by PID never has them asked for by selectors instead.
    pub async fn fetch_as(
        &self,
        id: &SpiffeId,
        subject: Subject,
    ) -> Result<FetchedSvid, SpireError> {
        let until = Instant::now() + self.inner.config.timeout;
        let svid = self.svid(id, subject, until).await?;
        let roots = self.roots(id, until).await?;
        self.record_handed(id, &svid);
        Ok(FetchedSvid::new(X509Svid::clone(&svid), roots))
    }

    fn subject_for(&self, id: &SpiffeId) -> Result<Subject, SpireError> {
        if let Some(subject) = lock(&self.inner.subjects).get(id) {
            return Ok(subject.clone());
        }
        Selector::for_istio_id(id)
            .map(Subject::Selectors)
            .ok_or_else(|| SpireError::NoSubject(id.clone()))
    }

    /// The subscription of `id` for `subject`, started or replaced as needed; with the leaf
    /// handed out last.
    fn subscription(
        &self,
        id: &SpiffeId,
        subject: Subject,
    ) -> (watch::Receiver<SvidState>, Option<CertificateDer<'static>>) {
        let mut subs = lock(&self.inner.subscriptions);
        if let Some(sub) = subs.get(id)
            && sub.subject == subject
            && !sub.task.is_finished()
        {
            return (sub.rx.clone(), sub.handed.clone());
        }
        if let Some(old) = subs.remove(id) {
            old.task.abort();
        }
        let (tx, rx) = watch::channel(SvidState::default());
        let (pushed_tx, pushed) = watch::channel(());
        let task = tokio::spawn(follow_svids(
            self.inner.channel.clone(),
            id.clone(),
            subject.clone(),
            self.inner.config.clone(),
            tx,
            pushed_tx,
        ))
        .abort_handle();
        subs.insert(
            id.clone(),
            Subscription {
                subject,
                rx: rx.clone(),
                task,
                pushed,
                handed: None,
            },
        );
        (rx, None)
    }

    fn record_handed(&self, id: &SpiffeId, svid: &X509Svid) {
        if let Some(sub) = lock(&self.inner.subscriptions).get_mut(id) {
            sub.handed = Some(svid.leaf().clone());
        }
    }

    /// The roots of `id`'s trust domain, waiting for the first bundle until `until`.
    async fn roots(
        &self,
        id: &SpiffeId,
        until: Instant,
    ) -> Result<Vec<CertificateDer<'static>>, SpireError> {
        let mut rx = self.inner.bundles.clone();
        loop {
            if let Some(set) = rx.borrow_and_update().as_ref() {
                return set
                    .get(id.trust_domain())
                    .map(|b| b.roots().to_vec())
                    .ok_or_else(|| SpireError::NoBundle(id.trust_domain().to_string()));
            }
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(SpireError::Closed),
                Err(_) => {
                    return Err(SpireError::Timeout {
                        call: "SubscribeToX509Bundles",
                        after: self.inner.config.timeout,
                    });
                }
            }
        }
    }

    /// The SVID to hand out for `id`: a new one from the stream, or after the deadline the
    /// current one if still valid, else the subscription's last error. An identity without
    /// an entry waits for the deadline too: an entry registered a moment ago reaches the
    /// agent within its sync interval, and the stream then pushes its SVID.
    async fn svid(
        &self,
        id: &SpiffeId,
        subject: Subject,
        until: Instant,
    ) -> Result<Arc<X509Svid>, SpireError> {
        let (mut rx, handed) = self.subscription(id, subject);
        loop {
            {
                let state = rx.borrow_and_update();
                let valid = state
                    .svid
                    .as_ref()
                    .filter(|s| s.not_after() > SystemTime::now());
                if let Some(svid) = valid
                    && handed.as_ref() != Some(svid.leaf())
                {
                    return Ok(svid.clone());
                }
            }
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(SpireError::Closed),
                Err(_) => break,
            }
        }
        let state = rx.borrow();
        if let Some(svid) = state
            .svid
            .as_ref()
            .filter(|s| s.not_after() > SystemTime::now())
        {
            // No rotation yet, or the agent is unreachable: keep serving the valid one.
            return Ok(svid.clone());
        }
        Err(state.error.clone().map_or(
            SpireError::Timeout {
                call: "SubscribeToX509SVIDs",
                after: self.inner.config.timeout,
            },
            SpireError::Subscription,
        ))
    }
}

impl CertificateSource for SpireSource {
    type Error = SpireError;

    /// Fetches `id`'s SVID attested through the subject set for it
    /// ([`set_subject`](Self::set_subject)), else through the selectors of its
    /// `ns/<ns>/sa/<sa>` path.
    async fn fetch(&self, id: &SpiffeId) -> Result<FetchedSvid, SpireError> {
        let subject = self.subject_for(id)?;
        self.fetch_as(id, subject).await
    }

    /// Ends the identity's subscription (see [`SpireSource::forget`]).
    fn forget(&self, id: &SpiffeId) {
        Self::forget(self, id);
    }

    /// The SVIDs the agent pushes for `id` from now on, already marked changed when the
    /// stream holds one other than the SVID the last fetch returned; `None` without a
    /// subscription. Ends with the subscription (forgotten, or replaced by another subject).
    fn pushes(&self, id: &SpiffeId) -> Option<watch::Receiver<()>> {
        let subs = lock(&self.inner.subscriptions);
        let sub = subs.get(id)?;
        let mut pushes = sub.pushed.clone();
        // Seen from now; the stream stores each SVID before announcing it, so one stored
        // before this point is caught below, one stored after it is announced.
        pushes.borrow_and_update();
        let newer = sub
            .rx
            .borrow()
            .svid
            .as_ref()
            .is_some_and(|svid| sub.handed.as_ref() != Some(svid.leaf()));
        if newer {
            pushes.mark_changed();
        }
        Some(pushes)
    }
}
