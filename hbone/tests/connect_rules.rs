//! Property tests of the sans-IO CONNECT rules: generated values round-trip through
//! their text form, and arbitrary input never panics.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use meshwire_hbone::headers::{Baggage, Forwarded, ForwardedElement, TraceParent};
use meshwire_hbone::{Authority, ConnectRequest};
use proptest::prelude::*;

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    (any::<IpAddr>(), 1u16..).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn dns_name() -> impl Strategy<Value = String> {
    proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", 1..5)
        .prop_map(|labels| labels.join("."))
        .prop_filter("last label must not be numeric", |h| {
            !h.rsplit('.')
                .next()
                .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        })
}

proptest! {
    #[test]
    fn authority_socket_addr_round_trips(addr in socket_addr()) {
        let a = Authority::from_socket_addr(addr).unwrap();
        let text = a.to_string();
        prop_assert_eq!(Authority::parse(&text).unwrap(), a.clone());
        // And it survives the trip through an HTTP authority-form URI.
        let uri: Uri = text.parse().unwrap();
        prop_assert_eq!(Authority::parse(uri.authority().unwrap().as_str()).unwrap(), a);
    }

    #[test]
    fn authority_host_round_trips(host in dns_name(), port in 1u16..) {
        let a = Authority::from_host(&host, port).unwrap();
        let text = a.to_string();
        prop_assert_eq!(Authority::parse(&text).unwrap(), a.clone());
        let uri: Uri = text.parse().unwrap();
        prop_assert_eq!(Authority::parse(uri.authority().unwrap().as_str()).unwrap(), a);
    }

    #[test]
    fn authority_parse_never_panics_and_is_canonical(s in "\\PC{0,300}") {
        if let Ok(a) = Authority::parse(&s) {
            prop_assert_eq!(Authority::parse(&a.to_string()).unwrap(), a);
        }
    }

    #[test]
    fn forwarded_round_trips(addr in socket_addr(), host in proptest::option::of(dns_name())) {
        let mut e = ForwardedElement::for_client(addr);
        if let Some(h) = host {
            e = e.with_host(h);
        }
        let f = Forwarded::new(e);
        let text = f.to_string();
        prop_assert!(HeaderValue::from_str(&text).is_ok());
        let back = Forwarded::parse(&text).unwrap();
        prop_assert_eq!(back.client_addr(), Some(addr));
        prop_assert_eq!(back, f);
    }

    #[test]
    fn forwarded_parse_never_panics_and_is_stable(s in "[ -~]{0,200}") {
        if let Ok(f) = Forwarded::parse(&s) {
            prop_assert_eq!(Forwarded::parse(&f.to_string()).unwrap(), f);
        }
    }

    #[test]
    fn baggage_round_trips(entries in proptest::collection::vec(("[a-z][a-z0-9._-]{0,20}", "\\PC{0,30}"), 0..10)) {
        let mut b = Baggage::new();
        for (k, v) in &entries {
            prop_assert!(b.push(k, v));
        }
        let text = b.to_string();
        prop_assert!(HeaderValue::from_str(&text).is_ok());
        prop_assert_eq!(Baggage::parse(&text).unwrap(), b);
    }

    #[test]
    fn baggage_parse_never_panics_and_is_stable(s in "[ -~]{0,200}") {
        if let Ok(b) = Baggage::parse(&s) {
            prop_assert_eq!(Baggage::parse(&b.to_string()).unwrap(), b);
        }
    }

    #[test]
    fn traceparent_round_trips(t in 1u128.., p in 1u64.., flags in any::<u8>()) {
        let tp = TraceParent::new(t, p, flags).unwrap();
        prop_assert_eq!(TraceParent::parse(&tp.to_string()).unwrap(), tp);
    }

    #[test]
    fn traceparent_parse_never_panics(s in "\\PC{0,80}") {
        if let Ok(t) = TraceParent::parse(&s) {
            prop_assert!(t.trace_id() != 0 && t.parent_id() != 0);
        }
    }

    #[test]
    fn request_from_arbitrary_headers_never_panics(
        authority in "\\PC{0,40}",
        headers in proptest::collection::vec(
            (prop_oneof!["forwarded", "baggage", "traceparent", "x-forwarded-network"],
             proptest::collection::vec(any::<u8>(), 0..100)),
            0..8),
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), v);
            }
        }
        if let Ok(uri) = authority.parse::<Uri>()
            && let Ok(r) = ConnectRequest::from_parts(&Method::CONNECT, &uri, &map)
        {
            // Whatever was accepted can be sent again.
            let http = r.to_http().unwrap();
            prop_assert_eq!(ConnectRequest::from_http(&http).unwrap(), r);
        }
    }
}
