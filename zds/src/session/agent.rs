//! The agent side of a ZDS connection.

use super::SessionError;
use crate::wire::{Hello, ProtocolError, Request, Response};

/// Where an [`AgentSession`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AgentPhase {
    /// Waiting for the proxy's hello.
    AwaitingHello,
    /// Sending the snapshot: adds, keeps and deletes, ended by `SnapshotSent`.
    Snapshot,
    /// Snapshot done: adds and deletes only.
    Steady,
    /// The connection must be dropped; nothing more is accepted.
    Closed,
}

/// The agent side of ZDS as a state machine without I/O.
///
/// One value per connection. It enforces the sequencing an agent must follow and checks
/// what the proxy sends:
///
/// 1. [`handle_hello`](Self::handle_hello) with the first datagram.
/// 2. For each request: [`encode_request`](Self::encode_request), send the bytes (with
///    the netns fd for an add), then pass the one answering datagram to
///    [`handle_response`](Self::handle_response). Only one request may be outstanding.
///    Keeps are allowed only before `SnapshotSent`, and `SnapshotSent` only once.
/// 3. Any datagram that arrives while no request is outstanding is a protocol error
///    ([`ProtocolError::UnsolicitedMessage`]): pass it to `handle_response` as well.
///
/// A [`SessionError::Read`] or [`SessionError::Protocol`] caused by the proxy closes the
/// session ([`AgentPhase::Closed`]); errors caused by calling in the wrong state leave
/// it unchanged.
#[derive(Debug, Clone)]
pub struct AgentSession {
    phase: AgentPhase,
    hello: Option<Hello>,
    outstanding: Option<Request>,
}

impl Default for AgentSession {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentSession {
    /// A session for a freshly accepted connection.
    pub fn new() -> Self {
        Self {
            phase: AgentPhase::AwaitingHello,
            hello: None,
            outstanding: None,
        }
    }

    /// Where the session stands.
    pub fn phase(&self) -> AgentPhase {
        self.phase
    }

    /// The proxy's hello, once received.
    pub fn hello(&self) -> Option<Hello> {
        self.hello
    }

    /// The request waiting for its answer, if any.
    pub fn outstanding(&self) -> Option<&Request> {
        self.outstanding.as_ref()
    }

    /// Marks the session closed (for example after an I/O error or a timeout).
    pub fn close(&mut self) {
        self.phase = AgentPhase::Closed;
        self.outstanding = None;
    }

    /// Feeds the first datagram of the connection: the proxy's hello. Any version is
    /// accepted (the caller may log one that is not `V1`).
    pub fn handle_hello(&mut self, bytes: &[u8], fds: usize) -> Result<Hello, SessionError> {
        match self.phase {
            AgentPhase::AwaitingHello => {}
            AgentPhase::Closed => return Err(SessionError::NotConnected),
            AgentPhase::Snapshot | AgentPhase::Steady => {
                self.close();
                return Err(ProtocolError::UnsolicitedMessage.into());
            }
        }
        match Hello::decode(bytes, fds) {
            Ok(hello) => {
                self.hello = Some(hello);
                self.phase = AgentPhase::Snapshot;
                Ok(hello)
            }
            Err(e) => {
                self.close();
                Err(e.into())
            }
        }
    }

    /// Checks that `request` may be sent now and encodes it. On success the request is
    /// outstanding until [`handle_response`](Self::handle_response).
    pub fn encode_request(&mut self, request: &Request) -> Result<Vec<u8>, SessionError> {
        match self.phase {
            AgentPhase::AwaitingHello => return Err(SessionError::HelloPending),
            AgentPhase::Closed => return Err(SessionError::NotConnected),
            AgentPhase::Snapshot | AgentPhase::Steady => {}
        }
        if self.outstanding.is_some() {
            return Err(SessionError::Busy);
        }
        let steady = self.phase == AgentPhase::Steady;
        match request {
            Request::Keep { .. } if steady => {
                return Err(ProtocolError::KeepAfterSnapshot.into());
            }
            Request::SnapshotSent if steady => {
                return Err(ProtocolError::SnapshotAlreadyReceived.into());
            }
            _ => {}
        }
        let bytes = request.encode()?;
        self.outstanding = Some(request.clone());
        Ok(bytes)
    }

    /// Feeds a datagram received from the proxy after the hello. Returns the answer to
    /// the outstanding request; an answer to `SnapshotSent` (positive or not) moves the
    /// session to [`AgentPhase::Steady`].
    pub fn handle_response(&mut self, bytes: &[u8], fds: usize) -> Result<Response, SessionError> {
        match self.phase {
            AgentPhase::Closed => return Err(SessionError::NotConnected),
            AgentPhase::AwaitingHello | AgentPhase::Snapshot | AgentPhase::Steady => {}
        }
        let Some(request) = self.outstanding.take() else {
            self.close();
            return Err(ProtocolError::UnsolicitedMessage.into());
        };
        match Response::decode(bytes, fds) {
            Ok(response) => {
                if request == Request::SnapshotSent {
                    self.phase = AgentPhase::Steady;
                }
                Ok(response)
            }
            Err(e) => {
                self.close();
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Workload;

    #[test]
    fn sequencing() {
        let mut s = AgentSession::new();
        assert_eq!(
            s.encode_request(&Request::SnapshotSent),
            Err(SessionError::HelloPending)
        );
        assert_eq!(s.handle_hello(&[0x08, 0x01], 0).unwrap(), Hello::V1);
        assert_eq!(s.phase(), AgentPhase::Snapshot);

        let add = Request::Add(Workload::new("u1", "p", "ns", "sa"));
        s.encode_request(&add).unwrap();
        assert_eq!(s.encode_request(&add), Err(SessionError::Busy));
        assert_eq!(s.handle_response(&[0x0a, 0x00], 0).unwrap(), Response::Ack);

        s.encode_request(&Request::Keep { uid: "u2".into() })
            .unwrap();
        assert_eq!(s.handle_response(&[0x0a, 0x00], 0).unwrap(), Response::Ack);
        s.encode_request(&Request::SnapshotSent).unwrap();
        assert_eq!(s.handle_response(&[0x0a, 0x00], 0).unwrap(), Response::Ack);
        assert_eq!(s.phase(), AgentPhase::Steady);

        assert_eq!(
            s.encode_request(&Request::Keep { uid: "u2".into() }),
            Err(ProtocolError::KeepAfterSnapshot.into())
        );
        assert_eq!(
            s.encode_request(&Request::SnapshotSent),
            Err(ProtocolError::SnapshotAlreadyReceived.into())
        );
        // Caller mistakes do not close the session.
        assert_eq!(s.phase(), AgentPhase::Steady);

        s.encode_request(&Request::Del { uid: "u1".into() })
            .unwrap();
        let nack = Response::nack("boom").encode();
        assert_eq!(
            s.handle_response(&nack, 0).unwrap(),
            Response::Nack("boom".into())
        );

        // Unsolicited data closes the session.
        assert_eq!(
            s.handle_response(&[0x0a, 0x00], 0),
            Err(ProtocolError::UnsolicitedMessage.into())
        );
        assert_eq!(s.phase(), AgentPhase::Closed);
    }

    #[test]
    fn response_with_fd_closes() {
        let mut s = AgentSession::new();
        s.handle_hello(&Hello::V1.encode(), 0).unwrap();
        s.encode_request(&Request::SnapshotSent).unwrap();
        assert_eq!(
            s.handle_response(&[0x0a, 0x00], 1),
            Err(crate::wire::ReadError::UnexpectedFd.into())
        );
        assert_eq!(s.phase(), AgentPhase::Closed);
    }

    #[test]
    fn hello_with_fd_closes() {
        let mut s = AgentSession::new();
        assert_eq!(
            s.handle_hello(&[0x08, 0x01], 1),
            Err(crate::wire::ReadError::UnexpectedFd.into())
        );
        assert_eq!(s.phase(), AgentPhase::Closed);
    }
}
