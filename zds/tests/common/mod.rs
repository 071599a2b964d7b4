//! Helpers shared by the socket tests.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use meshwire_zds::Update;
use meshwire_zds::netns::NetnsId;
use tokio::sync::mpsc;
use tokio_seqpacket::UnixSeqpacket;
use tokio_seqpacket::ancillary::AncillaryMessageWriter;

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

/// Asserts that the next events are `expected`, in order.
pub(crate) async fn assert_next(rx: &mut mpsc::UnboundedReceiver<Event>, expected: &[Event]) {
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&next(rx).await, want, "event {i} of {expected:?}");
    }
}

/// Asserts nothing more arrives within a short while.
pub(crate) async fn quiet(rx: &mut mpsc::UnboundedReceiver<Event>) {
    if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
        panic!("unexpected update {event:?}");
    }
}

/// Sends `bytes` on a raw socket with the descriptors `fds` attached (none: no control
/// message at all).
pub(crate) async fn send_with_fds(conn: &UnixSeqpacket, bytes: &[u8], fds: &[&OwnedFd]) {
    let mut control = [0u8; 512];
    let mut writer = AncillaryMessageWriter::new(&mut control);
    if !fds.is_empty() {
        writer
            .add_fds(fds.iter().map(|fd| fd.as_fd()).collect::<Vec<_>>())
            .map_err(|_| "control buffer")
            .unwrap();
    }
    conn.send_vectored_with_ancillary(&[IoSlice::new(bytes)], &mut writer)
        .await
        .unwrap();
}

/// Receives one datagram on a raw socket, or fails after a few seconds.
pub(crate) async fn recv(conn: &UnixSeqpacket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let info = tokio::time::timeout(Duration::from_secs(5), conn.recv(&mut buf))
        .await
        .expect("nothing received")
        .unwrap();
    buf[..info.bytes_read()].to_vec()
}

/// Reads from a pipe's read end until every write end is closed; fails if one stays open
/// (a received copy that was not closed).
pub(crate) async fn assert_pipe_writers_closed(read: OwnedFd) {
    let result = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 1];
            nix::unistd::read(&read, &mut buf)
        }),
    )
    .await;
    assert!(
        matches!(result, Ok(Ok(Ok(0)))),
        "a copy of the pipe's write end is still open: {result:?}"
    );
}
