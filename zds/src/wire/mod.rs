//! What goes over the socket: the generated protobuf messages ([`pb`]) and the checked
//! codec ([`Hello`], [`Request`], [`Response`]) that applies the receive rules.
//!
//! Each datagram is one protobuf message of at most [`MAX_MESSAGE_SIZE`] bytes; an add
//! carries exactly one file descriptor (the pod's network namespace) and every other
//! message none; a payload must be present, and `workload_info` on an add. Decoding
//! never panics.
//!
//! ```
//! use meshwire_zds::Workload;
//! use meshwire_zds::wire::{Request, Response};
//!
//! // `DelWorkload{uid: "abc"}`: the uid is field 2.
//! let del = Request::Del { uid: "abc".into() };
//! assert_eq!(del.encode()?, [0x12, 0x05, 0x12, 0x03, b'a', b'b', b'c']);
//!
//! // An add must arrive with exactly one fd.
//! let add = Request::Add(Workload::new("abc", "web-0", "shop", "web"));
//! let bytes = add.encode()?;
//! assert_eq!(Request::decode(&bytes, 1)?, add);
//! assert!(Request::decode(&bytes, 0).is_err());
//!
//! // The positive ack.
//! assert_eq!(Response::Ack.encode(), [0x0a, 0x00]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod codec;

/// The generated `istio.workload.zds` protobuf messages, exactly as on the wire.
///
/// Most code wants the checked types ([`Request`], [`Response`], [`Hello`]) instead.
#[allow(missing_docs, clippy::all, unreachable_pub, unused_qualifications)]
#[rustfmt::skip]
pub mod pb {
    include!("../generated/istio.workload.zds.rs");
}

pub use codec::{
    EncodeError, Hello, MAX_MESSAGE_SIZE, ProtocolError, ReadError, Request, RequestError, Response,
};

pub(crate) use codec::{
    process_failure_text, protocol_failure_text, read_failure_text, start_failure_text,
};
