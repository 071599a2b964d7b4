//! Drives the ZDS session state machines with arbitrary message sequences.
//!
//! - `Proxy`: the proxy session fed arbitrary requests (well-formed or raw bytes, any
//!   number of descriptors), read errors, disconnects and application failures. Every
//!   accepted datagram must get exactly one decodable answer, and a terminal close must
//!   stop the session for good.
//! - `Agent`: the agent session fed arbitrary calls and datagrams; nothing may panic and
//!   the phase must follow the rules.
//! - `Pair`: an agent session and a proxy session talking to each other in memory, with
//!   the agent choosing arbitrary requests. Whatever the agent session lets through, the
//!   proxy session must never reject as a protocol error, and every request must be
//!   answered.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use meshwire_zds::{Update, Workload};
use meshwire_zds::session::{
    AgentPhase, AgentSession, CloseReason, ProxyAction, ProxySession, SessionError,
};
use meshwire_zds::wire::{ReadError, Request, Response};

#[derive(Debug, Arbitrary)]
enum Msg {
    Add { uid: u8, fds: u8 },
    AddWithoutInfo { uid: u8 },
    Keep { uid: u8, fds: u8 },
    Del { uid: u8, fds: u8 },
    SnapshotSent { fds: u8 },
    Raw { bytes: Vec<u8>, fds: u8 },
}

impl Msg {
    fn datagram(&self) -> (Vec<u8>, usize) {
        let uid = |u: &u8| format!("uid-{}", u % 4);
        let enc = |r: Request| r.encode().unwrap_or_default();
        match self {
            Self::Add { uid: u, fds } => (
                enc(Request::Add(Workload::new(uid(u), "pod", "ns", "sa"))),
                usize::from(fds % 3),
            ),
            Self::AddWithoutInfo { uid: u } => {
                use prost::Message;
                let proto = meshwire_zds::wire::pb::WorkloadRequest {
                    payload: Some(meshwire_zds::wire::pb::workload_request::Payload::Add(
                        meshwire_zds::wire::pb::AddWorkload {
                            uid: uid(u),
                            workload_info: None,
                        },
                    )),
                };
                (proto.encode_to_vec(), 1)
            }
            Self::Keep { uid: u, fds } => {
                (enc(Request::Keep { uid: uid(u) }), usize::from(fds % 2))
            }
            Self::Del { uid: u, fds } => (enc(Request::Del { uid: uid(u) }), usize::from(fds % 2)),
            Self::SnapshotSent { fds } => (enc(Request::SnapshotSent), usize::from(fds % 2)),
            Self::Raw { bytes, fds } => (bytes.clone(), usize::from(fds % 3)),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum ProxyOp {
    Datagram(Msg),
    Truncated,
    Disconnect,
    Connect,
}

#[derive(Debug, Arbitrary)]
enum AgentOp {
    Hello { bytes: Vec<u8>, fds: u8 },
    Send(Msg),
    Response { bytes: Vec<u8>, fds: u8 },
    Ack,
    Close,
}

#[derive(Debug, Arbitrary)]
enum Input {
    Proxy { ops: Vec<ProxyOp>, failures: u64 },
    Agent { ops: Vec<AgentOp> },
    Pair { msgs: Vec<Msg>, failures: u64 },
}

/// Next descriptor "number": the fuzzer's stand-in for an `OwnedFd`.
struct Fds(u32);

impl Fds {
    fn take(&mut self, n: usize) -> Vec<u32> {
        (0..n)
            .map(|_| {
                self.0 += 1;
                self.0
            })
            .collect()
    }
}

/// Runs the proxy session until it waits. Returns the transmits and why it closed, if it did.
fn drive(
    s: &mut ProxySession<u32>,
    failures: &mut u64,
    last_fd: u32,
) -> (Vec<Vec<u8>>, Option<CloseReason>) {
    let mut sent = Vec::new();
    while let Some(action) = s.poll_action() {
        match action {
            ProxyAction::Transmit(bytes) => {
                assert!(bytes.len() <= meshwire_zds::wire::MAX_MESSAGE_SIZE);
                sent.push(bytes);
            }
            ProxyAction::Apply(update) => {
                if let Update::Add { netns, .. } = &update {
                    assert_eq!(*netns, last_fd, "the fd of the current datagram");
                }
                let fail = *failures & 1 == 1;
                *failures = failures.rotate_right(1);
                let outcome = if fail { Err("failed") } else { Ok(()) };
                s.handle_complete(outcome).expect("completion accepted");
            }
            ProxyAction::Close(reason) => {
                assert!(!s.is_ready());
                return (sent, Some(reason));
            }
            _ => {}
        }
    }
    (sent, None)
}

fn run_proxy(ops: Vec<ProxyOp>, mut failures: u64) {
    let mut s = ProxySession::<u32>::new();
    let mut fds = Fds(0);
    for op in ops {
        let accepted = match op {
            ProxyOp::Datagram(msg) => {
                let (bytes, n) = msg.datagram();
                s.handle_datagram(&bytes, fds.take(n)).is_ok()
            }
            ProxyOp::Truncated => s.handle_read_error(ReadError::Truncated).is_ok(),
            ProxyOp::Disconnect => {
                s.handle_disconnect();
                assert!(!s.is_ready());
                continue;
            }
            ProxyOp::Connect => {
                s.connect();
                let (sent, closed) = drive(&mut s, &mut failures, fds.0);
                assert_eq!(sent, vec![vec![0x08, 0x01]]);
                assert!(closed.is_none());
                continue;
            }
        };
        let (sent, _) = drive(&mut s, &mut failures, fds.0);
        if accepted {
            assert_eq!(sent.len(), 1, "exactly one answer per request");
            Response::decode(&sent[0], 0).expect("answers decode");
        } else {
            assert!(sent.is_empty());
        }
    }
}

fn run_agent(ops: Vec<AgentOp>) {
    let mut s = AgentSession::new();
    for op in ops {
        let before = s.phase();
        match op {
            AgentOp::Hello { bytes, fds } => {
                let ok = s.handle_hello(&bytes, usize::from(fds % 2)).is_ok();
                if ok {
                    assert_eq!(before, AgentPhase::AwaitingHello);
                    assert_eq!(s.phase(), AgentPhase::Snapshot);
                }
            }
            AgentOp::Send(msg) => {
                let (bytes, n) = msg.datagram();
                let request = Request::decode(&bytes, n).ok();
                if let Some(request) = request {
                    match s.encode_request(&request) {
                        Ok(encoded) => {
                            assert!(matches!(before, AgentPhase::Snapshot | AgentPhase::Steady));
                            assert_eq!(Request::decode(&encoded, n).ok(), Some(request));
                        }
                        Err(SessionError::Busy) => assert!(s.outstanding().is_some()),
                        Err(_) => assert_eq!(s.phase(), before, "caller errors keep the phase"),
                    }
                }
            }
            AgentOp::Response { bytes, fds } => {
                let _ = s.handle_response(&bytes, usize::from(fds % 2));
            }
            AgentOp::Ack => {
                let outstanding = s.outstanding().cloned();
                let result = s.handle_response(&Response::Ack.encode(), 0);
                match (outstanding, before) {
                    (_, AgentPhase::Closed) => assert!(result.is_err()),
                    (None, _) => {
                        assert!(result.is_err());
                        assert_eq!(s.phase(), AgentPhase::Closed);
                    }
                    (Some(Request::SnapshotSent), _) => {
                        assert_eq!(result.ok(), Some(Response::Ack));
                        assert_eq!(s.phase(), AgentPhase::Steady);
                    }
                    (Some(_), _) => assert_eq!(result.ok(), Some(Response::Ack)),
                }
            }
            AgentOp::Close => {
                s.close();
                assert_eq!(s.phase(), AgentPhase::Closed);
            }
        }
    }
}

fn run_pair(msgs: Vec<Msg>, mut failures: u64) {
    let mut agent = AgentSession::new();
    let mut proxy = ProxySession::<u32>::new();
    let mut fds = Fds(0);
    proxy.connect();
    let (hello, _) = drive(&mut proxy, &mut failures, 0);
    agent
        .handle_hello(&hello[0], 0)
        .expect("our hello is accepted");

    for msg in msgs {
        let (bytes, n) = msg.datagram();
        let Ok(request) = Request::decode(&bytes, n) else {
            continue;
        };
        let Ok(encoded) = agent.encode_request(&request) else {
            continue;
        };
        let n = usize::from(request.carries_fd());
        proxy
            .handle_datagram(&encoded, fds.take(n))
            .expect("proxy accepts the next request");
        let (sent, closed) = drive(&mut proxy, &mut failures, fds.0);
        assert_eq!(sent.len(), 1);
        assert!(
            !matches!(closed, Some(CloseReason::Protocol(_))),
            "agent rules never trip the proxy"
        );
        let response = agent.handle_response(&sent[0], 0).expect("answer accepted");
        if closed.is_some() {
            assert!(!response.is_ack());
            return;
        }
    }
}

fuzz_target!(|input: Input| match input {
    Input::Proxy { ops, failures } => run_proxy(ops, failures),
    Input::Agent { ops } => run_agent(ops),
    Input::Pair { msgs, failures } => run_pair(msgs, failures),
});
