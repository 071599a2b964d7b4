//! Decodes arbitrary datagrams as every ZDS message type, with an arbitrary number of
//! attached descriptors. Nothing may panic, and whatever decodes must re-encode into
//! something that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwire_zds::wire::{Hello, Request, Response};

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else {
        return;
    };
    let fds = usize::from(first % 4);

    if let Ok(request) = Request::decode(bytes, fds) {
        assert_eq!(request.carries_fd(), fds == 1);
        let again = request
            .encode()
            .expect("a decoded request is never longer than its datagram");
        assert!(again.len() <= bytes.len());
        assert_eq!(Request::decode(&again, fds).as_ref(), Ok(&request));
    }
    if let Ok(response) = Response::decode(bytes, fds) {
        assert_eq!(fds, 0);
        let again = response.encode();
        assert!(again.len() <= meshwire_zds::wire::MAX_MESSAGE_SIZE);
        assert_eq!(Response::decode(&again, 0).as_ref(), Ok(&response));
    }
    if let Ok(hello) = Hello::decode(bytes, fds) {
        assert_eq!(Hello::decode(&hello.encode(), 0), Ok(hello));
    }
    // The generated types on their own.
    use prost::Message;
    let _ = meshwire_zds::wire::pb::WorkloadRequest::decode(bytes);
    let _ = meshwire_zds::wire::pb::WorkloadResponse::decode(bytes);
    let _ = meshwire_zds::wire::pb::ZdsHello::decode(bytes);
});
