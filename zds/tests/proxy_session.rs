//! The proxy session driven without sockets: fds are plain numbers here.

// Test helpers panic on purpose: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshwire_zds::session::{CloseReason, ProxyAction, ProxySession, SessionError};
use meshwire_zds::wire::{ProtocolError, ReadError, Request, Response};
use meshwire_zds::{Update, Workload};
use proptest::prelude::*;

const ACK: &[u8] = &[0x0a, 0x00];

fn add(uid: &str) -> Vec<u8> {
    Request::Add(Workload::new(uid, format!("pod-{uid}"), "ns", "sa"))
        .encode()
        .unwrap()
}

fn keep(uid: &str) -> Vec<u8> {
    Request::Keep { uid: uid.into() }.encode().unwrap()
}

fn del(uid: &str) -> Vec<u8> {
    Request::Del { uid: uid.into() }.encode().unwrap()
}

fn snapshot_sent() -> Vec<u8> {
    Request::SnapshotSent.encode().unwrap()
}

fn nack(text: &str) -> Vec<u8> {
    Response::nack(text).encode()
}

/// What the application saw, in a form that is easy to compare.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Add(String, u32),
    Keep(String),
    Del(String),
    SnapshotSent,
}

/// Drives the session until it waits for input, answering every update with `answer`.
/// Returns the transmitted datagrams, what the application saw, and the close reason.
fn drive(
    s: &mut ProxySession<u32>,
    mut answer: impl FnMut(&Seen) -> Result<(), String>,
) -> (Vec<Vec<u8>>, Vec<Seen>, Option<CloseReason>) {
    let mut sent = Vec::new();
    let mut seen = Vec::new();
    while let Some(action) = s.poll_action() {
        match action {
            ProxyAction::Transmit(bytes) => sent.push(bytes),
            ProxyAction::Apply(update) => {
                let item = match update {
                    Update::Add { workload, netns } => Seen::Add(workload.uid, netns),
                    Update::Keep { uid } => Seen::Keep(uid),
                    Update::Del { uid } => Seen::Del(uid),
                    Update::SnapshotSent => Seen::SnapshotSent,
                    other => panic!("unexpected update {other:?}"),
                };
                let outcome = answer(&item);
                seen.push(item);
                s.handle_complete(outcome).unwrap();
            }
            ProxyAction::Close(reason) => return (sent, seen, Some(reason)),
            other => panic!("unexpected action {other:?}"),
        }
    }
    (sent, seen, None)
}

fn ok(_: &Seen) -> Result<(), String> {
    Ok(())
}

/// Feeds one request and drives with every update succeeding.
fn feed(
    s: &mut ProxySession<u32>,
    bytes: &[u8],
    fds: Vec<u32>,
) -> (Vec<Vec<u8>>, Vec<Seen>, Option<CloseReason>) {
    s.handle_datagram(bytes, fds).unwrap();
    drive(s, ok)
}

fn connected() -> ProxySession<u32> {
    let mut s = ProxySession::new();
    s.connect();
    let (sent, seen, close) = drive(&mut s, ok);
    assert_eq!(sent, vec![vec![0x08, 0x01]], "hello first");
    assert!(seen.is_empty() && close.is_none());
    s
}

#[test]
fn snapshot_then_steady_state() {
    let mut s = connected();
    assert!(!s.is_ready());

    assert_eq!(
        feed(&mut s, &add("a"), vec![7]),
        (vec![ACK.to_vec()], vec![Seen::Add("a".into(), 7)], None)
    );
    assert_eq!(
        feed(&mut s, &keep("k"), vec![]),
        (vec![ACK.to_vec()], vec![Seen::Keep("k".into())], None)
    );
    assert!(!s.is_ready(), "not ready before SnapshotSent");
    assert_eq!(
        feed(&mut s, &snapshot_sent(), vec![]),
        (vec![ACK.to_vec()], vec![Seen::SnapshotSent], None)
    );
    assert!(s.is_ready());

    assert_eq!(
        feed(&mut s, &add("b"), vec![8]),
        (vec![ACK.to_vec()], vec![Seen::Add("b".into(), 8)], None)
    );
    assert_eq!(
        feed(&mut s, &del("a"), vec![]),
        (vec![ACK.to_vec()], vec![Seen::Del("a".into())], None)
    );
    // Deleting an unknown uid is fine.
    assert_eq!(
        feed(&mut s, &del("nobody"), vec![]),
        (vec![ACK.to_vec()], vec![Seen::Del("nobody".into())], None)
    );
    assert_eq!(s.known().collect::<Vec<_>>(), ["b"]);
    assert!(s.is_ready());
}

#[test]
fn reconcile_drops_workloads_not_resent() {
    let mut s = connected();
    for (uid, fd) in [("a", 1), ("b", 2), ("c", 3)] {
        feed(&mut s, &add(uid), vec![fd]);
    }
    feed(&mut s, &snapshot_sent(), vec![]);
    assert!(s.is_ready());

    // The connection drops; the next one re-sends a only, keeps c.
    s.handle_disconnect();
    assert!(!s.is_ready());
    s.connect();
    assert_eq!(drive(&mut s, ok).0, vec![vec![0x08, 0x01]]);
    feed(&mut s, &add("a"), vec![11]);
    feed(&mut s, &keep("c"), vec![]);
    let (sent, seen, close) = feed(&mut s, &snapshot_sent(), vec![]);
    assert_eq!(sent, vec![ACK.to_vec()], "one ack for SnapshotSent");
    assert_eq!(seen, vec![Seen::Del("b".into()), Seen::SnapshotSent]);
    assert!(close.is_none());
    assert_eq!(s.known().collect::<Vec<_>>(), ["a", "c"]);
    assert!(s.is_ready());
}

#[test]
fn delete_during_snapshot_is_left_to_reconciliation() {
    let mut s = connected();
    feed(&mut s, &add("a"), vec![1]);
    feed(&mut s, &snapshot_sent(), vec![]);
    s.handle_disconnect();
    s.connect();
    drive(&mut s, ok);

    feed(&mut s, &add("a"), vec![2]);
    // Not applied now...
    assert_eq!(
        feed(&mut s, &del("a"), vec![]),
        (vec![ACK.to_vec()], vec![], None)
    );
    // ...but reconciliation removes it, since the snapshot no longer names it.
    let (_, seen, _) = feed(&mut s, &snapshot_sent(), vec![]);
    assert_eq!(seen, vec![Seen::Del("a".into()), Seen::SnapshotSent]);
    assert_eq!(s.known().count(), 0);
}

#[test]
fn keep_after_snapshot_closes_and_the_next_snapshot_reconciles() {
    let mut s = connected();
    feed(&mut s, &add("a"), vec![7]);
    feed(&mut s, &add("b"), vec![8]);
    feed(&mut s, &snapshot_sent(), vec![]);
    let (sent, seen, close) = feed(&mut s, &keep("a"), vec![]);
    assert_eq!(
        sent,
        vec![nack(
            "failure to process message : ProtocolError(\"pod keep received after snapshot\")"
        )]
    );
    assert!(seen.is_empty());
    assert_eq!(
        close,
        Some(CloseReason::Protocol(ProtocolError::KeepAfterSnapshot))
    );
    assert!(!s.is_connected());
    assert_eq!(
        s.handle_datagram(&snapshot_sent(), vec![]),
        Err(SessionError::NotConnected)
    );

    // A protocol error is not the end: the next connection starts over, and its
    // snapshot removes what it no longer names.
    s.handle_disconnect();
    s.connect();
    let (sent, _, _) = drive(&mut s, ok);
    assert_eq!(sent, vec![vec![0x08, 0x01]], "hello again");
    assert_eq!(
        feed(&mut s, &keep("b"), vec![]).1,
        vec![Seen::Keep("b".into())]
    );
    let (_, seen, close) = feed(&mut s, &snapshot_sent(), vec![]);
    assert_eq!(seen, vec![Seen::Del("a".into()), Seen::SnapshotSent]);
    assert!(close.is_none());
    assert!(s.is_ready());
    assert_eq!(s.known().collect::<Vec<_>>(), vec!["b"]);
}

#[test]
fn second_snapshot_sent_closes() {
    let mut s = connected();
    feed(&mut s, &snapshot_sent(), vec![]);
    let (sent, _, close) = feed(&mut s, &snapshot_sent(), vec![]);
    assert_eq!(
        sent,
        vec![nack(
            "failure to process message : ProtocolError(\"pod snapshot received already\")"
        )]
    );
    assert_eq!(
        close,
        Some(CloseReason::Protocol(
            ProtocolError::SnapshotAlreadyReceived
        ))
    );
}

#[test]
fn add_without_workload_info_closes() {
    let mut s = connected();
    let bytes = [0x0a, 0x04, 0x0a, 0x02, b'u', b'1'];
    let (sent, seen, close) = feed(&mut s, &bytes, vec![5]);
    assert_eq!(
        sent,
        vec![nack(
            "failure to process message : ProtocolError(\"workload_info is required but not present\")"
        )]
    );
    assert!(seen.is_empty(), "the fd never reaches the application");
    assert!(matches!(close, Some(CloseReason::Protocol(_))), "{close:?}");
}

#[test]
fn read_errors_nack_and_reconnect() {
    let cases: Vec<(Vec<u8>, Vec<u32>, &str)> = vec![
        (add("a"), vec![], "No control message"),
        (add("a"), vec![1, 2], "Expected 1 FD, got 2"),
        (del("a"), vec![1], "Unexpected control message"),
        (vec![], vec![], "no payload"),
    ];
    for (bytes, fds, text) in cases {
        let mut s = connected();
        let (sent, seen, close) = feed(&mut s, &bytes, fds);
        assert_eq!(
            sent,
            vec![nack(&format!("failure to read message : {text}"))]
        );
        assert!(seen.is_empty());
        assert!(matches!(close, Some(CloseReason::Read(_))), "{close:?}");
        assert!(!s.is_connected());
        // Reconnecting is allowed.
        s.connect();
    }

    let mut s = connected();
    s.handle_read_error(ReadError::Truncated).unwrap();
    let (sent, _, close) = drive(&mut s, ok);
    assert_eq!(
        sent,
        vec![nack("failure to read message : received truncated message")]
    );
    assert_eq!(close, Some(CloseReason::Read(ReadError::Truncated)));
}

#[test]
fn failed_add_is_pending_until_resolved() {
    let mut s = connected();
    feed(&mut s, &snapshot_sent(), vec![]);
    s.handle_datagram(&add("a"), vec![3]).unwrap();
    let (sent, seen, close) = drive(&mut s, |_| Err("port 15008 in use".to_string()));
    assert_eq!(
        sent,
        vec![nack("failure to start proxy : port 15008 in use")]
    );
    assert_eq!(seen, vec![Seen::Add("a".into(), 3)]);
    assert!(close.is_none(), "a failed add keeps the connection");
    assert!(!s.is_ready());
    assert_eq!(s.pending().collect::<Vec<_>>(), ["a"]);

    assert!(s.resolve_pending("a"));
    assert!(s.is_ready());

    // A delete also clears it.
    s.handle_datagram(&add("b"), vec![4]).unwrap();
    drive(&mut s, |_| Err("nope".to_string()));
    assert!(!s.is_ready());
    feed(&mut s, &del("b"), vec![]);
    assert!(s.is_ready());
}

#[test]
fn failed_delete_nacks_and_reconnects() {
    let mut s = connected();
    feed(&mut s, &snapshot_sent(), vec![]);
    s.handle_datagram(&del("a"), vec![]).unwrap();
    let (sent, _, close) = drive(&mut s, |_| Err("drain failed".to_string()));
    assert_eq!(
        sent,
        vec![nack("failure to process message : drain failed")]
    );
    assert_eq!(close, Some(CloseReason::Processing("drain failed".into())));
}

#[test]
fn misuse_is_reported_not_panicked() {
    let mut s: ProxySession<u32> = ProxySession::new();
    assert_eq!(
        s.handle_datagram(&snapshot_sent(), vec![]),
        Err(SessionError::NotConnected)
    );
    s.connect();
    assert_eq!(
        s.handle_complete(Ok::<(), String>(())),
        Err(SessionError::Unexpected)
    );
    s.handle_datagram(&add("a"), vec![1]).unwrap();
    // The add is waiting for the application: another request is refused.
    assert_eq!(
        s.handle_datagram(&snapshot_sent(), vec![]),
        Err(SessionError::Busy)
    );
}

#[derive(Debug, Clone)]
enum Op {
    Datagram(Vec<u8>, usize),
    Truncated,
    Disconnect,
    Connect,
}

fn op() -> impl Strategy<Value = Op> {
    let request = prop_oneof![
        "[a-c]".prop_map(|u| (add(&u), 1usize)),
        "[a-c]".prop_map(|u| (keep(&u), 0usize)),
        "[a-c]".prop_map(|u| (del(&u), 0usize)),
        Just((snapshot_sent(), 0usize)),
        (proptest::collection::vec(any::<u8>(), 0..16), 0usize..3),
    ];
    prop_oneof![
        8 => request.prop_map(|(b, n)| Op::Datagram(b, n)),
        1 => Just(Op::Truncated),
        1 => Just(Op::Disconnect),
        1 => Just(Op::Connect),
    ]
}

proptest! {
    /// Whatever the agent sends, every accepted request gets exactly one answer, the
    /// application is never handed a stale fd, and readiness is consistent.
    #[test]
    fn one_answer_per_request(ops in proptest::collection::vec(op(), 0..60), fail in any::<u64>()) {
        let mut s: ProxySession<u32> = ProxySession::new();
        let mut next_fd = 0u32;
        let mut step = 0u32;
        for op in ops {
            let accepted = match op {
                Op::Datagram(bytes, n) => {
                    let fds: Vec<u32> = (0..n).map(|_| { next_fd += 1; next_fd }).collect();
                    s.handle_datagram(&bytes, fds).is_ok()
                }
                Op::Truncated => s.handle_read_error(ReadError::Truncated).is_ok(),
                Op::Disconnect => { s.handle_disconnect(); continue; }
                Op::Connect => {
                    s.connect();
                    let (sent, _, _) = drive(&mut s, ok);
                    prop_assert_eq!(sent, vec![vec![0x08, 0x01]]);
                    continue;
                }
            };
            let (sent, seen, close) = drive(&mut s, |_| {
                step += 1;
                if fail >> (step % 64) & 1 == 1 { Err("failed".into()) } else { Ok(()) }
            });
            if accepted {
                prop_assert_eq!(sent.len(), 1, "exactly one answer");
                let response = Response::decode(&sent[0], 0).unwrap();
                if close.is_some() {
                    prop_assert!(!response.is_ack());
                    prop_assert!(!s.is_ready());
                }
                for item in &seen {
                    if let Seen::Add(_, fd) = item {
                        prop_assert_eq!(*fd, next_fd, "the fd of this datagram");
                    }
                }
            } else {
                prop_assert!(sent.is_empty() && seen.is_empty() && close.is_none());
            }
        }
    }
}
