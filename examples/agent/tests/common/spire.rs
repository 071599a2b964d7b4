//! The test's view of the SPIRE server the registrar writes to.

use std::time::{Duration, Instant};

use testbed::Spire;
use testbed::spire::Entry;

/// How long the registrar may take to bring the server's entries to what the test expects.
pub const REGISTRAR_TIMEOUT: Duration = Duration::from_secs(30);

/// The entries the registrar owns (parented to `spiffe://<td>/ztunnel`), sorted by SPIFFE
/// ID; duplicates kept.
pub fn owned(spire: &Spire) -> Vec<Entry> {
    let parent = spire.delegate_id();
    let mut entries: Vec<Entry> = spire
        .entries()
        .unwrap()
        .into_iter()
        .filter(|e| e.parent_id == parent)
        .collect();
    entries.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id));
    entries
}

/// The SPIFFE IDs of [`owned`], sorted; duplicates kept.
pub fn registered(spire: &Spire) -> Vec<String> {
    owned(spire).into_iter().map(|e| e.spiffe_id).collect()
}

/// Polls until [`registered`] is `want` (SPIFFE IDs, sorted); panics after
/// [`REGISTRAR_TIMEOUT`] with what is registered and `show_log()`.
pub fn wait_registered(spire: &Spire, want: &[&str], show_log: &dyn Fn() -> String) {
    let start = Instant::now();
    loop {
        let have = registered(spire);
        if have == want {
            return;
        }
        assert!(
            start.elapsed() < REGISTRAR_TIMEOUT,
            "registered {have:?}, not {want:?} after {REGISTRAR_TIMEOUT:?}\n{}",
            show_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
