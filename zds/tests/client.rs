//! The proxy-side client against a scripted agent on a real socket.

// Test helpers panic on purpose: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use common::{Event, next, quiet};
use meshwire_zds::Workload;
use meshwire_zds::client::{Client, ClientConfig, ClientError};
use meshwire_zds::netns::NetnsId;
use meshwire_zds::wire::{ProtocolError, Request, Response};
use tokio::sync::mpsc;
use tokio_seqpacket::ancillary::AncillaryMessageWriter;
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};

/// A scripted agent: accepts connections and checks what the client sends.
struct FakeAgent {
    listener: UnixSeqpacketListener,
}

impl FakeAgent {
    fn bind(path: &Path) -> Self {
        Self {
            listener: UnixSeqpacketListener::bind(path).unwrap(),
        }
    }

    /// Accepts a connection and reads the hello.
    async fn accept(&mut self) -> UnixSeqpacket {
        let conn = tokio::time::timeout(Duration::from_secs(5), self.listener.accept())
            .await
            .expect("client did not connect")
            .unwrap();
        assert_eq!(recv(&conn).await, [0x08, 0x01], "hello first");
        conn
    }

    /// Asserts that the client does not connect again.
    async fn no_connection(&mut self, within: Duration) {
        if let Ok(conn) = tokio::time::timeout(within, self.listener.accept()).await {
            panic!("unexpected connection {conn:?}");
        }
    }
}

async fn recv(conn: &UnixSeqpacket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let info = tokio::time::timeout(Duration::from_secs(5), conn.recv(&mut buf))
        .await
        .expect("nothing received")
        .unwrap();
    buf[..info.bytes_read()].to_vec()
}

async fn send(conn: &UnixSeqpacket, bytes: &[u8], fds: &[&OwnedFd]) {
    let mut control = [0u8; 256];
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

/// Sends a request and returns the client's answer.
async fn request(conn: &UnixSeqpacket, req: &Request, fds: &[&OwnedFd]) -> Response {
    send(conn, &req.encode().unwrap(), fds).await;
    Response::decode(&recv(conn).await, 0).unwrap()
}

async fn assert_closed(conn: &UnixSeqpacket) {
    assert!(recv(conn).await.is_empty(), "client closed the connection");
}

fn add(uid: &str) -> Request {
    Request::Add(Workload::new(uid, format!("pod-{uid}"), "ns", "sa"))
}

fn recording_client(
    path: &Path,
) -> (
    Client<impl meshwire_zds::client::Handler + use<>>,
    mpsc::UnboundedReceiver<Event>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut config = ClientConfig::default();
    config.path = path.to_owned();
    config.initial_backoff = Duration::from_millis(5);
    config.max_backoff = Duration::from_millis(50);
    let client = Client::new(config, move |update: meshwire_zds::Update| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Event::of(&update));
            Ok::<(), std::io::Error>(())
        }
    });
    (client, rx)
}

async fn assert_pipe_writers_closed(read: OwnedFd) {
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
        "a received copy of the pipe is still open: {result:?}"
    );
}

#[tokio::test]
async fn snapshot_steady_state_and_readiness() {
    let (_dir, path) = common::socket_dir();
    let mut agent = FakeAgent::bind(&path);
    let (client, mut events) = recording_client(&path);
    let mut ready = client.readiness();
    let task = tokio::spawn(client.run());

    let conn = agent.accept().await;
    let netns = common::own_netns();
    let id = NetnsId::of(&netns).unwrap();
    assert_eq!(request(&conn, &add("a"), &[&netns]).await, Response::Ack);
    assert_eq!(next(&mut events).await, Event::Add("a".into(), id));
    assert!(!*ready.borrow());
    assert_eq!(
        request(&conn, &Request::Keep { uid: "k".into() }, &[]).await,
        Response::Ack
    );
    assert_eq!(next(&mut events).await, Event::Keep("k".into()));
    assert_eq!(
        request(&conn, &Request::SnapshotSent, &[]).await,
        Response::Ack
    );
    assert_eq!(next(&mut events).await, Event::SnapshotSent);
    tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();

    assert_eq!(
        request(&conn, &Request::Del { uid: "a".into() }, &[]).await,
        Response::Ack
    );
    assert_eq!(next(&mut events).await, Event::Del("a".into()));

    // The agent goes away: not ready, and the client comes back with a hello.
    drop(conn);
    tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| !*r))
        .await
        .unwrap()
        .unwrap();
    let _conn = agent.accept().await;
    task.abort();
}

#[tokio::test]
async fn more_than_one_fd_is_rejected_and_closed() {
    let (_dir, path) = common::socket_dir();
    let mut agent = FakeAgent::bind(&path);
    let (client, mut events) = recording_client(&path);
    let task = tokio::spawn(client.run());

    let conn = agent.accept().await;
    let (read, write) = nix::unistd::pipe().unwrap();
    assert_eq!(
        request(&conn, &add("a"), &[&write, &write]).await,
        Response::Nack("failure to read message : Expected 1 FD, got 2".into())
    );
    assert_closed(&conn).await;
    drop(write);
    assert_pipe_writers_closed(read).await;
    // It reconnects (a read error is not terminal), and the handler never saw the add.
    let _conn = agent.accept().await;
    quiet(&mut events).await;
    task.abort();
}

#[tokio::test]
async fn fd_on_a_non_add_is_rejected_and_closed() {
    let (_dir, path) = common::socket_dir();
    let mut agent = FakeAgent::bind(&path);
    let (client, mut events) = recording_client(&path);
    let task = tokio::spawn(client.run());

    let conn = agent.accept().await;
    let (read, write) = nix::unistd::pipe().unwrap();
    assert_eq!(
        request(&conn, &Request::Del { uid: "a".into() }, &[&write]).await,
        Response::Nack("failure to read message : Unexpected control message".into())
    );
    assert_closed(&conn).await;
    drop(write);
    assert_pipe_writers_closed(read).await;

    // An add without its fd is rejected too.
    let conn = agent.accept().await;
    assert_eq!(
        request(&conn, &add("a"), &[]).await,
        Response::Nack("failure to read message : No control message".into())
    );
    assert_closed(&conn).await;
    let _conn = agent.accept().await;
    quiet(&mut events).await;
    task.abort();
}

#[tokio::test]
async fn truncated_message_is_rejected_and_closed() {
    let (_dir, path) = common::socket_dir();
    let mut agent = FakeAgent::bind(&path);
    let (client, mut events) = recording_client(&path);
    let task = tokio::spawn(client.run());

    let conn = agent.accept().await;
    let netns = common::own_netns();
    // A valid add padded past 1024 bytes with an unknown field: the client reads only
    // 1024 bytes and must refuse it, closing the fd that came along.
    let mut bytes = add("a").encode().unwrap();
    bytes.extend_from_slice(&[0x32, 0x90, 0x08]); // field 6, length 1040
    bytes.extend(std::iter::repeat_n(b'x', 1040));
    send(&conn, &bytes, &[&netns]).await;
    assert_eq!(
        Response::decode(&recv(&conn).await, 0).unwrap(),
        Response::Nack("failure to read message : received truncated message".into())
    );
    assert_closed(&conn).await;
    let _conn = agent.accept().await;
    quiet(&mut events).await;
    task.abort();
}

#[tokio::test]
async fn protocol_error_stops_the_client() {
    let (_dir, path) = common::socket_dir();
    let mut agent = FakeAgent::bind(&path);
    let (client, mut events) = recording_client(&path);
    let mut ready = client.readiness();
    let task = tokio::spawn(client.run());

    let conn = agent.accept().await;
    assert_eq!(
        request(&conn, &Request::SnapshotSent, &[]).await,
        Response::Ack
    );
    assert_eq!(next(&mut events).await, Event::SnapshotSent);
    ready.wait_for(|r| *r).await.unwrap();

    assert_eq!(
        request(&conn, &Request::Keep { uid: "a".into() }, &[]).await,
        Response::Nack(
            "failure to process message : ProtocolError(\"pod keep received after snapshot\")"
                .into()
        )
    );
    assert_closed(&conn).await;
    let result = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("client stopped")
        .unwrap();
    assert!(matches!(
        result,
        Err(ClientError::Protocol(ProtocolError::KeepAfterSnapshot))
    ));
    assert!(!*ready.borrow());
    // And it does not come back.
    agent.no_connection(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn second_snapshot_sent_stops_the_client() {
    let (_dir, path) = common::socket_dir();
    let mut agent = FakeAgent::bind(&path);
    let (client, _events) = recording_client(&path);
    let task = tokio::spawn(client.run());

    let conn = agent.accept().await;
    assert_eq!(
        request(&conn, &Request::SnapshotSent, &[]).await,
        Response::Ack
    );
    assert_eq!(
        request(&conn, &Request::SnapshotSent, &[]).await,
        Response::Nack(
            "failure to process message : ProtocolError(\"pod snapshot received already\")".into()
        )
    );
    let result = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        result,
        Err(ClientError::Protocol(
            ProtocolError::SnapshotAlreadyReceived
        ))
    ));
    agent.no_connection(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn failed_add_is_retried_and_readiness_follows() {
    let (_dir, path) = common::socket_dir();
    let mut agent = FakeAgent::bind(&path);
    let (tx, mut attempts) = mpsc::unbounded_channel();
    let mut config = ClientConfig::default();
    config.path = path.clone();
    config.retry_interval = Some(Duration::from_millis(50));
    // Fails the first two attempts for every uid.
    let mut failures = std::collections::HashMap::<String, u32>::new();
    let client = Client::new(config, move |update: meshwire_zds::Update| {
        let mut outcome = Ok(());
        if let meshwire_zds::Update::Add { workload, netns } = &update {
            let _ = tx.send(NetnsId::of(netns).unwrap());
            let count = failures.entry(workload.uid.clone()).or_default();
            *count += 1;
            if *count <= 2 {
                outcome = Err(format!("port 15008 in use (attempt {count})"));
            }
        }
        async move { outcome }
    });
    let mut ready = client.readiness();
    let task = tokio::spawn(client.run());

    let conn = agent.accept().await;
    let netns = common::own_netns();
    let id = NetnsId::of(&netns).unwrap();
    assert_eq!(
        request(&conn, &add("a"), &[&netns]).await,
        Response::Nack("failure to start proxy : port 15008 in use (attempt 1)".into())
    );
    assert_eq!(
        request(&conn, &Request::SnapshotSent, &[]).await,
        Response::Ack
    );
    assert!(!*ready.borrow(), "a pending add keeps the proxy not ready");
    // Retried with the same namespace until it works.
    for _ in 0..3 {
        let seen = tokio::time::timeout(Duration::from_secs(5), attempts.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen, id);
    }
    tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    task.abort();
}

#[tokio::test]
async fn verify_netns_rejects_a_non_namespace_fd() {
    let (_dir, path) = common::socket_dir();
    let mut agent = FakeAgent::bind(&path);
    let (tx, mut events) = mpsc::unbounded_channel();
    let mut config = ClientConfig::default();
    config.path = path.clone();
    config.verify_netns = true;
    let client = Client::new(config, move |update: meshwire_zds::Update| {
        let _ = tx.send(Event::of(&update));
        async { Ok::<(), std::io::Error>(()) }
    });
    let task = tokio::spawn(client.run());

    let conn = agent.accept().await;
    let (_read, write) = nix::unistd::pipe().unwrap();
    match request(&conn, &add("a"), &[&write]).await {
        Response::Nack(text) => assert!(
            text.starts_with("failure to start proxy : fd is not a namespace"),
            "{text}"
        ),
        other => panic!("expected a NACK, got {other:?}"),
    }
    // A real namespace goes through, on the same connection. Verifying it enters the
    // namespace (setns), which needs CAP_SYS_ADMIN.
    if !common::privileged("verify_netns_rejects_a_non_namespace_fd (accepting a namespace)") {
        task.abort();
        return;
    }
    let netns = common::own_netns();
    assert_eq!(request(&conn, &add("b"), &[&netns]).await, Response::Ack);
    assert_eq!(
        next(&mut events).await,
        Event::Add("b".into(), NetnsId::of(&netns).unwrap())
    );
    quiet(&mut events).await;
    task.abort();
}

#[tokio::test]
async fn huge_backoff_and_retry_interval_do_not_overflow() {
    // Back-off: nothing listens, so the client waits right away with a delay that
    // cannot be doubled.
    let (_dir, path) = common::socket_dir();
    let mut config = ClientConfig::default();
    config.path = path.clone();
    config.initial_backoff = Duration::MAX;
    config.max_backoff = Duration::MAX;
    let client = Client::new(config, |_: meshwire_zds::Update| async {
        Ok::<(), std::io::Error>(())
    });
    let waiting = tokio::spawn(client.run());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the client must still be waiting");
    waiting.abort();

    // Retry interval: a failed add with a retry interval too long to represent.
    let mut agent = FakeAgent::bind(&path);
    let mut config = ClientConfig::default();
    config.path = path.clone();
    config.retry_interval = Some(Duration::MAX);
    let client = Client::new(config, |update: meshwire_zds::Update| {
        let outcome = match update {
            meshwire_zds::Update::Add { .. } => Err("no"),
            _ => Ok(()),
        };
        async move { outcome }
    });
    let task = tokio::spawn(client.run());
    let conn = agent.accept().await;
    let netns = common::own_netns();
    assert_eq!(
        request(&conn, &add("a"), &[&netns]).await,
        Response::Nack("failure to start proxy : no".into())
    );
    assert_eq!(
        request(&conn, &Request::SnapshotSent, &[]).await,
        Response::Ack,
        "the client keeps serving"
    );
    task.abort();
}

#[tokio::test]
async fn an_add_deleted_during_the_snapshot_is_not_retried() {
    let (_dir, path) = common::socket_dir();
    let mut agent = FakeAgent::bind(&path);
    let (tx, mut attempts) = mpsc::unbounded_channel();
    let mut config = ClientConfig::default();
    config.path = path.clone();
    config.retry_interval = Some(Duration::from_millis(20));
    let client = Client::new(config, move |update: meshwire_zds::Update| {
        let outcome = match &update {
            meshwire_zds::Update::Add { workload, .. } => {
                let _ = tx.send(workload.uid.clone());
                Err("port in use")
            }
            _ => Ok(()),
        };
        async move { outcome }
    });
    let mut ready = client.readiness();
    let task = tokio::spawn(client.run());

    let conn = agent.accept().await;
    let netns = common::own_netns();
    assert!(matches!(
        request(&conn, &add("a"), &[&netns]).await,
        Response::Nack(_)
    ));
    assert_eq!(attempts.recv().await.as_deref(), Some("a"));
    // The agent deletes the pod before its snapshot ends: nothing is pending any more.
    assert_eq!(
        request(&conn, &Request::Del { uid: "a".into() }, &[]).await,
        Response::Ack
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        attempts.try_recv().is_err(),
        "a deleted workload was retried"
    );
    assert_eq!(
        request(&conn, &Request::SnapshotSent, &[]).await,
        Response::Ack
    );
    tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    task.abort();
}
