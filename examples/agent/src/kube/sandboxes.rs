//! The sandboxes of this node's pods: which network namespace each pod uid has, as the CNI
//! plugin reported it, as found in `/proc` at start-up, or as the previous run left it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use super::model::Sandbox;

/// The known sandboxes by pod uid; a change bumps the shared change counter.
#[derive(Debug, Clone)]
pub(crate) struct Sandboxes {
    known: Arc<Mutex<BTreeMap<String, Sandbox>>>,
    changed: watch::Sender<u64>,
}

impl Sandboxes {
    pub(crate) fn new(changed: watch::Sender<u64>) -> Self {
        Self {
            known: Arc::default(),
            changed,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Sandbox>) -> R) -> R {
        f(&mut self.known.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A copy of what is known.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, Sandbox> {
        self.with(|k| k.clone())
    }

    /// Whether the pod `uid` has the sandbox at `netns`.
    pub(crate) fn contains_exactly(&self, uid: &str, netns: &Path) -> bool {
        self.with(|k| k.get(uid).is_some_and(|s| s.netns == netns))
    }

    /// Records the sandbox of `uid` (replacing an older one).
    pub(crate) fn insert(&self, uid: &str, sandbox: Sandbox) {
        let changed = self.with(|k| k.insert(uid.to_owned(), sandbox.clone()) != Some(sandbox));
        if changed {
            self.changed.send_modify(|g| *g += 1);
        }
    }

    /// Forgets the sandbox of `uid` if its netns is `netns` (a newer one is kept).
    pub(crate) fn remove(&self, uid: &str, netns: &Path) {
        let removed = self.with(|k| {
            if k.get(uid).is_some_and(|s| s.netns == netns) {
                k.remove(uid);
                true
            } else {
                false
            }
        });
        if removed {
            self.changed.send_modify(|g| *g += 1);
        }
    }

    /// Forgets the sandboxes of pods that no longer exist.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        let removed = self.with(|k| {
            let before = k.len();
            k.retain(|uid, _| keep(uid));
            k.len() != before
        });
        if removed {
            self.changed.send_modify(|g| *g += 1);
        }
    }
}

/// Whether an interface in the network namespace at `netns` holds one of `ips` (a pod's
/// namespace holds the pod's addresses; another process's namespace does not).
pub(crate) fn holds_any(netns: &Path, ips: &[IpAddr]) -> Result<bool, String> {
    let ns = meshwire_netns::NetNs::from_path(netns).map_err(|e| e.to_string())?;
    let wanted = ips.to_vec();
    ns.run_on_thread(move || -> Result<bool, String> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))?;
        Ok(addrs.filter_map(|a| a.address).any(|a| {
            let ip = if let Some(v4) = a.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = a.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                return false;
            };
            wanted.contains(&ip)
        }))
    })
    .map_err(|e| e.to_string())?
}

/// A sandbox at `netns` with `ips`.
pub(crate) fn sandbox(netns: impl Into<PathBuf>, ips: Vec<IpAddr>) -> Sandbox {
    Sandbox {
        netns: netns.into(),
        ips,
    }
}
