//! The proxy-side client against a scripted agent on a real socket.

// Test helpers panic on purpose: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use common::{Event, assert_next, next, quiet, recv, send_with_fds};
use meshwire_zds::Workload;
use meshwire_zds::client::{Client, ClientConfig, ClientError, ClientEvent};
use meshwire_zds::netns::NetnsId;
use meshwire_zds::session::CloseReason;
use meshwire_zds::wire::{ProtocolError, Request, Response};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};

/// A scripted agent on a socket in a fresh temporary directory: accepts connections and
/// checks what the client sends.
struct FakeAgent {
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: UnixSeqpacketListener,
}

impl FakeAgent {
    fn bind() -> Self {
        let (dir, path) = common::socket_dir();
        let listener = UnixSeqpacketListener::bind(&path).unwrap();
        Self {
            _dir: dir,
            path,
            listener,
        }
    }

    /// A client configuration for this agent's socket (otherwise the defaults).
    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::default();
        config.path = self.path.clone();
        config
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
}

/// Sends a request and returns the client's answer.
async fn request(conn: &UnixSeqpacket, req: &Request, fds: &[&OwnedFd]) -> Response {
    send_with_fds(conn, &req.encode().unwrap(), fds).await;
    Response::decode(&recv(conn).await, 0).unwrap()
}

/// Sends a request without descriptors and asserts that the client acks it.
async fn assert_acked(conn: &UnixSeqpacket, req: Request) {
    assert_eq!(request(conn, &req, &[]).await, Response::Ack, "{req:?}");
}

async fn assert_closed(conn: &UnixSeqpacket) {
    assert!(recv(conn).await.is_empty(), "client closed the connection");
}

/// Sends `req` with `copies` copies of a pipe's write end; asserts that the client refuses
/// it with `nack`, closes the connection, and closed every copy it received.
async fn assert_refused_with_pipe(conn: &UnixSeqpacket, req: &Request, copies: usize, nack: &str) {
    let (read, write) = nix::unistd::pipe().unwrap();
    assert_eq!(
        request(conn, req, &vec![&write; copies]).await,
        Response::Nack(nack.into())
    );
    assert_closed(conn).await;
    drop(write);
    common::assert_pipe_writers_closed(read).await;
}

fn add(uid: &str) -> Request {
    Request::Add(Workload::new(uid, format!("pod-{uid}"), "ns", "sa"))
}

/// A fake agent with a recording client (see [`recording_client`]) running against it.
struct Running {
    agent: FakeAgent,
    events: mpsc::UnboundedReceiver<Event>,
    ready: watch::Receiver<bool>,
    client_events: broadcast::Receiver<ClientEvent>,
    task: JoinHandle<Infallible>,
}

impl Running {
    /// Starts the agent and the client; returns them with the client's first connection,
    /// whose hello has been read.
    async fn start() -> (Self, UnixSeqpacket) {
        let mut agent = FakeAgent::bind();
        let (client, events) = recording_client(&agent);
        let ready = client.readiness();
        let client_events = client.events();
        let task = tokio::spawn(client.run());
        let conn = agent.accept().await;
        let running = Self {
            agent,
            events,
            ready,
            client_events,
            task,
        };
        (running, conn)
    }

    /// Asserts that the client closed `conn`, then [`Self::reconnects_quietly`].
    async fn closed_and_reconnects_quietly(self, conn: &UnixSeqpacket) {
        assert_closed(conn).await;
        self.reconnects_quietly().await;
    }

    /// Asserts that the client connects again (a read error is not terminal) and that
    /// its handler saw nothing; then stops it.
    async fn reconnects_quietly(mut self) {
        let _conn = self.agent.accept().await;
        quiet(&mut self.events).await;
        self.task.abort();
    }
}

/// A client of `agent` whose handler reports every update, with a short back-off.
fn recording_client(
    agent: &FakeAgent,
) -> (
    Client<impl meshwire_zds::client::Handler + use<>>,
    mpsc::UnboundedReceiver<Event>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut config = agent.client_config();
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

#[tokio::test]
async fn snapshot_steady_state_and_readiness() {
    let (mut r, conn) = Running::start().await;
    let netns = common::own_netns();
    let id = NetnsId::of(&netns).unwrap();
    assert_eq!(request(&conn, &add("a"), &[&netns]).await, Response::Ack);
    assert_eq!(next(&mut r.events).await, Event::Add("a".into(), id));
    assert!(!*r.ready.borrow());
    assert_acked(&conn, Request::Keep { uid: "k".into() }).await;
    assert_eq!(next(&mut r.events).await, Event::Keep("k".into()));
    assert_acked(&conn, Request::SnapshotSent).await;
    assert_eq!(next(&mut r.events).await, Event::SnapshotSent);
    tokio::time::timeout(Duration::from_secs(5), r.ready.wait_for(|ready| *ready))
        .await
        .unwrap()
        .unwrap();

    assert_acked(&conn, Request::Del { uid: "a".into() }).await;
    assert_eq!(next(&mut r.events).await, Event::Del("a".into()));

    // The agent goes away: not ready, and the client comes back with a hello.
    drop(conn);
    tokio::time::timeout(Duration::from_secs(5), r.ready.wait_for(|ready| !*ready))
        .await
        .unwrap()
        .unwrap();
    let _conn = r.agent.accept().await;
    r.task.abort();
}

#[tokio::test]
async fn more_than_one_fd_is_rejected_and_closed() {
    let (r, conn) = Running::start().await;
    assert_refused_with_pipe(
        &conn,
        &add("a"),
        2,
        "failure to read message : Expected 1 FD, got 2",
    )
    .await;
    // The handler never saw the add.
    r.reconnects_quietly().await;
}

#[tokio::test]
async fn fd_on_a_non_add_is_rejected_and_closed() {
    let (mut r, conn) = Running::start().await;
    assert_refused_with_pipe(
        &conn,
        &Request::Del { uid: "a".into() },
        1,
        "failure to read message : Unexpected control message",
    )
    .await;

    // An add without its fd is rejected too.
    let conn = r.agent.accept().await;
    assert_eq!(
        request(&conn, &add("a"), &[]).await,
        Response::Nack("failure to read message : No control message".into())
    );
    r.closed_and_reconnects_quietly(&conn).await;
}

#[tokio::test]
async fn truncated_message_is_rejected_and_closed() {
    let (r, conn) = Running::start().await;
    let netns = common::own_netns();
    // A valid add padded past 1024 bytes with an unknown field: the client reads only
    // 1024 bytes and must refuse it, closing the fd that came along.
    let mut bytes = add("a").encode().unwrap();
    bytes.extend_from_slice(&[0x32, 0x90, 0x08]); // field 6, length 1040
    bytes.extend(std::iter::repeat_n(b'x', 1040));
    send_with_fds(&conn, &bytes, &[&netns]).await;
    assert_eq!(
        Response::decode(&recv(&conn).await, 0).unwrap(),
        Response::Nack("failure to read message : received truncated message".into())
    );
    r.closed_and_reconnects_quietly(&conn).await;
}

/// The next reason the client gives for a connection ending (skipping `Connected`).
async fn next_disconnect(events: &mut broadcast::Receiver<ClientEvent>) -> ClientError {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("no client event")
            .unwrap();
        if let ClientEvent::Disconnected { error, .. } = event {
            return error;
        }
    }
}

/// Asserts that the client closed `conn` after the protocol error `expected`, reported
/// it, and connected again; returns the new connection.
async fn reconnected_after(
    r: &mut Running,
    conn: &UnixSeqpacket,
    expected: ProtocolError,
) -> UnixSeqpacket {
    assert_closed(conn).await;
    let error = next_disconnect(&mut r.client_events).await;
    assert!(
        matches!(&error, ClientError::Closed(CloseReason::Protocol(e)) if *e == expected),
        "{error:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), r.ready.wait_for(|ready| !*ready))
        .await
        .unwrap()
        .unwrap();
    r.agent.accept().await
}

#[tokio::test]
async fn malformed_message_reconnects_and_the_next_snapshot_reconciles() {
    let (mut r, conn) = Running::start().await;
    let netns = common::own_netns();
    let id = NetnsId::of(&netns).unwrap();
    for uid in ["a", "b"] {
        assert_eq!(request(&conn, &add(uid), &[&netns]).await, Response::Ack);
    }
    assert_acked(&conn, Request::SnapshotSent).await;
    assert_next(
        &mut r.events,
        &[
            Event::Add("a".into(), id),
            Event::Add("b".into(), id),
            Event::SnapshotSent,
        ],
    )
    .await;

    // An add without its workload_info: a protocol error.
    send_with_fds(&conn, &[0x0a, 0x04, 0x0a, 0x02, b'u', b'1'], &[&netns]).await;
    assert_eq!(
        Response::decode(&recv(&conn).await, 0).unwrap(),
        Response::Nack(
            "failure to process message : ProtocolError(\"workload_info is required but not present\")"
                .into()
        )
    );
    let conn = reconnected_after(&mut r, &conn, ProtocolError::MissingWorkloadInfo).await;

    // The fresh snapshot names only "b": "a" is deleted, "b" kept, and the client is
    // ready again.
    assert_acked(&conn, Request::Keep { uid: "b".into() }).await;
    assert_acked(&conn, Request::SnapshotSent).await;
    assert_next(
        &mut r.events,
        &[
            Event::Keep("b".into()),
            Event::Del("a".into()),
            Event::SnapshotSent,
        ],
    )
    .await;
    tokio::time::timeout(Duration::from_secs(5), r.ready.wait_for(|ready| *ready))
        .await
        .unwrap()
        .unwrap();
    r.task.abort();
}

#[tokio::test]
async fn sequencing_errors_reconnect() {
    let (mut r, conn) = Running::start().await;
    assert_acked(&conn, Request::SnapshotSent).await;
    assert_eq!(next(&mut r.events).await, Event::SnapshotSent);
    r.ready.wait_for(|ready| *ready).await.unwrap();
    assert_eq!(
        request(&conn, &Request::Keep { uid: "a".into() }, &[]).await,
        Response::Nack(
            "failure to process message : ProtocolError(\"pod keep received after snapshot\")"
                .into()
        )
    );
    let conn = reconnected_after(&mut r, &conn, ProtocolError::KeepAfterSnapshot).await;

    assert_acked(&conn, Request::SnapshotSent).await;
    assert_eq!(next(&mut r.events).await, Event::SnapshotSent);
    assert_eq!(
        request(&conn, &Request::SnapshotSent, &[]).await,
        Response::Nack(
            "failure to process message : ProtocolError(\"pod snapshot received already\")".into()
        )
    );
    let _conn = reconnected_after(&mut r, &conn, ProtocolError::SnapshotAlreadyReceived).await;
    r.task.abort();
}

#[tokio::test]
async fn failed_add_is_retried_and_readiness_follows() {
    let mut agent = FakeAgent::bind();
    let (tx, mut attempts) = mpsc::unbounded_channel();
    let mut config = agent.client_config();
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
    assert_acked(&conn, Request::SnapshotSent).await;
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
    let mut agent = FakeAgent::bind();
    let (tx, mut events) = mpsc::unbounded_channel();
    let mut config = agent.client_config();
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
    config.path = path;
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
    let mut agent = FakeAgent::bind();
    let mut config = agent.client_config();
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
    // The client keeps serving.
    assert_acked(&conn, Request::SnapshotSent).await;
    task.abort();
}

#[tokio::test]
async fn an_add_deleted_during_the_snapshot_is_not_retried() {
    let mut agent = FakeAgent::bind();
    let (tx, mut attempts) = mpsc::unbounded_channel();
    let mut config = agent.client_config();
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
    assert_acked(&conn, Request::Del { uid: "a".into() }).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        attempts.try_recv().is_err(),
        "a deleted workload was retried"
    );
    assert_acked(&conn, Request::SnapshotSent).await;
    tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    task.abort();
}
