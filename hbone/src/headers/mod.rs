//! The metadata headers of HBONE CONNECT requests and responses, without I/O:
//! `forwarded` (RFC 7239, the original client address and service host), `baggage` (W3C,
//! attributes of the source or destination workload) and `traceparent` (W3C trace
//! context). Every parser has a size limit and never panics.

use http::header::{HeaderMap, HeaderName};

mod baggage;
mod forwarded;
mod traceparent;

pub use baggage::{
    BAGGAGE_CLUSTER, BAGGAGE_NAMESPACE, BAGGAGE_REGION, BAGGAGE_SERVICE_NAME,
    BAGGAGE_SERVICE_VERSION, BAGGAGE_ZONE, Baggage, BaggageError, BaggageMember, MAX_BAGGAGE_LEN,
    MAX_BAGGAGE_MEMBERS, WorkloadBaggage, WorkloadKind,
};
pub use forwarded::{
    Forwarded, ForwardedElement, ForwardedError, MAX_FORWARDED_ELEMENTS, MAX_FORWARDED_LEN, Node,
    NodeName, NodePort,
};
pub use traceparent::{MAX_TRACEPARENT_LEN, TraceParent, TraceParentError};

/// `baggage` header name.
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
/// `forwarded` header name.
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// `traceparent` header name.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `x-forwarded-network` header name (inner CONNECT of a double-HBONE hop).
pub const X_FORWARDED_NETWORK: HeaderName = HeaderName::from_static("x-forwarded-network");

/// Longest `x-forwarded-network` value accepted.
pub const MAX_NETWORK_LEN: usize = 253;

/// All values of a header joined with `,` (list syntax), if all are visible ASCII and the
/// total fits `limit`.
pub(crate) fn joined(headers: &HeaderMap, name: &HeaderName, limit: usize) -> Option<String> {
    let mut out = String::new();
    for v in headers.get_all(name) {
        let s = v.to_str().ok()?;
        if !out.is_empty() {
            out.push(',');
        }
        if out.len() + s.len() > limit {
            return None;
        }
        out.push_str(s);
    }
    (!out.is_empty()).then_some(out)
}

/// The header's value when it occurs exactly once and is visible ASCII.
pub(crate) fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let mut it = headers.get_all(name).iter();
    let v = it.next()?;
    if it.next().is_some() {
        return None;
    }
    v.to_str().ok()
}

/// RFC 7230 `tchar`.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}
