use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Wake;

use super::*;

fn limit(max_per_key: usize, max_total: usize) -> ConnectionLimit<&'static str> {
    ConnectionLimit::new(ConnectionLimitConfig {
        max_per_key,
        max_total,
    })
}

/// Counts wake-ups.
struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn poll_shed(slot: &ConnectionSlot, waker: &Waker) -> Poll<()> {
    let mut shed = slot.shed();
    Pin::new(&mut shed).poll(&mut Context::from_waker(waker))
}

#[test]
fn defaults() {
    let c = ConnectionLimitConfig::default();
    assert_eq!((c.max_per_key, c.max_total), (1024, 16384));
}

#[test]
fn the_oldest_pending_connection_of_the_key_is_shed_first() {
    let l = limit(3, 100);
    let a = l.admit("pod").unwrap();
    let b = l.admit("pod").unwrap();
    let c = l.admit("pod").unwrap();
    let d = l.admit("pod").unwrap();
    assert!(a.is_shed());
    assert!(!b.is_shed() && !c.is_shed() && !d.is_shed());
    let e = l.admit("pod").unwrap();
    assert!(b.is_shed());
    assert!(!c.is_shed() && !e.is_shed());
    assert_eq!(l.stats().open, 3);
    assert_eq!(l.stats().shed, 2);
    // Dropping shed slots frees nothing more: they were freed when shed.
    drop((a, b));
    assert_eq!(l.stats().open, 3);
    drop((c, d, e));
    assert_eq!(
        l.stats(),
        LimitStats {
            shed: 2,
            ..LimitStats::default()
        }
    );
}

#[test]
fn established_connections_are_never_shed() {
    let l = limit(2, 100);
    let old = l.admit("pod").unwrap();
    assert!(old.establish());
    let young = l.admit("pod").unwrap();
    // The key is full: the pending one goes although it is younger.
    let newest = l.admit("pod").unwrap();
    assert!(young.is_shed());
    assert!(!old.is_shed());
    assert!(newest.establish());
    assert_eq!(l.admit("pod").unwrap_err(), LimitReached::PerKey);
    assert_eq!(l.stats().refused, 1);
    assert!(!old.is_shed() && !newest.is_shed());
    // Closing an established connection frees its place.
    drop(old);
    assert!(l.admit("pod").is_ok());
}

#[test]
fn per_key_bounds_do_not_shed_other_keys() {
    let l = limit(2, 100);
    let a1 = l.admit("a").unwrap();
    let b1 = l.admit("b").unwrap();
    let _a2 = l.admit("a").unwrap();
    let _a3 = l.admit("a").unwrap();
    assert!(a1.is_shed());
    assert!(!b1.is_shed());
}

#[test]
fn the_total_bound_sheds_the_oldest_pending_of_any_key() {
    let l = limit(100, 3);
    let a = l.admit("a").unwrap();
    assert!(a.establish());
    let b = l.admit("b").unwrap();
    let c = l.admit("c").unwrap();
    let d = l.admit("d").unwrap();
    assert!(b.is_shed(), "oldest pending of any key");
    assert!(!a.is_shed() && !c.is_shed() && !d.is_shed());
    let _e = l.admit("a").unwrap();
    assert!(c.is_shed());
    assert_eq!(l.stats().open, 3);
    assert_eq!(l.stats().pending, 2);
}

#[test]
fn all_established_refuses_without_shedding() {
    let l = limit(100, 2);
    let a = l.admit("a").unwrap();
    let b = l.admit("b").unwrap();
    assert!(a.establish() && b.establish());
    assert_eq!(l.admit("c").unwrap_err(), LimitReached::Total);
    assert_eq!(l.stats().shed, 0);
    assert_eq!(l.stats().refused, 1);
}

#[test]
fn a_refusal_sheds_nothing() {
    // The key is full of established connections; another key has a pending one. The
    // newcomer is refused and the other key's connection keeps its place.
    let l = limit(1, 2);
    let a = l.admit("a").unwrap();
    assert!(a.establish());
    let b = l.admit("b").unwrap();
    assert_eq!(l.admit("a").unwrap_err(), LimitReached::PerKey);
    assert!(!b.is_shed());
}

#[test]
fn the_shed_future_wakes_its_owner() {
    let l = limit(1, 10);
    let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
    let waker = Waker::from(wakes.clone());
    let first = l.admit("pod").unwrap();
    assert!(poll_shed(&first, &waker).is_pending());
    let _second = l.admit("pod").unwrap();
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    assert!(poll_shed(&first, &waker).is_ready());
}

#[test]
fn an_established_slot_never_resolves_its_shed_future() {
    let l = limit(1, 10);
    let waker = Waker::from(Arc::new(Wakes(AtomicUsize::new(0))));
    let slot = l.admit("pod").unwrap();
    assert!(slot.establish());
    assert!(l.admit("pod").is_err());
    assert!(poll_shed(&slot, &waker).is_pending());
}

#[test]
fn a_shed_slot_cannot_be_established() {
    let l = limit(1, 10);
    let first = l.admit("pod").unwrap();
    let _second = l.admit("pod").unwrap();
    assert!(!first.establish());
    assert!(first.is_shed());
}

#[test]
fn limits_are_shared_by_clones() {
    let l = limit(1, 10);
    let other_listener = l.clone();
    let first = l.admit("pod").unwrap();
    let _second = other_listener.admit("pod").unwrap();
    assert!(first.is_shed());
}
