//! Sans-IO encoding and decoding of ZDS datagrams.
//!
//! Each function here maps one datagram (its bytes plus the number of file descriptors
//! that arrived with it) to a typed message, applying the per-message rules the
//! receiving side enforces. Nothing here touches a socket.

use prost::Message;

use super::pb;
use crate::Workload;

/// Largest datagram either side sends or accepts, in bytes.
///
/// Receivers read into a buffer of exactly this size and treat a truncated read as an
/// error, so a sender must never exceed it.
pub const MAX_MESSAGE_SIZE: usize = 1024;

/// Text prefix of the NACK sent when a request could not be read.
pub(crate) const READ_FAILURE_PREFIX: &str = "failure to read message : ";
/// Text prefix of the NACK sent when a request could not be processed.
pub(crate) const PROCESS_FAILURE_PREFIX: &str = "failure to process message : ";
/// Text prefix of the NACK sent when the proxy could not start serving a workload.
pub(crate) const START_FAILURE_PREFIX: &str = "failure to start proxy : ";

/// A datagram that the receiving side cannot accept as a message.
///
/// The `Display` texts are the ones carried in NACKs
/// (`"failure to read message : <text>"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The datagram or its ancillary data did not fit the receive buffers
    /// (`MSG_TRUNC` / `MSG_CTRUNC`), or is longer than [`MAX_MESSAGE_SIZE`].
    #[error("received truncated message")]
    Truncated,
    /// More than one file descriptor arrived with one datagram. All of them were closed.
    #[error("Expected 1 FD, got {0}")]
    TooManyFds(usize),
    /// The message decoded, but its `payload` oneof is unset (or holds a variant this
    /// side does not know).
    #[error("no payload")]
    NoPayload,
    /// An `AddWorkload` arrived without a file descriptor.
    #[error("No control message")]
    MissingFd,
    /// A message other than `AddWorkload` arrived with a file descriptor.
    #[error("Unexpected control message")]
    UnexpectedFd,
    /// The bytes are not a valid protobuf encoding of the expected message.
    #[error("{0}")]
    Decode(#[from] prost::DecodeError),
}

/// A well-formed message that breaks the ZDS sequencing rules.
///
/// On the proxy side a protocol error is terminal: the proxy answers with a NACK
/// (`failure to process message : ProtocolError("<text>")`) and stops for good, since
/// the peer is incompatible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// `KeepWorkload` after `SnapshotSent`.
    #[error("pod keep received after snapshot")]
    KeepAfterSnapshot,
    /// A second `SnapshotSent` on one connection.
    #[error("pod snapshot received already")]
    SnapshotAlreadyReceived,
    /// `AddWorkload` without `workload_info`.
    #[error("workload_info is required but not present")]
    MissingWorkloadInfo,
    /// The proxy sent something while no request was waiting for its answer.
    #[error("message received while no request was outstanding")]
    UnsolicitedMessage,
}

/// A message that cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoding is longer than [`MAX_MESSAGE_SIZE`].
    #[error("message of {size} bytes exceeds the {MAX_MESSAGE_SIZE}-byte ZDS limit")]
    TooLarge {
        /// Encoded size in bytes.
        size: usize,
    },
}

/// Why a received datagram is not an acceptable [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The datagram could not be read as a request. The proxy NACKs it and reconnects.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The request is well formed but not allowed. The proxy NACKs it and stops.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

fn check_size(size: usize) -> Result<(), EncodeError> {
    if size > MAX_MESSAGE_SIZE {
        Err(EncodeError::TooLarge { size })
    } else {
        Ok(())
    }
}

fn check_received(bytes: &[u8], fds: usize) -> Result<(), ReadError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(ReadError::Truncated);
    }
    if fds > 1 {
        return Err(ReadError::TooManyFds(fds));
    }
    Ok(())
}

/// The proxy's first message on a connection (`ZdsHello`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hello {
    version: i32,
}

impl Hello {
    /// The hello this crate sends: protocol version `V1`. Encodes as `08 01`.
    pub const V1: Self = Self {
        version: pb::Version::V1 as i32,
    };

    /// A hello announcing an arbitrary version number.
    pub fn new(version: i32) -> Self {
        Self { version }
    }

    /// The announced version number (`1` is `V1`).
    pub fn version(self) -> i32 {
        self.version
    }

    /// Whether the peer announced `V1`.
    pub fn is_v1(self) -> bool {
        self.version == pb::Version::V1 as i32
    }

    /// Encodes the hello.
    pub fn encode(self) -> Vec<u8> {
        pb::ZdsHello {
            version: self.version,
        }
        .encode_to_vec()
    }

    /// Decodes a hello datagram that arrived with `fds` file descriptors.
    pub fn decode(bytes: &[u8], fds: usize) -> Result<Self, ReadError> {
        check_received(bytes, fds)?;
        if fds != 0 {
            return Err(ReadError::UnexpectedFd);
        }
        let hello = pb::ZdsHello::decode(bytes)?;
        Ok(Self {
            version: hello.version,
        })
    }
}

/// A request from the agent to the proxy (`WorkloadRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Request {
    /// `AddWorkload`: start serving the pod. Travels with exactly one netns fd.
    Add(Workload),
    /// `KeepWorkload`: during the snapshot only, keep the pod as it is.
    Keep {
        /// Kubernetes pod UID.
        uid: String,
    },
    /// `DelWorkload`: stop serving the pod.
    Del {
        /// Kubernetes pod UID.
        uid: String,
    },
    /// `SnapshotSent`: the snapshot is complete.
    SnapshotSent,
}

impl Request {
    /// The pod UID this request is about, if any.
    pub fn uid(&self) -> Option<&str> {
        match self {
            Self::Add(workload) => Some(&workload.uid),
            Self::Keep { uid } | Self::Del { uid } => Some(uid),
            Self::SnapshotSent => None,
        }
    }

    /// Whether this request travels with a file descriptor (only `Add` does).
    pub fn carries_fd(&self) -> bool {
        matches!(self, Self::Add(_))
    }

    fn to_proto(&self) -> pb::WorkloadRequest {
        use pb::workload_request::Payload;
        let payload = match self {
            Self::Add(workload) => Payload::Add(pb::AddWorkload {
                uid: workload.uid.clone(),
                workload_info: Some(pb::WorkloadInfo {
                    name: workload.name.clone(),
                    namespace: workload.namespace.clone(),
                    service_account: workload.service_account.clone(),
                }),
            }),
            Self::Keep { uid } => Payload::Keep(pb::KeepWorkload { uid: uid.clone() }),
            Self::Del { uid } => Payload::Del(pb::DelWorkload { uid: uid.clone() }),
            Self::SnapshotSent => Payload::SnapshotSent(pb::SnapshotSent {}),
        };
        pb::WorkloadRequest {
            payload: Some(payload),
        }
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        self.to_proto().encoded_len()
    }

    /// Encodes the request, refusing encodings longer than [`MAX_MESSAGE_SIZE`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let proto = self.to_proto();
        check_size(proto.encoded_len())?;
        Ok(proto.encode_to_vec())
    }

    /// Decodes a request datagram that arrived with `fds` file descriptors, applying the
    /// receive rules in this order: size, at most one fd, protobuf decoding, payload
    /// present, fd present on `Add` and absent otherwise, `workload_info` present on
    /// `Add`.
    pub fn decode(bytes: &[u8], fds: usize) -> Result<Self, RequestError> {
        use pb::workload_request::Payload;
        check_received(bytes, fds)?;
        let proto = pb::WorkloadRequest::decode(bytes).map_err(ReadError::from)?;
        let payload = proto.payload.ok_or(ReadError::NoPayload)?;
        match (&payload, fds) {
            (Payload::Add(_), 0) => return Err(ReadError::MissingFd.into()),
            (Payload::Add(_), _) => {}
            (_, 0) => {}
            (_, _) => return Err(ReadError::UnexpectedFd.into()),
        }
        Ok(match payload {
            Payload::Add(add) => {
                let info = add
                    .workload_info
                    .ok_or(ProtocolError::MissingWorkloadInfo)?;
                Self::Add(Workload {
                    uid: add.uid,
                    name: info.name,
                    namespace: info.namespace,
                    service_account: info.service_account,
                })
            }
            Payload::Keep(keep) => Self::Keep { uid: keep.uid },
            Payload::Del(del) => Self::Del { uid: del.uid },
            Payload::SnapshotSent(_) => Self::SnapshotSent,
        })
    }
}

/// The proxy's answer to one request (`WorkloadResponse{ack}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Response {
    /// Success (`Ack{error: ""}`). Encodes as `0A 00`.
    Ack,
    /// Failure (`Ack{error: text}`); the text is never empty.
    Nack(String),
}

impl Response {
    /// Longest NACK text that still fits a [`MAX_MESSAGE_SIZE`] datagram.
    pub const MAX_NACK_LEN: usize = MAX_MESSAGE_SIZE - 6;

    /// A NACK with `text`. An empty text would read as success, so it is replaced by
    /// `"unknown error"`; a text longer than [`Self::MAX_NACK_LEN`] is cut at a character
    /// boundary so that the response always fits one datagram.
    pub fn nack(text: impl Into<String>) -> Self {
        let mut text = text.into();
        if text.is_empty() {
            text.push_str("unknown error");
        }
        if text.len() > Self::MAX_NACK_LEN {
            let mut end = Self::MAX_NACK_LEN;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        Self::Nack(text)
    }

    /// Whether this is a positive ack.
    pub fn is_ack(&self) -> bool {
        matches!(self, Self::Ack)
    }

    /// Encodes the response. NACK texts built with [`Response::nack`] always fit; a
    /// longer text is cut here the same way, so the result never exceeds
    /// [`MAX_MESSAGE_SIZE`].
    pub fn encode(&self) -> Vec<u8> {
        let error = match self {
            Self::Ack => String::new(),
            Self::Nack(text) => match Self::nack(text.as_str()) {
                Self::Nack(cut) => cut,
                Self::Ack => String::new(),
            },
        };
        pb::WorkloadResponse {
            payload: Some(pb::workload_response::Payload::Ack(pb::Ack { error })),
        }
        .encode_to_vec()
    }

    /// Decodes a response datagram that arrived with `fds` file descriptors (responses
    /// never carry any).
    pub fn decode(bytes: &[u8], fds: usize) -> Result<Self, ReadError> {
        check_received(bytes, fds)?;
        if fds != 0 {
            return Err(ReadError::UnexpectedFd);
        }
        let proto = pb::WorkloadResponse::decode(bytes)?;
        match proto.payload {
            Some(pb::workload_response::Payload::Ack(ack)) if ack.error.is_empty() => Ok(Self::Ack),
            Some(pb::workload_response::Payload::Ack(ack)) => Ok(Self::Nack(ack.error)),
            None => Err(ReadError::NoPayload),
        }
    }
}

/// NACK text for a request that could not be read.
pub(crate) fn read_failure_text(err: &ReadError) -> String {
    format!("{READ_FAILURE_PREFIX}{err}")
}

/// NACK text for a protocol error (terminal on the proxy side).
pub(crate) fn protocol_failure_text(err: &ProtocolError) -> String {
    format!(
        "{PROCESS_FAILURE_PREFIX}ProtocolError({:?})",
        err.to_string()
    )
}

/// NACK text for any other processing failure.
pub(crate) fn process_failure_text(err: &str) -> String {
    format!("{PROCESS_FAILURE_PREFIX}{err}")
}

/// NACK text for a workload the application failed to start.
pub(crate) fn start_failure_text(err: &str) -> String {
    format!("{START_FAILURE_PREFIX}{err}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nack_fits_exactly() {
        let long = "x".repeat(5000);
        let bytes = Response::nack(long).encode();
        assert_eq!(bytes.len(), MAX_MESSAGE_SIZE);
        let decoded = Response::decode(&bytes, 0).unwrap();
        assert_eq!(decoded, Response::Nack("x".repeat(Response::MAX_NACK_LEN)));
        // One more byte of text would not fit.
        let over = pb::WorkloadResponse {
            payload: Some(pb::workload_response::Payload::Ack(pb::Ack {
                error: "x".repeat(Response::MAX_NACK_LEN + 1),
            })),
        };
        assert!(over.encoded_len() > MAX_MESSAGE_SIZE);
    }

    #[test]
    fn nack_cut_respects_char_boundaries() {
        let text = "é".repeat(1000); // 2000 bytes
        let Response::Nack(cut) = Response::nack(text) else {
            panic!("expected a nack")
        };
        assert!(cut.len() <= Response::MAX_NACK_LEN);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(Response::nack(""), Response::Nack("unknown error".into()));
    }

    fn workload() -> impl Strategy<Value = Workload> {
        (
            "[a-z0-9-]{0,40}",
            "\\PC{0,30}",
            "[a-z-]{0,20}",
            "\\PC{0,20}",
        )
            .prop_map(|(u, n, ns, sa)| Workload::new(u, n, ns, sa))
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            workload().prop_map(Request::Add),
            "\\PC{0,50}".prop_map(|uid| Request::Keep { uid }),
            "\\PC{0,50}".prop_map(|uid| Request::Del { uid }),
            Just(Request::SnapshotSent),
        ]
    }

    proptest! {
        #[test]
        fn request_round_trips(req in request()) {
            let bytes = req.encode().unwrap();
            prop_assert_eq!(bytes.len(), req.encoded_len());
            let fds = usize::from(req.carries_fd());
            prop_assert_eq!(Request::decode(&bytes, fds).unwrap(), req);
        }

        #[test]
        fn response_round_trips(text in "\\PC{0,200}") {
            let resp = if text.is_empty() { Response::Ack } else { Response::nack(text) };
            prop_assert_eq!(Response::decode(&resp.encode(), 0).unwrap(), resp);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100), fds in 0usize..4) {
            if let Ok(req) = Request::decode(&bytes, fds) {
                // Whatever decodes re-encodes to something that decodes the same.
                let again = req.encode().unwrap();
                prop_assert_eq!(Request::decode(&again, fds).unwrap(), req);
            }
            let _ = Response::decode(&bytes, fds);
            let _ = Hello::decode(&bytes, fds);
        }
    }
}
