//! The SEQPACKET transport on real sockets: fd passing, size limits, truncation, stray
//! descriptors.

// Test helpers panic on purpose: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use meshwire_zds::Workload;
use meshwire_zds::netns::{NetnsError, NetnsId, verify_netns};
use meshwire_zds::transport::{Connection, RecvError, SendError};
use meshwire_zds::wire::Request;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use tokio_seqpacket::UnixSeqpacket;

fn add() -> Request {
    Request::Add(Workload::new("uid-1", "web-0", "shop", "web"))
}

/// Sends `netns` over a pair and returns what the other end received.
async fn pass(netns: &OwnedFd) -> OwnedFd {
    let (agent, proxy) = Connection::pair().unwrap();
    agent
        .send_request(&add(), Some(netns.as_fd()))
        .await
        .unwrap();
    let datagram = proxy.recv().await.unwrap().unwrap();
    assert_eq!(
        Request::decode(&datagram.bytes, datagram.fds.len()).unwrap(),
        add()
    );
    let mut fds = datagram.fds;
    assert_eq!(fds.len(), 1);
    fds.pop().unwrap()
}

fn is_cloexec(fd: &OwnedFd) -> bool {
    let flags = fcntl(fd, FcntlArg::F_GETFD).unwrap();
    FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC)
}

#[tokio::test]
async fn own_netns_fd_arrives_as_the_same_namespace() {
    let sent = common::own_netns();
    let received = pass(&sent).await;
    let id = NetnsId::of(&sent).unwrap();
    assert_eq!(NetnsId::of(&received).unwrap(), id);
    assert!(is_cloexec(&received), "received fds are close-on-exec");
    // Verification enters the namespace (setns), which needs CAP_SYS_ADMIN.
    if common::privileged("own_netns_fd_arrives_as_the_same_namespace (verify_netns)") {
        assert_eq!(verify_netns(received.as_fd()).unwrap(), id);
    }
}

#[tokio::test]
async fn new_netns_fd_arrives_as_the_same_namespace() {
    if !common::privileged("new_netns_fd_arrives_as_the_same_namespace") {
        return;
    }
    let netns = common::new_netns();
    let id = NetnsId::of(&netns).unwrap();
    assert_ne!(
        id,
        NetnsId::of(common::own_netns()).unwrap(),
        "a different namespace than the test's"
    );
    let received = pass(&netns).await;
    // Close the sender's copy: the namespace lives on through the received fd.
    drop(netns);
    assert_eq!(verify_netns(received.as_fd()).unwrap(), id);
    assert!(is_cloexec(&received));
}

#[tokio::test]
async fn verify_netns_rejects_other_descriptors() {
    let (read, _write) = nix::unistd::pipe().unwrap();
    assert!(matches!(
        verify_netns(read.as_fd()),
        Err(NetnsError::NotNamespace(_))
    ));
    let uts = OwnedFd::from(std::fs::File::open("/proc/self/ns/uts").unwrap());
    match verify_netns(uts.as_fd()) {
        Err(NetnsError::NotNetwork(_)) => {}
        other => panic!("expected NotNetwork, got {other:?}"),
    }
}

#[tokio::test]
async fn verify_netns_accepts_a_bind_mounted_namespace() {
    // `ip netns add` bind-mounts the namespace under /var/run/netns: the path an agent
    // opens for a pod. Its /proc/self/fd link shows that path, not `net:[…]`.
    if !common::privileged("verify_netns_accepts_a_bind_mounted_namespace") {
        return;
    }
    let name = format!("zdsv{}", std::process::id());
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(ok.success(), "ip netns add {name}");
    let file = std::fs::File::open(format!("/var/run/netns/{name}"));
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &name])
        .status();
    let fd = OwnedFd::from(file.unwrap());
    let id = NetnsId::of(&fd).unwrap();
    let received = pass(&fd).await;
    assert_eq!(verify_netns(received.as_fd()).unwrap(), id);
}

#[tokio::test]
async fn send_enforces_size_and_fd_rules() {
    let (agent, proxy) = Connection::pair().unwrap();
    let netns = common::own_netns();

    let big = vec![0u8; meshwire_zds::wire::MAX_MESSAGE_SIZE + 1];
    assert!(matches!(
        agent.send(&big, None).await,
        Err(SendError::TooLarge { size: 1025 })
    ));
    let too_big = Request::Add(Workload::new("u", "n".repeat(2000), "ns", "sa"));
    assert!(matches!(
        agent.send_request(&too_big, Some(netns.as_fd())).await,
        Err(SendError::TooLarge { .. })
    ));
    assert!(matches!(
        agent.send_request(&add(), None).await,
        Err(SendError::FdMismatch)
    ));
    assert!(matches!(
        agent
            .send_request(&Request::SnapshotSent, Some(netns.as_fd()))
            .await,
        Err(SendError::FdMismatch)
    ));
    // None of that reached the peer.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), proxy.recv())
            .await
            .is_err()
    );
    // Exactly the limit goes through.
    let max = vec![0u8; meshwire_zds::wire::MAX_MESSAGE_SIZE];
    agent.send(&max, None).await.unwrap();
    assert_eq!(proxy.recv().await.unwrap().unwrap().bytes, max);
}

#[tokio::test]
async fn truncation_is_an_error_and_the_stream_continues() {
    let (raw, ours) = UnixSeqpacket::pair().unwrap();
    let ours = Connection::try_from(OwnedFd::from(ours)).unwrap();
    raw.send(&[7u8; 1100]).await.unwrap();
    raw.send(&[0x1a, 0x00]).await.unwrap();
    assert!(matches!(ours.recv().await, Err(RecvError::Truncated)));
    assert_eq!(ours.recv().await.unwrap().unwrap().bytes, [0x1a, 0x00]);
    drop(raw);
    assert!(ours.recv().await.unwrap().is_none(), "end of stream");
}

#[tokio::test]
async fn received_fds_are_all_owned_and_closed_when_dropped() {
    let (raw, ours) = UnixSeqpacket::pair().unwrap();
    let ours = Connection::try_from(OwnedFd::from(ours)).unwrap();
    let (read, write) = nix::unistd::pipe().unwrap();

    common::send_with_fds(&raw, &[0x1a, 0x00], &[&write; 3]).await;
    let datagram = ours.recv().await.unwrap().unwrap();
    assert_eq!(datagram.fds.len(), 3, "every descriptor is reported");
    assert!(datagram.fds.iter().all(is_cloexec));
    drop(datagram);
    drop(write);
    common::assert_pipe_writers_closed(read).await;
}

#[tokio::test]
async fn control_truncation_closes_every_fd() {
    let (raw, ours) = UnixSeqpacket::pair().unwrap();
    let ours = Connection::try_from(OwnedFd::from(ours)).unwrap();
    let (read, write) = nix::unistd::pipe().unwrap();

    // More descriptors than the receive control buffer holds.
    common::send_with_fds(&raw, &[0x1a, 0x00], &[&write; 40]).await;
    assert!(matches!(ours.recv().await, Err(RecvError::Truncated)));
    drop(write);
    common::assert_pipe_writers_closed(read).await;
}
