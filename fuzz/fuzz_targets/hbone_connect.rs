//! HBONE CONNECT request parsing: authority, forwarded, baggage, traceparent, and the
//! whole request head. Nothing may panic; whatever parses must survive a round trip
//! through its text form.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use meshwire_hbone::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use meshwire_hbone::{Authority, ConnectRequest};
use meshwire_hbone::headers::{Baggage, Forwarded, TraceParent};

#[derive(Arbitrary, Debug)]
enum Header {
    Forwarded(Vec<u8>),
    Baggage(Vec<u8>),
    TraceParent(Vec<u8>),
    Network(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    authority: &'a str,
    connect: bool,
    headers: Vec<Header>,
}

fn check_header_values(raw: &[u8]) {
    let Ok(s) = std::str::from_utf8(raw) else {
        return;
    };
    if let Ok(f) = Forwarded::parse(s) {
        assert_eq!(Forwarded::parse(&f.to_string()).as_ref(), Ok(&f));
    }
    if let Ok(b) = Baggage::parse(s) {
        assert_eq!(Baggage::parse(&b.to_string()).as_ref(), Ok(&b));
    }
    if let Ok(t) = TraceParent::parse(s) {
        assert_eq!(TraceParent::parse(&t.to_string()), Ok(t));
    }
}

fuzz_target!(|input: Input<'_>| {
    if let Ok(a) = Authority::parse(input.authority) {
        assert_eq!(Authority::parse(&a.to_string()).as_ref(), Ok(&a));
    }
    let mut headers = HeaderMap::new();
    for h in &input.headers {
        let (name, value) = match h {
            Header::Forwarded(v) => ("forwarded", v),
            Header::Baggage(v) => ("baggage", v),
            Header::TraceParent(v) => ("traceparent", v),
            Header::Network(v) => ("x-forwarded-network", v),
        };
        check_header_values(value);
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(name), v);
        }
    }
    let Ok(uri) = input.authority.parse::<Uri>() else {
        return;
    };
    let method = if input.connect {
        Method::CONNECT
    } else {
        Method::GET
    };
    if let Ok(req) = ConnectRequest::from_parts(&method, &uri, &headers) {
        let http = req.to_http().expect("an accepted request can be encoded");
        assert_eq!(ConnectRequest::from_http(&http).as_ref(), Ok(&req));
    }
});
