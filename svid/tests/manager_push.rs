//! The certificate manager with a source that pushes rotations, under paused tokio time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshwire_svid::SpiffeId;
use meshwire_svid::manager::{
    CertificateHandle, CertificateManager, CertificateSource, ManagerConfig, Priority,
};
use meshwire_svid::test_util::TestPki;
use meshwire_svid::x509::FetchedSvid;
use tokio::sync::watch;
use tokio::time::Instant;

/// Hands out its current certificate, and announces each one it is given, as SPIRE's stream
/// does.
struct Pushing {
    pki: TestPki,
    current: Mutex<FetchedSvid>,
    pushed: watch::Sender<()>,
    fetches: AtomicUsize,
    forgotten: AtomicUsize,
}

const TTL: Duration = Duration::from_secs(100);

impl Pushing {
    fn new(id: &SpiffeId) -> Self {
        let pki = TestPki::new("cluster.local");
        let current = Mutex::new(Self::issue(&pki, id));
        Self {
            pki,
            current,
            pushed: watch::channel(()).0,
            fetches: AtomicUsize::new(0),
            forgotten: AtomicUsize::new(0),
        }
    }

    fn issue(pki: &TestPki, id: &SpiffeId) -> FetchedSvid {
        FetchedSvid::new(pki.svid_for(id, TTL), vec![pki.ca().root().clone()])
    }

    /// A new certificate for `id`, pushed.
    fn rotate(&self, id: &SpiffeId) -> Vec<u8> {
        let next = Self::issue(&self.pki, id);
        let leaf = leaf(&next);
        *self.current.lock().unwrap() = next;
        self.push();
        leaf
    }

    /// Announces the current certificate again.
    fn push(&self) {
        self.pushed.send_replace(());
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl CertificateSource for Pushing {
    type Error = Infallible;

    async fn fetch(&self, _: &SpiffeId) -> Result<FetchedSvid, Infallible> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        Ok(self.current.lock().unwrap().clone())
    }

    fn forget(&self, _: &SpiffeId) {
        self.forgotten.fetch_add(1, Ordering::SeqCst);
    }

    fn pushes(&self, _: &SpiffeId) -> Option<watch::Receiver<()>> {
        Some(self.pushed.subscribe())
    }
}

fn id() -> SpiffeId {
    SpiffeId::new("spiffe://cluster.local/ns/default/sa/pushed").unwrap()
}

fn leaf(f: &FetchedSvid) -> Vec<u8> {
    f.svid.leaf().as_ref().to_vec()
}

/// Lets the manager's tasks run until `done` holds, moving the paused clock by at most
/// 100 ms.
async fn run_until(mut done: impl FnMut() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(done(), "the manager did not get there");
}

/// A manager over a pushing source, holding `id()` with its first certificate.
async fn held() -> (
    Arc<Pushing>,
    CertificateManager<Arc<Pushing>>,
    CertificateHandle,
    Arc<FetchedSvid>,
) {
    let source = Arc::new(Pushing::new(&id()));
    let mgr = CertificateManager::new(source.clone(), ManagerConfig::default());
    let h = mgr.hold(&id(), Priority::OnDemand);
    let first = h.get().await.unwrap();
    (source, mgr, h, first)
}

#[tokio::test(start_paused = true)]
async fn a_pushed_certificate_is_installed_without_waiting_for_the_refresh_time() {
    let (source, mgr, h, first) = held().await;
    let start = Instant::now();
    let mut changes = h.subscribe();
    changes.borrow_and_update();

    let pushed = source.rotate(&id());
    // Under paused time the clock jumps to the next timer (the refresh, 50 s on) when every
    // task waits: a manager that does not follow pushes installs the new one only then.
    changes.changed().await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "installed {:?} after the first, at the refresh time",
        start.elapsed()
    );
    let second = h.current().unwrap();
    assert_eq!(leaf(&second), pushed);
    assert_ne!(leaf(&second), leaf(&first));
    assert_eq!(source.fetches(), 2);

    // The same certificate announced again: fetched, but holders see no change and keep the
    // very certificate (and the TLS key built from it) they have.
    changes.borrow_and_update();
    source.push();
    run_until(|| source.fetches() == 3 && mgr.in_flight() == 0).await;
    assert!(!changes.has_changed().unwrap(), "an identical push churned");
    assert!(Arc::ptr_eq(&h.current().unwrap(), &second));
    assert_eq!(h.state().attempts, 3);
    assert!(start.elapsed() < Duration::from_secs(1));

    // Forgotten with its last holder: later pushes fetch nothing.
    drop(h);
    run_until(|| source.forgotten.load(Ordering::SeqCst) == 1).await;
    source.rotate(&id());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(source.fetches(), 3);
    assert!(mgr.identities().is_empty());
}

#[tokio::test(start_paused = true)]
async fn pushes_do_not_stop_the_refresh_at_half_life() {
    let start = Instant::now();
    let (source, _mgr, h, _) = held().await;
    // Nothing pushed: the next fetch is the refresh, at half-life.
    let mut changes = h.subscribe();
    changes.borrow_and_update();
    let rotated = Pushing::issue(&source.pki, &id());
    let rotated_leaf = leaf(&rotated);
    *source.current.lock().unwrap() = rotated;
    changes.changed().await.unwrap();
    assert_eq!(source.fetches(), 2);
    assert!(
        start.elapsed() >= TTL / 2 - Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(leaf(&h.current().unwrap()), rotated_leaf);
}

/// No certificate at first (an entry not registered yet), then one, pushed.
struct Late {
    pki: TestPki,
    ready: Mutex<Option<FetchedSvid>>,
    pushed: watch::Sender<()>,
    fetches: AtomicUsize,
}

#[derive(Debug)]
struct NotYet;

impl std::fmt::Display for NotYet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no certificate yet")
    }
}

impl std::error::Error for NotYet {}

impl CertificateSource for Late {
    type Error = NotYet;

    async fn fetch(&self, _: &SpiffeId) -> Result<FetchedSvid, NotYet> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        self.ready.lock().unwrap().clone().ok_or(NotYet)
    }

    fn pushes(&self, _: &SpiffeId) -> Option<watch::Receiver<()>> {
        Some(self.pushed.subscribe())
    }
}

#[tokio::test(start_paused = true)]
async fn a_push_after_failed_fetches_brings_the_retry_forward() {
    let source = Arc::new(Late {
        pki: TestPki::new("cluster.local"),
        ready: Mutex::new(None),
        pushed: watch::channel(()).0,
        fetches: AtomicUsize::new(0),
    });
    let mut config = ManagerConfig::default();
    config.jitter = false;
    let mgr = CertificateManager::new(source.clone(), config);
    let h = mgr.hold(&id(), Priority::OnDemand);
    // Failing, retried after 1, 2, 4, 8, 16 s: the fetches at 0, 1, 3, 7, 15 and 31 s;
    // the next one would come at 63 s.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let failed = source.fetches.load(Ordering::SeqCst);
    assert_eq!(failed, 6);
    assert!(h.current().is_none());

    let pushed_at = Instant::now();
    *source.ready.lock().unwrap() = Some(FetchedSvid::new(
        source.pki.svid_for(&id(), TTL),
        vec![source.pki.ca().root().clone()],
    ));
    source.pushed.send_replace(());
    let mut changes = h.subscribe();
    while h.current().is_none() {
        changes.changed().await.unwrap();
    }
    // Brought forward to the first back-off delay (1 s), not left for the 23 s still to go.
    assert!(
        pushed_at.elapsed() <= Duration::from_secs(2),
        "installed {:?} after the push",
        pushed_at.elapsed()
    );
    assert_eq!(source.fetches.load(Ordering::SeqCst), failed + 1);
    drop(mgr);
}
