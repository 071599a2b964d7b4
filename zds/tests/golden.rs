//! Exact encodings and receive rules, checked against hand-assembled bytes.

// Test helpers panic on purpose: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshwire_zds::Workload;
use meshwire_zds::wire::{Hello, ProtocolError, ReadError, Request, RequestError, Response, pb};
use prost::Message;

#[test]
fn hello_is_08_01() {
    assert_eq!(Hello::V1.encode(), [0x08, 0x01]);
    let hello = Hello::decode(&[0x08, 0x01], 0).unwrap();
    assert!(hello.is_v1());
    assert_eq!(hello.version(), 1);
    // An unknown version still decodes; the agent only logs it.
    assert_eq!(Hello::decode(&[0x08, 0x07], 0).unwrap().version(), 7);
    // An empty hello is version 0 (NOT_USED).
    assert_eq!(Hello::decode(&[], 0).unwrap().version(), 0);
}

#[test]
fn positive_ack_is_0a_00() {
    assert_eq!(Response::Ack.encode(), [0x0a, 0x00]);
    assert_eq!(Response::decode(&[0x0a, 0x00], 0).unwrap(), Response::Ack);
}

#[test]
fn nack_carries_text_in_field_1() {
    let bytes = Response::nack("x").encode();
    assert_eq!(bytes, [0x0a, 0x03, 0x0a, 0x01, b'x']);
    assert_eq!(
        Response::decode(&bytes, 0).unwrap(),
        Response::Nack("x".into())
    );
    // A response without its oneof is unreadable.
    assert_eq!(Response::decode(&[], 0), Err(ReadError::NoPayload));
}

#[test]
fn snapshot_sent_is_1a_00() {
    assert_eq!(Request::SnapshotSent.encode().unwrap(), [0x1a, 0x00]);
    assert_eq!(
        Request::decode(&[0x1a, 0x00], 0).unwrap(),
        Request::SnapshotSent
    );
}

#[test]
fn del_uses_oneof_tag_2_and_uid_tag_2() {
    let bytes = [0x12, 0x05, 0x12, 0x03, b'a', b'b', b'c'];
    let del = Request::Del { uid: "abc".into() };
    assert_eq!(del.encode().unwrap(), bytes);
    assert_eq!(Request::decode(&bytes, 0).unwrap(), del);
    // The generated type agrees: DelWorkload.uid is field 2.
    assert_eq!(
        pb::DelWorkload { uid: "abc".into() }.encode_to_vec(),
        [0x12, 0x03, b'a', b'b', b'c']
    );
}

#[test]
fn keep_uses_oneof_tag_5() {
    let bytes = [0x2a, 0x05, 0x0a, 0x03, b'a', b'b', b'c'];
    let keep = Request::Keep { uid: "abc".into() };
    assert_eq!(keep.encode().unwrap(), bytes);
    assert_eq!(Request::decode(&bytes, 0).unwrap(), keep);
}

#[test]
fn add_layout() {
    // 0A <len> 0A <len(U)> U 12 <len(W)> W, W = 0A name 12 namespace 1A service_account
    let info = [0x0a, 0x01, b'p', 0x12, 0x01, b'n', 0x1a, 0x01, b's'];
    let mut bytes = vec![0x0a, 0x0f, 0x0a, 0x02, b'u', b'1', 0x12, 0x09];
    bytes.extend_from_slice(&info);
    let add = Request::Add(Workload::new("u1", "p", "n", "s"));
    assert_eq!(add.encode().unwrap(), bytes);
    assert_eq!(Request::decode(&bytes, 1).unwrap(), add);
}

#[test]
fn unknown_fields_are_skipped() {
    // WorkloadInfo with the reserved trust_domain (field 4) set, as an older agent may
    // send it.
    let info = [
        0x0a, 0x01, b'p', 0x12, 0x01, b'n', 0x1a, 0x01, b's', 0x22, 0x02, b't', b'd',
    ];
    let mut bytes = vec![0x0a, 0x13, 0x0a, 0x02, b'u', b'1', 0x12, 0x0d];
    bytes.extend_from_slice(&info);
    assert_eq!(
        Request::decode(&bytes, 1).unwrap(),
        Request::Add(Workload::new("u1", "p", "n", "s"))
    );
}

#[test]
fn receive_rules() {
    let add = Request::Add(Workload::new("u1", "p", "n", "s"))
        .encode()
        .unwrap();
    let del = [0x12, 0x05, 0x12, 0x03, b'a', b'b', b'c'];

    assert_eq!(
        Request::decode(&add, 0),
        Err(RequestError::Read(ReadError::MissingFd))
    );
    assert_eq!(
        Request::decode(&add, 2),
        Err(RequestError::Read(ReadError::TooManyFds(2)))
    );
    assert_eq!(
        Request::decode(&del, 1),
        Err(RequestError::Read(ReadError::UnexpectedFd))
    );
    assert_eq!(
        Request::decode(&[0x1a, 0x00], 1),
        Err(RequestError::Read(ReadError::UnexpectedFd))
    );
    // Two fds are refused before anything else is looked at.
    assert_eq!(
        Request::decode(&del, 3),
        Err(RequestError::Read(ReadError::TooManyFds(3)))
    );
    // Empty request, and a request whose only field is unknown (tag 4): no payload.
    assert_eq!(
        Request::decode(&[], 0),
        Err(RequestError::Read(ReadError::NoPayload))
    );
    assert_eq!(
        Request::decode(&[0x22, 0x00], 0),
        Err(RequestError::Read(ReadError::NoPayload))
    );
    // Add without workload_info: a protocol error, not a read error.
    assert_eq!(
        Request::decode(&[0x0a, 0x04, 0x0a, 0x02, b'u', b'1'], 1),
        Err(RequestError::Protocol(ProtocolError::MissingWorkloadInfo))
    );
    // Over the size limit reads as truncated.
    assert_eq!(
        Request::decode(&[0u8; 1025], 0),
        Err(RequestError::Read(ReadError::Truncated))
    );
    // Not protobuf at all.
    assert!(matches!(
        Request::decode(&[0xff], 0),
        Err(RequestError::Read(ReadError::Decode(_)))
    ));
}

#[test]
fn error_texts_match_the_wire() {
    assert_eq!(
        ReadError::Truncated.to_string(),
        "received truncated message"
    );
    assert_eq!(ReadError::TooManyFds(2).to_string(), "Expected 1 FD, got 2");
    assert_eq!(ReadError::NoPayload.to_string(), "no payload");
    assert_eq!(ReadError::MissingFd.to_string(), "No control message");
    assert_eq!(
        ReadError::UnexpectedFd.to_string(),
        "Unexpected control message"
    );
    assert_eq!(
        ProtocolError::KeepAfterSnapshot.to_string(),
        "pod keep received after snapshot"
    );
    assert_eq!(
        ProtocolError::SnapshotAlreadyReceived.to_string(),
        "pod snapshot received already"
    );
    assert_eq!(
        ProtocolError::MissingWorkloadInfo.to_string(),
        "workload_info is required but not present"
    );
}

#[test]
fn oversized_requests_are_refused() {
    let add = Request::Add(Workload::new("u", "n".repeat(1100), "ns", "sa"));
    assert!(add.encoded_len() > meshwire_zds::wire::MAX_MESSAGE_SIZE);
    assert_eq!(
        add.encode(),
        Err(meshwire_zds::wire::EncodeError::TooLarge {
            size: add.encoded_len()
        })
    );
    // Exactly at the limit is fine: 1024 = 1 + 2 (oneof tag, length) + 1 + 2 (uid tag,
    // length) + 1018 bytes of uid.
    let uid = "u".repeat(1018);
    let del = Request::Del { uid };
    assert_eq!(del.encoded_len(), meshwire_zds::wire::MAX_MESSAGE_SIZE);
    assert_eq!(
        del.encode().unwrap().len(),
        meshwire_zds::wire::MAX_MESSAGE_SIZE
    );
    let del = Request::Del {
        uid: "u".repeat(1019),
    };
    assert_eq!(
        del.encode(),
        Err(meshwire_zds::wire::EncodeError::TooLarge { size: 1025 })
    );
}
