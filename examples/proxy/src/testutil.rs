//! Helpers shared by the unit tests.

use std::path::PathBuf;
use std::process::Command;

/// Whether a test that needs root (network namespaces, marks) may run. Panics with a clear
/// message when it cannot, unless `MESHWIRE_SKIP_PRIVILEGED=1` asks to skip.
pub(crate) fn privileged(test: &str) -> bool {
    if std::env::var("MESHWIRE_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("skipping {test}: MESHWIRE_SKIP_PRIVILEGED=1");
        return false;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        euid, "0",
        "{test} needs root (network namespaces, SO_MARK); run as root or set MESHWIRE_SKIP_PRIVILEGED=1"
    );
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        ip.is_ok_and(|o| o.status.success()),
        "{test} needs the `ip` command (iproute2)"
    );
    true
}

/// A named network namespace (`/var/run/netns/<name>`) with loopback up, deleted on drop.
#[derive(Debug)]
pub(crate) struct NamedNetns {
    name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NamedNetns {
    pub(crate) fn create(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "mwp-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub(crate) fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
