//! Certificate manager behaviour under paused tokio time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshwire_svid::SpiffeId;
use meshwire_svid::manager::{
    CertificateManager, CertificateSource, ManagerConfig, ManagerError, Priority,
};
use meshwire_svid::test_util::TestPki;
use meshwire_svid::x509::FetchedSvid;
use tokio::sync::Semaphore;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
#[error("CA unavailable")]
struct Down;

/// Issues from a local CA with a fixed lifetime; can be switched off and gated.
struct TestSource {
    pki: TestPki,
    ttl: Duration,
    down: AtomicBool,
    gate: Option<Semaphore>,
    calls: Mutex<Vec<(SpiffeId, Instant)>>,
}

impl TestSource {
    fn new(ttl: Duration) -> Self {
        Self {
            pki: TestPki::new("cluster.local"),
            ttl,
            down: AtomicBool::new(false),
            gate: None,
            calls: Mutex::new(Vec::new()),
        }
    }
    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
    fn call_times(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().iter().map(|c| c.1).collect()
    }
    fn call_ids(&self) -> Vec<SpiffeId> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.0.clone())
            .collect()
    }
}

impl CertificateSource for TestSource {
    type Error = Down;
    async fn fetch(&self, id: &SpiffeId) -> Result<FetchedSvid, Down> {
        self.calls
            .lock()
            .unwrap()
            .push((id.clone(), Instant::now()));
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(Down);
        }
        let svid = self.pki.svid_for(id, self.ttl);
        Ok(FetchedSvid::new(svid, vec![self.pki.ca().root().clone()]))
    }
}

fn id(name: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://cluster.local/ns/default/sa/{name}")).unwrap()
}

fn serial(f: &FetchedSvid) -> Vec<u8> {
    f.svid.leaf().as_ref().to_vec()
}

async fn settle() {
    // Let spawned tasks run without moving the paused clock much.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn refreshes_at_half_life_before_expiry() {
    let source = Arc::new(TestSource::new(Duration::from_secs(100)));
    let mgr = CertificateManager::new(source.clone(), ManagerConfig::default());
    let start = Instant::now();
    let h = mgr.hold(&id("a"), Priority::Prefetch);
    let first = h.get().await.unwrap();
    assert_eq!(first.svid.spiffe_id(), &id("a"));
    assert_eq!(source.calls(), 1);

    tokio::time::sleep(Duration::from_secs(45)).await;
    settle().await;
    assert_eq!(source.calls(), 1, "no refresh before half-life");
    assert_eq!(serial(&h.current().unwrap()), serial(&first));

    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(source.calls(), 2, "refreshed around half-life");
    let refreshed_at = source.call_times()[1] - start;
    assert!(
        refreshed_at >= Duration::from_secs(48) && refreshed_at <= Duration::from_secs(51),
        "{refreshed_at:?}"
    );
    let second = h.current().unwrap();
    assert_ne!(serial(&second), serial(&first), "new certificate installed");

    // And it keeps rotating: the next refresh comes about 50 s after the previous one.
    tokio::time::sleep(Duration::from_secs(55)).await;
    settle().await;
    assert_eq!(source.calls(), 3);
    assert!(h.current().is_some());
}

#[tokio::test(start_paused = true)]
async fn ca_down_keeps_serving_old_certificate_then_recovers() {
    let source = Arc::new(TestSource::new(Duration::from_secs(100)));
    let mgr = CertificateManager::new(source.clone(), ManagerConfig::default());
    let start = Instant::now();
    let h = mgr.hold(&id("a"), Priority::OnDemand);
    let first = h.get().await.unwrap();
    source.down.store(true, Ordering::SeqCst);

    // Past half-life: the refresh fails, the old certificate is still served.
    tokio::time::sleep(Duration::from_secs(60)).await;
    settle().await;
    let failures = source.calls() - 1;
    assert!(failures >= 2, "refresh attempted and retried: {failures}");
    assert_eq!(serial(&h.current().unwrap()), serial(&first));
    assert_eq!(serial(&h.get().await.unwrap()), serial(&first));
    assert!(h.state().last_error.is_some());

    // Retries back off exponentially: the n-th delay is 2^n s stretched by 0-100 % jitter.
    tokio::time::sleep(Duration::from_secs(30)).await;
    settle().await;
    let times = source.call_times();
    let gaps: Vec<f64> = times[1..]
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    assert!(gaps.len() >= 4, "{gaps:?}");
    for (n, gap) in gaps.iter().enumerate() {
        let base = f64::from(1u32 << n);
        assert!(
            (base - 0.01..=2.0 * base + 0.01).contains(gap),
            "retry {n} after {gap} s: {gaps:?}"
        );
    }

    // At expiry (100 s) the old certificate is withdrawn; a retry is scheduled no later
    // than the expiry.
    let until_expiry = Duration::from_secs(101).saturating_sub(start.elapsed());
    let before = source.calls();
    tokio::time::sleep(until_expiry).await;
    settle().await;
    assert!(h.current().is_none(), "expired certificate is not served");
    assert!(source.calls() > before, "a retry happened by the expiry");
    assert!(matches!(
        h.get().await,
        Err(ManagerError::FetchFailed { .. })
    ));

    // The CA comes back: the next retry installs a new certificate.
    source.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(150)).await;
    settle().await;
    let fresh = h.current().expect("recovered");
    assert_ne!(serial(&fresh), serial(&first));
    assert!(h.state().last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn backoff_is_capped() {
    let source = Arc::new(TestSource::new(Duration::from_secs(100)));
    source.down.store(true, Ordering::SeqCst);
    let mgr = CertificateManager::new(source.clone(), ManagerConfig::default());
    let h = mgr.hold(&id("a"), Priority::Prefetch);
    assert!(matches!(
        h.get().await,
        Err(ManagerError::FetchFailed { .. })
    ));
    tokio::time::sleep(Duration::from_secs(1500)).await;
    settle().await;
    // The delay reaches the 150 s cap, stretched by at most 100 % jitter.
    let times = source.call_times();
    let max_gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(max_gap <= Duration::from_secs(301), "{max_gap:?}");
    assert!(
        max_gap >= Duration::from_secs(150),
        "reaches the cap: {max_gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn one_certificate_per_identity_and_forget_on_last_release() {
    let source = Arc::new(TestSource::new(Duration::from_secs(100)));
    let mgr = CertificateManager::new(source.clone(), ManagerConfig::default());
    let h1 = mgr.hold(&id("a"), Priority::Prefetch);
    let h2 = mgr.hold(&id("a"), Priority::OnDemand);
    let (c1, c2) = (h1.get().await.unwrap(), h2.get().await.unwrap());
    assert!(Arc::ptr_eq(&c1, &c2), "shared certificate");
    assert_eq!(source.calls(), 1);
    assert_eq!(mgr.identities(), vec![id("a")]);

    drop(h1);
    assert_eq!(mgr.identities(), vec![id("a")], "still held");
    drop(h2);
    assert!(mgr.identities().is_empty(), "forgotten");
    // No refresh for a forgotten identity.
    tokio::time::sleep(Duration::from_secs(200)).await;
    settle().await;
    assert_eq!(source.calls(), 1);
    // Holding again fetches again.
    let h3 = mgr.hold(&id("a"), Priority::OnDemand);
    h3.get().await.unwrap();
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn bounded_concurrency_with_priorities() {
    let mut src = TestSource::new(Duration::from_secs(100));
    src.gate = Some(Semaphore::new(0));
    let source = Arc::new(src);
    let mut cfg = ManagerConfig::default();
    cfg.max_in_flight = 1;
    let mgr = CertificateManager::new(source.clone(), cfg);

    let first = mgr.hold(&id("first"), Priority::Prefetch);
    settle().await;
    assert_eq!(source.call_ids(), vec![id("first")]);
    assert_eq!(mgr.in_flight(), 1);
    let rotation = mgr.hold(&id("rotation"), Priority::Rotation);
    let prefetch = mgr.hold(&id("prefetch"), Priority::Prefetch);
    let on_demand = mgr.hold(&id("demand"), Priority::Prefetch);
    settle().await;
    assert_eq!(source.calls(), 1, "only one in flight");

    // A holder waits on demand: that request jumps the queue.
    let waiter =
        tokio::spawn(async move { on_demand.get().await.map(|c| c.svid.spiffe_id().clone()) });
    settle().await;
    let gate = source.gate.as_ref().unwrap();
    for _ in 0..4 {
        gate.add_permits(1);
        settle().await;
    }
    assert_eq!(
        source.call_ids(),
        vec![id("first"), id("demand"), id("prefetch"), id("rotation")]
    );
    assert_eq!(waiter.await.unwrap().unwrap(), id("demand"));
    for h in [&first, &rotation, &prefetch] {
        assert!(h.current().is_some());
    }
    assert_eq!(mgr.in_flight(), 0);

    // Dropping a holder whose fetch is running frees the slot.
    let slow = mgr.hold(&id("slow"), Priority::Prefetch);
    settle().await;
    assert_eq!(mgr.in_flight(), 1);
    drop(slow);
    assert_eq!(mgr.in_flight(), 0);
    let next = mgr.hold(&id("next"), Priority::Prefetch);
    settle().await;
    gate.add_permits(1);
    settle().await;
    assert!(next.current().is_some());
}

#[tokio::test(start_paused = true)]
async fn extreme_settings_do_not_break_the_manager() {
    let source = Arc::new(TestSource::new(Duration::from_secs(100)));
    let mut cfg = ManagerConfig::default();
    cfg.initial_backoff = Duration::MAX;
    cfg.max_backoff = Duration::MAX;
    cfg.min_refresh_delay = Duration::MAX;
    // Zero concurrency is read as one.
    cfg.max_in_flight = 0;
    let mgr = CertificateManager::new(source.clone(), cfg);
    let limit = Duration::from_secs(5);

    // Success path: the refresh delay is at its maximum.
    let ok = mgr.hold(&id("ok"), Priority::OnDemand);
    let got = tokio::time::timeout(limit, ok.get())
        .await
        .expect("no answer");
    assert_eq!(got.unwrap().svid.spiffe_id(), &id("ok"));

    // Failure path: the back-off is at its maximum, and the jitter stretches it further.
    source.down.store(true, Ordering::SeqCst);
    let failing = mgr.hold(&id("failing"), Priority::OnDemand);
    let got = tokio::time::timeout(limit, failing.get())
        .await
        .expect("no answer");
    assert!(
        matches!(got, Err(ManagerError::FetchFailed { .. })),
        "{got:?}"
    );
    assert_eq!(mgr.in_flight(), 0);

    // Without jitter the first retry comes after exactly the initial back-off.
    let mut cfg = ManagerConfig::default();
    cfg.jitter = false;
    let mgr = CertificateManager::new(source.clone(), cfg);
    let h = mgr.hold(&id("steady"), Priority::OnDemand);
    let got = tokio::time::timeout(limit, h.get())
        .await
        .expect("no answer");
    assert!(
        matches!(got, Err(ManagerError::FetchFailed { .. })),
        "{got:?}"
    );
    source.down.store(false, Ordering::SeqCst);
    let failed_at = *source.call_times().last().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    settle().await;
    assert!(h.current().is_some(), "retried after a second");
    let retried_at = *source.call_times().last().unwrap();
    assert_eq!(retried_at - failed_at, Duration::from_secs(1));
}

/// Panics on its first call, then issues normally.
struct PanicsOnce {
    inner: TestSource,
    panicked: AtomicBool,
}

impl CertificateSource for PanicsOnce {
    type Error = Down;
    async fn fetch(&self, id: &SpiffeId) -> Result<FetchedSvid, Down> {
        if !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("test source panics");
        }
        self.inner.fetch(id).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_source_counts_as_a_failed_fetch() {
    let source = PanicsOnce {
        inner: TestSource::new(Duration::from_secs(100)),
        panicked: AtomicBool::new(false),
    };
    let mut cfg = ManagerConfig::default();
    cfg.max_in_flight = 1;
    let mgr = CertificateManager::new(source, cfg);
    let h = mgr.hold(&id("a"), Priority::OnDemand);
    let got = tokio::time::timeout(Duration::from_secs(5), h.get())
        .await
        .expect("no answer");
    let Err(ManagerError::FetchFailed { source, .. }) = got else {
        panic!("{got:?}");
    };
    assert!(source.to_string().contains("panicked"), "{source}");
    assert_eq!(mgr.in_flight(), 0, "the slot is free again");
    // The retry (after about a second) succeeds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert!(h.current().is_some());
}

#[tokio::test(start_paused = true)]
async fn the_source_error_is_kept_for_holders() {
    let source = Arc::new(TestSource::new(Duration::from_secs(100)));
    source.down.store(true, Ordering::SeqCst);
    let mgr = CertificateManager::new(source.clone(), ManagerConfig::default());
    let h = mgr.hold(&id("a"), Priority::OnDemand);
    let Err(ManagerError::FetchFailed { source: e, .. }) = h.get().await else {
        panic!("must fail");
    };
    assert!(e.downcast_ref::<Down>().is_some(), "{e:?}");
    let state = h.state();
    assert!(state.last_error.unwrap().downcast_ref::<Down>().is_some());
    assert_eq!(state.attempts, 1);
}
