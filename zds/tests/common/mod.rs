//! Helpers shared by the socket tests.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::os::fd::OwnedFd;
use std::time::Duration;

use meshwire_zds::Update;
use meshwire_zds::netns::NetnsId;
use tokio::sync::mpsc;

/// Whether privileged tests can run. Not root: fail loudly, unless the person running the
/// tests explicitly skips them with `MESHWIRE_SKIP_PRIVILEGED=1`.
pub(crate) fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("MESHWIRE_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: needs root (MESHWIRE_SKIP_PRIVILEGED=1)");
        return false;
    }
    panic!(
        "{test} needs root (CAP_SYS_ADMIN to create a network namespace); run as root or set MESHWIRE_SKIP_PRIVILEGED=1 to skip it"
    );
}

/// A new network namespace, created on a short-lived thread so that the test process
/// itself stays where it is. Needs root.
pub(crate) fn new_netns() -> OwnedFd {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").expect("open own netns"))
    })
    .join()
    .expect("netns thread")
}

/// The process's own network namespace.
pub(crate) fn own_netns() -> OwnedFd {
    OwnedFd::from(std::fs::File::open("/proc/self/ns/net").expect("open /proc/self/ns/net"))
}

/// Number of open descriptors of this process.
pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// A temporary directory holding the socket path `zds.sock`.
pub(crate) fn socket_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("zds.sock");
    (dir, path)
}

/// What a recording handler reports for each update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    Add(String, NetnsId),
    Keep(String),
    Del(String),
    SnapshotSent,
}

impl Event {
    pub(crate) fn of(update: &Update) -> Self {
        match update {
            Update::Add { workload, netns } => Self::Add(
                workload.uid.clone(),
                NetnsId::of(netns).expect("fstat netns"),
            ),
            Update::Keep { uid } => Self::Keep(uid.clone()),
            Update::Del { uid } => Self::Del(uid.clone()),
            Update::SnapshotSent => Self::SnapshotSent,
            other => panic!("unexpected update {other:?}"),
        }
    }
}

/// Receives the next event or fails after a few seconds.
pub(crate) async fn next(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("timed out waiting for an update")
        .expect("handler gone")
}

/// Asserts nothing more arrives within a short while.
pub(crate) async fn quiet(rx: &mut mpsc::UnboundedReceiver<Event>) {
    if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
        panic!("unexpected update {event:?}");
    }
}
