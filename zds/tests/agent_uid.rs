//! The client refuses a ZDS socket created by a process running as an untrusted uid.

// Test helpers panic on purpose: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meshwire_zds::client::{Client, ClientConfig, ClientError, ClientEvent};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
};

/// The uid the foreign agent runs as (`nobody`).
const NOBODY: u32 = 65534;
/// Tells a child run of this binary to be the foreign agent, listening at this path.
const LISTEN_AT: &str = "MESHWIRE_ZDS_TEST_LISTEN_AT";
/// What the foreign agent prints once it listens.
const LISTENING: &str = "FOREIGN-AGENT-LISTENING";

/// Not a test of its own: run by [`foreign_agent`] as another user, it listens on a ZDS
/// socket and waits until its stdin closes. Without the variable it does nothing.
#[test]
fn foreign_agent_child() {
    let Ok(path) = std::env::var(LISTEN_AT) else {
        return;
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &UnixAddr::new(Path::new(&path)).unwrap(),
    )
    .unwrap();
    listen(&fd, Backlog::new(16).unwrap()).unwrap();
    println!("{LISTENING}");
    // Connections stay in the backlog; the test only needs the socket's owner.
    let _ = std::io::stdin().read_line(&mut String::new());
}

/// Starts this test binary as `nobody`, listening at `path`; returns once it listens.
/// Dropping its stdin (killing the child) ends it.
fn foreign_agent(path: &Path) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "foreign_agent_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(LISTEN_AT, path)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // libtest may print the test name on the same line first.
    if lines.any(|line| line.unwrap().ends_with(LISTENING)) {
        // Keep reading, so that the child's last words do not hit a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        return child;
    }
    panic!("the foreign agent did not start: {:?}", child.wait());
}

/// Runs a client with `agent_uids` against `path`; returns its first disconnect error,
/// or `None` when it connected.
async fn first_outcome(path: &Path, agent_uids: Vec<u32>) -> Option<ClientError> {
    let mut config = ClientConfig::default();
    config.path = path.to_owned();
    config.agent_uids = agent_uids;
    let client = Client::new(config, |_update: meshwire_zds::Update| async {
        Ok::<(), std::io::Error>(())
    });
    let mut events = client.events();
    let task = tokio::spawn(client.run());
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("no client event")
        .unwrap();
    task.abort();
    match event {
        ClientEvent::Connected => None,
        ClientEvent::Disconnected { error, .. } => Some(error),
        other => panic!("unexpected event {other:?}"),
    }
}

#[tokio::test]
async fn a_socket_of_another_uid_is_refused_unless_allowed() {
    if !common::privileged("a_socket_of_another_uid_is_refused_unless_allowed") {
        return;
    }
    let (dir, path) = common::socket_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut agent = foreign_agent(&path);

    let refused = first_outcome(&path, Vec::new()).await;
    assert!(
        matches!(refused, Some(ClientError::AgentNotAllowed { uid: NOBODY })),
        "{refused:?}"
    );
    let allowed = first_outcome(&path, vec![NOBODY]).await;
    assert!(allowed.is_none(), "{allowed:?}");

    drop(agent.stdin.take());
    agent.wait().unwrap();
}
