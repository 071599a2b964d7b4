//! The agent-side server with real proxies (our client) and misbehaving raw peers.

// Test helpers panic on purpose: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Event, assert_next, next, quiet, recv, send_with_fds};
use meshwire_zds::Workload;
use meshwire_zds::client::{Client, ClientConfig};
use meshwire_zds::netns::NetnsId;
use meshwire_zds::server::{PeerUids, Server, ServerConfig, ServerEvent, ZdsError};
use meshwire_zds::wire::Response;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_seqpacket::UnixSeqpacket;

fn workload(uid: &str) -> Workload {
    Workload::new(uid, format!("pod-{uid}"), "shop", "web")
}

fn server_config(path: &Path) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.path = path.to_owned();
    config.hello_timeout = Duration::from_secs(2);
    config.ack_timeout = Duration::from_secs(2);
    config
}

/// Starts a client whose handler records every update and fails those listed in `fail`
/// (as `"add:<uid>"` or `"del:<uid>"`), the first time only, with the text
/// `"<uid> failed"`.
fn start_client(
    path: &Path,
    fail: &'static [&'static str],
) -> (JoinHandle<()>, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut config = ClientConfig::default();
    config.path = path.to_owned();
    config.initial_backoff = Duration::from_millis(5);
    config.max_backoff = Duration::from_millis(40);
    config.retry_interval = None;
    let mut failed = std::collections::HashSet::new();
    let client = Client::new(config, move |update: meshwire_zds::Update| {
        let event = Event::of(&update);
        let _ = tx.send(event);
        let key = match &update {
            meshwire_zds::Update::Add { workload, .. } => format!("add:{}", workload.uid),
            meshwire_zds::Update::Del { uid } => format!("del:{uid}"),
            _ => String::new(),
        };
        let outcome = match update.uid() {
            Some(uid) if fail.contains(&key.as_str()) && failed.insert(key.clone()) => {
                Err(format!("{uid} failed"))
            }
            _ => Ok(()),
        };
        // Keep the namespace open as a real proxy would; dropped here for simplicity.
        drop(update);
        async move { outcome }
    });
    let task = tokio::spawn(async move {
        let _ = client.run().await;
    });
    (task, rx)
}

/// Waits for a specific server event.
async fn wait_event(
    events: &mut broadcast::Receiver<ServerEvent>,
    mut want: impl FnMut(&ServerEvent) -> bool,
) -> ServerEvent {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let event = events.recv().await.expect("event stream");
            if want(&event) {
                return event;
            }
        }
    })
    .await
    .expect("timed out waiting for a server event")
}

async fn snapshot_done(events: &mut broadcast::Receiver<ServerEvent>) -> usize {
    match wait_event(events, |e| matches!(e, ServerEvent::SnapshotDone { .. })).await {
        ServerEvent::SnapshotDone { workloads, .. } => workloads,
        _ => unreachable!(),
    }
}

/// Asserts that the server sent a snapshot of `workloads` workloads and that the proxy
/// received exactly `expected`.
async fn assert_snapshot(
    events: &mut broadcast::Receiver<ServerEvent>,
    updates: &mut mpsc::UnboundedReceiver<Event>,
    workloads: usize,
    expected: &[Event],
) {
    assert_eq!(snapshot_done(events).await, workloads);
    assert_next(updates, expected).await;
    quiet(updates).await;
}

/// Waits for a connection to end.
async fn wait_disconnected(events: &mut broadcast::Receiver<ServerEvent>) -> ServerEvent {
    wait_event(events, |e| matches!(e, ServerEvent::Disconnected { .. })).await
}

/// A server on a socket in a fresh temporary directory, and one proxy (our client, see
/// [`start_client`]) that has received its empty snapshot.
struct Setup {
    _dir: tempfile::TempDir,
    path: PathBuf,
    server: Server,
    events: broadcast::Receiver<ServerEvent>,
    client: JoinHandle<()>,
    updates: mpsc::UnboundedReceiver<Event>,
}

impl Setup {
    /// With the [`server_config`] as `configure` changes it, and a client whose handler
    /// fails the updates `fail` names.
    async fn start(
        fail: &'static [&'static str],
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let (dir, path) = common::socket_dir();
        let mut config = server_config(&path);
        configure(&mut config);
        let server = Server::bind(config).await.unwrap();
        let mut events = server.subscribe();
        let (client, mut updates) = start_client(&path, fail);
        assert_eq!(snapshot_done(&mut events).await, 0);
        assert_eq!(next(&mut updates).await, Event::SnapshotSent);
        Self {
            _dir: dir,
            path,
            server,
            events,
            client,
            updates,
        }
    }
}

/// Adds `uid` with this process's own namespace and asserts that the proxy receiving
/// `updates` gets it.
async fn add_own(server: &Server, updates: &mut mpsc::UnboundedReceiver<Event>, uid: &str) {
    let own = NetnsId::of(common::own_netns()).unwrap();
    server
        .add(workload(uid), common::own_netns())
        .await
        .unwrap();
    assert_eq!(next(updates).await, Event::Add(uid.into(), own));
}

#[tokio::test]
async fn bind_prepares_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/zds/zds.sock");
    let server = Server::bind(server_config(&path)).await.unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(path.parent().unwrap().is_dir());
    drop(server);

    // The socket file left behind is stale; a new server replaces it.
    assert!(path.exists());
    let server = Server::bind(server_config(&path)).await.unwrap();
    UnixSeqpacket::connect(&path).await.unwrap();
    drop(server);

    // Something that is not a socket is left alone.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let err = Server::bind(server_config(&file)).await.unwrap_err();
    assert_eq!(err.path, file);
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[tokio::test]
async fn add_and_del_reach_the_proxy_with_the_namespace() {
    let mut s = Setup::start(&[], |_| {}).await;

    let netns = common::own_netns();
    let id = NetnsId::of(&netns).unwrap();
    s.server.add(workload("a"), netns).await.unwrap();
    assert_eq!(next(&mut s.updates).await, Event::Add("a".into(), id));
    assert_eq!(s.server.workloads().await, vec![workload("a")]);

    s.server.del("a").await.unwrap();
    assert_eq!(next(&mut s.updates).await, Event::Del("a".into()));
    assert!(s.server.workloads().await.is_empty());
    s.client.abort();
}

#[tokio::test]
async fn zero_capacities_count_as_one() {
    let (_dir, path) = common::socket_dir();
    let mut config = server_config(&path);
    config.queue_capacity = 0;
    config.event_capacity = 0;
    let server = Server::bind(config).await.unwrap();
    // A subscriber that never reads: with room for one event it only misses events.
    let _events = server.subscribe();
    let (client, mut updates) = start_client(&path, &[]);
    // The proxy sees the end of the snapshot once its connection is registered.
    assert_eq!(next(&mut updates).await, Event::SnapshotSent);

    let netns = common::own_netns();
    let id = NetnsId::of(&netns).unwrap();
    server.add(workload("a"), netns).await.unwrap();
    assert_eq!(next(&mut updates).await, Event::Add("a".into(), id));
    server.del("a").await.unwrap();
    assert_eq!(next(&mut updates).await, Event::Del("a".into()));
    client.abort();
}

#[tokio::test]
async fn a_created_namespace_reaches_the_proxy() {
    if !common::privileged("a_created_namespace_reaches_the_proxy") {
        return;
    }
    let mut s = Setup::start(&[], |_| {}).await;

    let netns = common::new_netns();
    let id = NetnsId::of(&netns).unwrap();
    assert_ne!(id, NetnsId::of(common::own_netns()).unwrap());
    s.server.add(workload("a"), netns).await.unwrap();
    assert_eq!(next(&mut s.updates).await, Event::Add("a".into(), id));
    s.client.abort();
}

#[tokio::test]
async fn nack_text_reaches_the_caller() {
    let mut s = Setup::start(&["add:bad"], |_| {}).await;

    let err = s
        .server
        .add(workload("bad"), common::own_netns())
        .await
        .unwrap_err();
    match err {
        ZdsError::Nack(text) => assert_eq!(text, "failure to start proxy : bad failed"),
        other => panic!("expected a NACK, got {other:?}"),
    }
    match wait_event(&mut s.events, |e| matches!(e, ServerEvent::Nacked { .. })).await {
        ServerEvent::Nacked { uid, message, .. } => {
            assert_eq!(uid.as_deref(), Some("bad"));
            assert_eq!(message, "failure to start proxy : bad failed");
        }
        _ => unreachable!(),
    }
    // The connection stays: a good add still works.
    s.server
        .add(workload("good"), common::own_netns())
        .await
        .unwrap();
    assert_eq!(s.server.connections().await, 1);
    s.client.abort();
}

#[tokio::test]
async fn no_proxy_then_snapshot() {
    let (_dir, path) = common::socket_dir();
    let server = Server::bind(server_config(&path)).await.unwrap();
    let netns = common::own_netns();
    let id = NetnsId::of(&netns).unwrap();
    assert!(matches!(
        server.add(workload("a"), netns).await,
        Err(ZdsError::NoProxy)
    ));
    server.keep("k").await.unwrap();
    // A delete with nobody connected is fine.
    server.del("gone").await.unwrap();

    let mut events = server.subscribe();
    let (client, mut updates) = start_client(&path, &[]);
    assert_snapshot(
        &mut events,
        &mut updates,
        2,
        &[
            Event::Add("a".into(), id),
            Event::Keep("k".into()),
            Event::SnapshotSent,
        ],
    )
    .await;
    client.abort();
}

#[tokio::test]
async fn reconnect_gets_the_full_snapshot() {
    // The proxy fails to delete "x": it NACKs and reconnects.
    let mut s = Setup::start(&["del:x"], |_| {}).await;

    let own = NetnsId::of(common::own_netns()).unwrap();
    for uid in ["a", "b", "x"] {
        add_own(&s.server, &mut s.updates, uid).await;
    }
    let err = s.server.del("x").await.unwrap_err();
    assert!(
        matches!(&err, ZdsError::Nack(t) if t == "failure to process message : x failed"),
        "{err:?}"
    );
    assert_eq!(next(&mut s.updates).await, Event::Del("x".into()));

    // The new connection gets everything the server holds, and reconciliation then
    // deletes "x", which the server no longer names.
    assert_snapshot(
        &mut s.events,
        &mut s.updates,
        2,
        &[
            Event::Add("a".into(), own),
            Event::Add("b".into(), own),
            Event::Del("x".into()),
            Event::SnapshotSent,
        ],
    )
    .await;
    s.client.abort();
}

#[tokio::test]
async fn agent_restart_snapshot_drops_stale_workloads() {
    let own = NetnsId::of(common::own_netns()).unwrap();
    let mut s = Setup::start(&[], |_| {}).await;
    for uid in ["a", "b", "c"] {
        add_own(&s.server, &mut s.updates, uid).await;
    }

    // The agent restarts. Pod "b" went away meanwhile; "c" still exists but its netns
    // cannot be opened. The new server holds snapshots until it has loaded everything.
    s.server.shutdown().await;
    let mut config = server_config(&s.path);
    config.wait_for_seed = true;
    let server = Server::bind(config).await.unwrap();
    let mut events = server.subscribe();
    wait_event(&mut events, |e| matches!(e, ServerEvent::Connected { .. })).await;
    let _ = server.add(workload("a"), common::own_netns()).await;
    server.keep("c").await.unwrap();
    quiet(&mut s.updates).await;
    server.mark_seeded().await;

    assert_snapshot(
        &mut events,
        &mut s.updates,
        2,
        &[
            Event::Add("a".into(), own),
            Event::Keep("c".into()),
            Event::Del("b".into()),
            Event::SnapshotSent,
        ],
    )
    .await;
    s.client.abort();
}

#[tokio::test]
async fn two_proxies_during_an_upgrade() {
    let own = NetnsId::of(common::own_netns()).unwrap();
    // The old proxy is the setup's client.
    let mut s = Setup::start(&[], |_| {}).await;
    add_own(&s.server, &mut s.updates, "a").await;

    // The new proxy starts while the old one still runs: it gets the full snapshot.
    let (new, mut new_updates) = start_client(&s.path, &[]);
    assert_eq!(snapshot_done(&mut s.events).await, 1);
    assert_eq!(next(&mut new_updates).await, Event::Add("a".into(), own));
    assert_eq!(next(&mut new_updates).await, Event::SnapshotSent);
    assert_eq!(s.server.connections().await, 2);

    // New pods go to the newest proxy only.
    add_own(&s.server, &mut new_updates, "b").await;
    quiet(&mut s.updates).await;

    // Deletes go to both.
    s.server.del("a").await.unwrap();
    assert_eq!(next(&mut s.updates).await, Event::Del("a".into()));
    assert_eq!(next(&mut new_updates).await, Event::Del("a".into()));

    // The new proxy goes away: adds fall back to the old one.
    new.abort();
    wait_disconnected(&mut s.events).await;
    add_own(&s.server, &mut s.updates, "c").await;
    s.client.abort();
}

/// Connects a raw peer and sends the hello.
async fn raw_proxy(path: &Path) -> UnixSeqpacket {
    let conn = UnixSeqpacket::connect(path).await.unwrap();
    conn.send(&[0x08, 0x01]).await.unwrap();
    conn
}

fn disconnected_with(event: &ServerEvent) -> Option<&ZdsError> {
    match event {
        ServerEvent::Disconnected { error, .. } => error.as_ref(),
        _ => None,
    }
}

#[tokio::test]
async fn misbehaving_proxies_only_lose_their_own_connection() {
    let (_dir, path) = common::socket_dir();
    let server = Server::bind(server_config(&path)).await.unwrap();
    let mut events = server.subscribe();

    // Garbage instead of a hello.
    let garbage = UnixSeqpacket::connect(&path).await.unwrap();
    garbage.send(&[0xff, 0xff]).await.unwrap();
    let event = wait_disconnected(&mut events).await;
    assert!(
        matches!(disconnected_with(&event), Some(ZdsError::Read(_))),
        "{event:?}"
    );

    // A hello with an fd attached.
    let sneaky = UnixSeqpacket::connect(&path).await.unwrap();
    let netns = common::own_netns();
    send_with_fds(&sneaky, &[0x08, 0x01], &[&netns]).await;
    let event = wait_disconnected(&mut events).await;
    assert!(
        matches!(
            disconnected_with(&event),
            Some(ZdsError::Read(meshwire_zds::wire::ReadError::UnexpectedFd))
        ),
        "{event:?}"
    );

    // No hello at all.
    let _silent = UnixSeqpacket::connect(&path).await.unwrap();
    let event = wait_disconnected(&mut events).await;
    assert!(
        matches!(disconnected_with(&event), Some(ZdsError::Timeout)),
        "{event:?}"
    );

    // Talks out of turn after its snapshot.
    let chatty = raw_proxy(&path).await;
    assert_eq!(recv(&chatty).await, [0x1a, 0x00]);
    chatty.send(&Response::Ack.encode()).await.unwrap();
    snapshot_done(&mut events).await;
    chatty.send(&Response::Ack.encode()).await.unwrap();
    let event = wait_disconnected(&mut events).await;
    assert!(
        matches!(
            disconnected_with(&event),
            Some(ZdsError::Protocol(
                meshwire_zds::wire::ProtocolError::UnsolicitedMessage
            ))
        ),
        "{event:?}"
    );

    // Never acks: the caller gets a timeout and the connection is dropped.
    let mute = raw_proxy(&path).await;
    assert_eq!(recv(&mute).await, [0x1a, 0x00]);
    mute.send(&Response::Ack.encode()).await.unwrap();
    snapshot_done(&mut events).await;
    let started = tokio::time::Instant::now();
    assert!(matches!(
        server.add(workload("a"), common::own_netns()).await,
        Err(ZdsError::Timeout)
    ));
    assert!(started.elapsed() >= Duration::from_secs(2));
    wait_disconnected(&mut events).await;
    assert_eq!(server.connections().await, 0);

    // Answers with an fd. ("a" was recorded by the add above, so the snapshot starts
    // with it.)
    let odd = raw_proxy(&path).await;
    let first = recv(&odd).await;
    assert_eq!(
        meshwire_zds::wire::Request::decode(&first, 1).unwrap(),
        meshwire_zds::wire::Request::Add(workload("a"))
    );
    send_with_fds(&odd, &[0x0a, 0x00], &[&netns]).await;
    let event = wait_disconnected(&mut events).await;
    assert!(
        matches!(disconnected_with(&event), Some(ZdsError::Read(_))),
        "{event:?}"
    );

    // After all that, a well-behaved proxy is served normally.
    let (client, mut updates) = start_client(&path, &[]);
    snapshot_done(&mut events).await;
    assert_eq!(
        next(&mut updates).await,
        Event::Add("a".into(), NetnsId::of(&netns).unwrap())
    );
    assert_eq!(next(&mut updates).await, Event::SnapshotSent);
    server.del("a").await.unwrap();
    assert_eq!(next(&mut updates).await, Event::Del("a".into()));
    client.abort();
}

#[tokio::test]
async fn a_peer_that_never_says_hello_does_not_take_adds() {
    let mut s = Setup::start(&[], |_| {}).await;

    // Something connects after the proxy and stays silent.
    let _silent = UnixSeqpacket::connect(&s.path).await.unwrap();
    wait_event(&mut s.events, |e| {
        matches!(e, ServerEvent::Connected { .. })
    })
    .await;

    // The add goes to the proxy that said hello, at once.
    let started = tokio::time::Instant::now();
    add_own(&s.server, &mut s.updates, "a").await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        s.server.connections().await,
        1,
        "the silent peer is not served"
    );

    // It is dropped at the hello timeout, and the proxy keeps its connection.
    let event = wait_disconnected(&mut s.events).await;
    assert!(
        matches!(disconnected_with(&event), Some(ZdsError::Timeout)),
        "{event:?}"
    );
    s.server.del("a").await.unwrap();
    assert_eq!(next(&mut s.updates).await, Event::Del("a".into()));
    s.client.abort();
}

#[tokio::test]
async fn oversized_add_is_refused_and_not_recorded() {
    let (_dir, path) = common::socket_dir();
    let server = Server::bind(server_config(&path)).await.unwrap();
    let big = Workload::new("u", "n".repeat(2000), "ns", "sa");
    let netns: OwnedFd = common::own_netns();
    assert!(matches!(
        server.add(big, netns).await,
        Err(ZdsError::Encode(
            meshwire_zds::wire::EncodeError::TooLarge { .. }
        ))
    ));
    assert!(server.workloads().await.is_empty());
}

#[tokio::test]
async fn shutdown_refuses_further_requests() {
    let mut s = Setup::start(&[], |_| {}).await;
    s.server.shutdown().await;
    let event = wait_disconnected(&mut s.events).await;
    assert!(
        disconnected_with(&event).is_none(),
        "clean close: {event:?}"
    );
    s.client.abort();
}

fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[test]
fn peer_uid_policies() {
    let own = own_uid();
    let other = if own == 4242 { 4243 } else { 4242 };
    assert!(PeerUids::default().allows(0));
    assert!(PeerUids::default().allows(own));
    assert!(!PeerUids::default().allows(other));
    assert!(PeerUids::Only(vec![other]).allows(other));
    assert!(!PeerUids::Only(vec![other]).allows(own));
    assert!(PeerUids::Any.allows(other));
}

#[tokio::test]
async fn a_peer_whose_uid_is_not_allowed_is_closed() {
    let (_dir, path) = common::socket_dir();
    let mut config = server_config(&path);
    // Allow only a uid that is not ours: this test process is then a refused peer.
    config.peer_uids = PeerUids::Only(vec![own_uid().wrapping_add(1)]);
    let server = Server::bind(config).await.unwrap();
    let mut events = server.subscribe();

    let peer = raw_proxy(&path).await;
    let event = wait_event(&mut events, |e| {
        matches!(
            e,
            ServerEvent::Refused { .. } | ServerEvent::Connected { .. }
        )
    })
    .await;
    match event {
        ServerEvent::Refused { uid, pid } => {
            assert_eq!(uid, Some(own_uid()));
            assert_eq!(pid, i32::try_from(std::process::id()).ok());
        }
        other => panic!("peer was not refused: {other:?}"),
    }
    // The server closed it without sending anything (no snapshot): end of stream, or a
    // reset because our hello was never read.
    let mut buf = [0u8; 64];
    let received = tokio::time::timeout(Duration::from_secs(5), peer.recv(&mut buf))
        .await
        .expect("the refused connection stayed open");
    match received {
        Ok(info) => assert_eq!(info.bytes_read(), 0, "the refused peer got data"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert_eq!(server.connections().await, 0);
    assert!(matches!(
        server.add(workload("a"), common::own_netns()).await,
        Err(ZdsError::NoProxy)
    ));
}

#[tokio::test]
async fn a_peer_on_the_allow_list_is_served() {
    let s = Setup::start(&[], |config| {
        config.peer_uids = PeerUids::Only(vec![own_uid()]);
    })
    .await;
    assert_eq!(s.server.connections().await, 1);
    s.client.abort();
}
