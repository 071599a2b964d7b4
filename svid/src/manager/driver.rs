//! The manager's scheduler: one driver task that expires certificates, queues due refreshes
//! and retries, and starts fetches by priority within the concurrency limit; and one task per
//! identity whose source pushes rotations, which queues a fetch on each push.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use futures_util::FutureExt as _;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{
    CertificateSource, FetchError, ManagerConfig, Priority, Shared, SourcePanicked, live, next_seq,
};
use crate::id::SpiffeId;
use crate::x509::FetchedSvid;

/// The retry delays of one identity after consecutive failures.
fn backoff(config: &ManagerConfig) -> ExponentialBackoff {
    let builder = ExponentialBuilder::new()
        .with_min_delay(config.initial_backoff)
        .with_max_delay(config.max_backoff)
        .with_factor(2.0)
        .without_max_times();
    if config.jitter {
        builder.with_jitter().build()
    } else {
        builder.build()
    }
}

/// `now + d`, or about 30 years from now when that does not fit an `Instant` (the settings
/// are the caller's; a huge delay means "not in the lifetime of this process").
fn after(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// Time from now until `t` (zero if past).
fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now()).unwrap_or_default()
}

pub(super) async fn drive<S: CertificateSource>(weak: Weak<Shared<S>>, wake: Arc<Notify>) {
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let next = step(&shared);
        drop(shared);
        match next {
            Some(at) => {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// One pass of the scheduler: expire, move due timers to the queue, start fetches. Returns
/// the next instant something is due.
fn step<S: CertificateSource>(shared: &Arc<Shared<S>>) -> Option<Instant> {
    let now = Instant::now();
    let mut st = shared.lock();
    let mut seq = st.seq;
    for (id, e) in st.entries.iter_mut() {
        if let Some(exp) = e.expires
            && exp <= now
        {
            e.expires = None;
            tracing::warn!(identity = %id, "certificate expired without a replacement");
            e.state.send_modify(|s| s.certificate = None);
        }
        if let Some((at, p)) = e.scheduled
            && at <= now
            && e.task.is_none()
        {
            e.scheduled = None;
            seq += 1;
            e.enqueue(p, seq);
        }
    }
    st.seq = seq;
    let max = shared.config.max_in_flight;
    while st.in_flight < max {
        let best = st
            .entries
            .iter()
            .filter(|(_, e)| e.task.is_none())
            .filter_map(|(id, e)| e.queued.map(|(p, s)| (p, std::cmp::Reverse(s), id)))
            .max()
            .map(|(_, _, id)| id.clone());
        let Some(id) = best else { break };
        let Some(e) = st.entries.get_mut(&id) else {
            break;
        };
        let priority = e.queued.take().map(|(p, _)| p);
        let generation = e.generation;
        tracing::debug!(identity = %id, ?priority, "fetching certificate");
        let task = tokio::spawn(fetch_one(shared.clone(), id, generation));
        e.task = Some(task.abort_handle());
        st.in_flight += 1;
    }
    st.entries
        .values()
        .flat_map(|e| [e.expires, e.scheduled.map(|(t, _)| t)])
        .flatten()
        .min()
}

async fn fetch_one<S: CertificateSource>(shared: Arc<Shared<S>>, id: SpiffeId, generation: u64) {
    // A panicking source must not leave the identity stuck with a fetch that never ends.
    let result: Result<FetchedSvid, FetchError> =
        match std::panic::AssertUnwindSafe(shared.source.fetch(&id))
            .catch_unwind()
            .await
        {
            Ok(Ok(fetched)) => Ok(fetched),
            Ok(Err(e)) => Err(Arc::new(e)),
            Err(_) => Err(Arc::new(SourcePanicked)),
        };
    // Asked before taking the lock: the source may take locks of its own. Asked after a
    // failure too, so that a certificate the source pushes later (an entry registered a
    // moment after the first fetch) does not wait for the back-off.
    let pushes =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.source.pushes(&id)))
            .unwrap_or_default();
    let cfg = &shared.config;
    let mut st = shared.lock();
    let st = &mut *st;
    let Some(e) = live(&mut st.entries, &id, generation) else {
        // Forgotten meanwhile; the slot was released then.
        return;
    };
    e.task = None;
    st.in_flight = st.in_flight.saturating_sub(1);
    let now = Instant::now();
    match result {
        Ok(fetched) => {
            let refresh_in = until(fetched.svid.refresh_at()).max(cfg.min_refresh_delay);
            let expires_in = until(fetched.svid.not_after());
            e.expires = Some(after(now, expires_in));
            e.scheduled = Some((after(now, refresh_in), Priority::Rotation));
            e.backoff = None;
            if let Some(w) = e.watcher.take() {
                w.abort();
            }
            e.watcher = pushes.map(|rx| spawn_watcher(&shared, &id, generation, rx));
            e.state.send_if_modified(|s| {
                s.attempts += 1;
                let same = s.certificate.as_deref().is_some_and(|held| {
                    held.svid.cert_chain() == fetched.svid.cert_chain()
                        && held.roots == fetched.roots
                });
                if same {
                    // Holders keep the certificate (and the keys built from it) they have.
                    tracing::debug!(identity = %id, ?refresh_in, "certificate unchanged");
                    return s.last_error.take().is_some();
                }
                tracing::debug!(identity = %id, ?refresh_in, ?expires_in, "certificate installed");
                s.certificate = Some(Arc::new(fetched));
                s.last_error = None;
                true
            });
        }
        Err(err) => {
            let delay = e
                .backoff
                .get_or_insert_with(|| backoff(cfg))
                .next()
                .unwrap_or(cfg.max_backoff);
            let mut at = after(now, delay);
            if let Some(exp) = e.expires {
                at = at.min(exp);
            }
            let has_cert = e.state.borrow().certificate.is_some();
            let priority = if has_cert {
                Priority::Rotation
            } else {
                Priority::Prefetch
            };
            // A holder asking on demand meanwhile keeps that priority for the retry.
            let priority = e.queued.map_or(priority, |(p, _)| p.max(priority));
            e.queued = None;
            e.scheduled = Some((at, priority));
            // A watcher already running is kept: a new one would report at once an SVID the
            // source holds but could not hand out (e.g. without its roots), every failure.
            if e.watcher.is_none() {
                e.watcher = pushes.map(|rx| spawn_watcher(&shared, &id, generation, rx));
            }
            tracing::warn!(identity = %id, error = %err, retry_in = ?at.saturating_duration_since(now), "certificate fetch failed");
            e.state.send_modify(|s| {
                s.last_error = Some(err);
                s.attempts += 1;
            });
        }
    }
    shared.wake.notify_one();
}

fn spawn_watcher<S: CertificateSource>(
    shared: &Arc<Shared<S>>,
    id: &SpiffeId,
    generation: u64,
    pushes: watch::Receiver<()>,
) -> tokio::task::AbortHandle {
    tokio::spawn(watch_pushes(
        Arc::downgrade(shared),
        id.clone(),
        generation,
        pushes,
    ))
    .abort_handle()
}

/// Follows the pushes of `id`'s source: each one queues a fetch at [`Priority::Rotation`]
/// unless one is running (whose end asks the source again). After a failed fetch, a push
/// brings the retry forward to the first back-off delay instead, so a source that keeps
/// failing is not asked in a tight loop. Ends when the source drops its sender, the entry
/// is gone, or the manager is.
async fn watch_pushes<S: CertificateSource>(
    weak: Weak<Shared<S>>,
    id: SpiffeId,
    generation: u64,
    mut pushes: watch::Receiver<()>,
) {
    while pushes.changed().await.is_ok() {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        {
            let mut st = shared.lock();
            let seq = next_seq(&mut st);
            let Some(e) = live(&mut st.entries, &id, generation) else {
                return;
            };
            if e.task.is_some() {
                continue;
            }
            if e.backoff.is_some() {
                let soon = Instant::now() + shared.config.initial_backoff;
                let (at, priority) = e.scheduled.unwrap_or((soon, Priority::Rotation));
                tracing::debug!(identity = %id, "the source pushed a certificate; retrying soon");
                e.scheduled = Some((at.min(soon), priority));
            } else {
                tracing::debug!(identity = %id, "the source pushed a certificate");
                e.enqueue(Priority::Rotation, seq);
            }
        }
        shared.wake.notify_one();
    }
}
