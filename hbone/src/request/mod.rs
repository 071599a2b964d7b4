//! The CONNECT request and its response, without I/O: the target ([`Authority`]), the
//! request and response heads ([`ConnectRequest`], [`ConnectResponse`]), and how refusals
//! map to status codes ([`Rejection`]: 400, 401, 503).
//!
//! The optional metadata headers a request carries are in [`crate::headers`].

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderValue};
use http::{Method, StatusCode, Uri};

use crate::headers::{
    BAGGAGE, Baggage, FORWARDED, Forwarded, MAX_BAGGAGE_LEN, MAX_FORWARDED_LEN, MAX_NETWORK_LEN,
    TRACEPARENT, TraceParent, X_FORWARDED_NETWORK, joined, single,
};

mod authority;

pub use authority::{Authority, AuthorityError, HostPort, MAX_AUTHORITY_LEN};

/// Why a received CONNECT request was refused. Every variant maps to status 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The method is not CONNECT.
    #[error("method {0} is not CONNECT")]
    NotConnect(Method),
    /// The request carries `:scheme`, `:path` or `:protocol` (not classic CONNECT).
    #[error("CONNECT request is not in authority form")]
    NotAuthorityForm,
    /// There is no `:authority`.
    #[error("CONNECT request has no authority")]
    MissingAuthority,
    /// The `:authority` cannot be parsed.
    #[error("invalid authority: {0}")]
    Authority(#[from] AuthorityError),
}

impl RequestError {
    /// The status to answer with: always 400.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
}

/// A refusal decided by the server for a well-formed request, with the status codes HBONE
/// servers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// 400: destination not acceptable (for example the authority IP is not this
    /// endpoint's IP).
    BadRequest,
    /// 401: denied by authorization policy.
    Unauthorized,
    /// 503: the destination is unknown or cannot be reached.
    ServiceUnavailable,
}

impl Rejection {
    /// The HTTP status for this rejection.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The rejection for a status, if it is one of 400, 401 and 503.
    pub fn from_status(status: StatusCode) -> Option<Self> {
        match status {
            StatusCode::BAD_REQUEST => Some(Self::BadRequest),
            StatusCode::UNAUTHORIZED => Some(Self::Unauthorized),
            StatusCode::SERVICE_UNAVAILABLE => Some(Self::ServiceUnavailable),
            _ => None,
        }
    }

    /// A headers-only response with this status (sent with END_STREAM).
    pub fn to_http(self) -> http::Response<()> {
        let mut r = http::Response::new(());
        *r.status_mut() = self.status();
        r
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.status())
    }
}

/// Why a request could not be turned into HTTP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The authority did not form a valid URI (should not happen for a parsed
    /// [`Authority`]).
    #[error("authority does not form a URI: {0}")]
    Uri(#[from] http::uri::InvalidUri),
    /// A header value contains bytes not allowed in HTTP.
    #[error("invalid header value: {0}")]
    HeaderValue(#[from] http::header::InvalidHeaderValue),
}

/// An HBONE CONNECT request: the target and the optional metadata headers.
///
/// Build one with [`ConnectRequest::new`] and the `with_*` methods and turn it into HTTP
/// with [`to_http`](Self::to_http); on the server, [`from_parts`](Self::from_parts)
/// validates what arrived. Optional headers that are malformed or oversize are ignored
/// when parsing (they carry telemetry, not routing), so they never cause a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// The target (`:authority`).
    pub authority: Authority,
    /// `forwarded`: the original client address and, optionally, the service host.
    pub forwarded: Option<Forwarded>,
    /// `baggage`: attributes of the source workload.
    pub baggage: Option<Baggage>,
    /// `traceparent`.
    pub traceparent: Option<TraceParent>,
    /// `x-forwarded-network`: the source network, on the inner CONNECT of double HBONE.
    pub forwarded_network: Option<String>,
}

impl ConnectRequest {
    /// A request for `authority` with no optional headers.
    pub fn new(authority: Authority) -> Self {
        Self {
            authority,
            forwarded: None,
            baggage: None,
            traceparent: None,
            forwarded_network: None,
        }
    }

    /// Sets `forwarded`.
    pub fn with_forwarded(mut self, forwarded: Forwarded) -> Self {
        self.forwarded = Some(forwarded);
        self
    }

    /// Sets `baggage`.
    pub fn with_baggage(mut self, baggage: Baggage) -> Self {
        self.baggage = Some(baggage);
        self
    }

    /// Sets `traceparent`.
    pub fn with_traceparent(mut self, traceparent: TraceParent) -> Self {
        self.traceparent = Some(traceparent);
        self
    }

    /// Sets `x-forwarded-network`.
    pub fn with_forwarded_network(mut self, network: impl Into<String>) -> Self {
        self.forwarded_network = Some(network.into());
        self
    }

    /// The request as HTTP: `CONNECT` with an authority-form URI and the set headers.
    pub fn to_http(&self) -> Result<http::Request<()>, BuildError> {
        let uri: Uri = self.authority.to_string().parse()?;
        let mut req = http::Request::new(());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        if let Some(f) = &self.forwarded {
            h.insert(FORWARDED, HeaderValue::try_from(f.to_string())?);
        }
        if let Some(b) = self.baggage.as_ref().filter(|b| !b.is_empty()) {
            h.insert(BAGGAGE, HeaderValue::try_from(b.to_string())?);
        }
        if let Some(t) = &self.traceparent {
            h.insert(TRACEPARENT, HeaderValue::try_from(t.to_string())?);
        }
        if let Some(n) = &self.forwarded_network {
            h.insert(X_FORWARDED_NETWORK, HeaderValue::try_from(n.as_str())?);
        }
        Ok(req)
    }

    /// Validates a received request head. Method must be CONNECT, the URI must be
    /// authority-form, and the authority must parse. Optional headers are parsed
    /// leniently (see the type docs).
    pub fn from_parts(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Self, RequestError> {
        if method != Method::CONNECT {
            return Err(RequestError::NotConnect(method.clone()));
        }
        if uri.scheme().is_some() || uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(RequestError::NotAuthorityForm);
        }
        let authority = uri.authority().ok_or(RequestError::MissingAuthority)?;
        let authority = Authority::parse(authority.as_str())?;
        Ok(Self {
            authority,
            forwarded: joined(headers, &FORWARDED, MAX_FORWARDED_LEN)
                .and_then(|v| Forwarded::parse(&v).ok()),
            baggage: joined(headers, &BAGGAGE, MAX_BAGGAGE_LEN)
                .and_then(|v| Baggage::parse(&v).ok())
                .filter(|b| !b.is_empty()),
            traceparent: single(headers, &TRACEPARENT).and_then(|v| TraceParent::parse(v).ok()),
            forwarded_network: single(headers, &X_FORWARDED_NETWORK)
                .filter(|v| !v.is_empty() && v.len() <= MAX_NETWORK_LEN)
                .map(str::to_owned),
        })
    }

    /// Validates a received request; see [`from_parts`](Self::from_parts).
    pub fn from_http<B>(req: &http::Request<B>) -> Result<Self, RequestError> {
        Self::from_parts(req.method(), req.uri(), req.headers())
    }

    /// The address rule alone: an IP authority must name `local_ip` (the address the
    /// connection arrived on; IPv4-mapped IPv6 addresses compare equal to their IPv4
    /// form). Host-name authorities always pass. Callers that accept other destinations
    /// (application tunnels, waypoints) skip this.
    ///
    /// Servers want all destination rules at once, including the refusal of the proxy's
    /// own ports: [`server::Admission`](crate::server::Admission).
    pub fn check_destination(&self, local_ip: IpAddr) -> Result<(), Rejection> {
        match &self.authority {
            Authority::Addr(a) if a.ip().to_canonical() != local_ip.to_canonical() => {
                Err(Rejection::BadRequest)
            }
            _ => Ok(()),
        }
    }
}

/// The response to a CONNECT request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectResponse {
    /// The status: 200 for an established tunnel.
    pub status: StatusCode,
    /// `baggage`: attributes of the destination workload (on 200).
    pub baggage: Option<Baggage>,
}

impl ConnectResponse {
    /// A 200 response without baggage.
    pub fn ok() -> Self {
        Self {
            status: StatusCode::OK,
            baggage: None,
        }
    }

    /// Sets `baggage`.
    pub fn with_baggage(mut self, baggage: Baggage) -> Self {
        self.baggage = Some(baggage);
        self
    }

    /// The response as HTTP.
    pub fn to_http(&self) -> Result<http::Response<()>, BuildError> {
        let mut r = http::Response::new(());
        *r.status_mut() = self.status;
        if let Some(b) = self.baggage.as_ref().filter(|b| !b.is_empty()) {
            r.headers_mut()
                .insert(BAGGAGE, HeaderValue::try_from(b.to_string())?);
        }
        Ok(r)
    }

    /// Reads a received response head (baggage parsed leniently).
    pub fn from_parts(status: StatusCode, headers: &HeaderMap) -> Self {
        Self {
            status,
            baggage: joined(headers, &BAGGAGE, MAX_BAGGAGE_LEN)
                .and_then(|v| Baggage::parse(&v).ok())
                .filter(|b| !b.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::{ForwardedElement, WorkloadBaggage, WorkloadKind};

    fn full_request() -> ConnectRequest {
        let wb = WorkloadBaggage {
            namespace: Some("default".into()),
            workload: Some((WorkloadKind::Pod, "sleep".into())),
            ..WorkloadBaggage::default()
        };
        ConnectRequest::new("[fd00::7]:8080".parse().unwrap())
            .with_forwarded(Forwarded::new(
                ForwardedElement::for_client("10.0.0.1:43210".parse().unwrap())
                    .with_host("foo.ns.svc.cluster.local"),
            ))
            .with_baggage(wb.to_baggage())
            .with_traceparent(TraceParent::new(7, 9, 0).unwrap())
            .with_forwarded_network("net-a")
    }

    #[test]
    fn request_round_trip() {
        let r = full_request();
        let http = r.to_http().unwrap();
        assert_eq!(http.method(), Method::CONNECT);
        assert_eq!(http.uri().to_string(), "[fd00::7]:8080");
        assert_eq!(
            http.headers()[&FORWARDED],
            r#"for="10.0.0.1:43210";host=foo.ns.svc.cluster.local"#
        );
        assert_eq!(
            http.headers()[&TRACEPARENT],
            "00-00000000000000000000000000000007-0000000000000009-00"
        );
        assert_eq!(ConnectRequest::from_http(&http).unwrap(), r);
    }

    #[test]
    fn validation() {
        let http = ConnectRequest::new("10.0.0.1:80".parse().unwrap())
            .to_http()
            .unwrap();
        let (mut parts, ()) = http.into_parts();
        parts.method = Method::GET;
        assert!(matches!(
            ConnectRequest::from_parts(&parts.method, &parts.uri, &parts.headers),
            Err(RequestError::NotConnect(_))
        ));
        let uri: Uri = "http://10.0.0.1:80/x".parse().unwrap();
        assert_eq!(
            ConnectRequest::from_parts(&Method::CONNECT, &uri, &parts.headers),
            Err(RequestError::NotAuthorityForm)
        );
        let uri: Uri = "10.0.0.1:0".parse().unwrap();
        let e = ConnectRequest::from_parts(&Method::CONNECT, &uri, &parts.headers).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn lenient_optional_headers() {
        let mut http = ConnectRequest::new("10.0.0.1:80".parse().unwrap())
            .to_http()
            .unwrap();
        let h = http.headers_mut();
        h.insert(FORWARDED, HeaderValue::from_static("for=garbage"));
        h.insert(BAGGAGE, HeaderValue::from_static("a=b"));
        h.append(BAGGAGE, HeaderValue::from_static("c=d"));
        h.insert(TRACEPARENT, HeaderValue::from_static("00-zz"));
        let r = ConnectRequest::from_http(&http).unwrap();
        assert_eq!(r.forwarded, None);
        assert_eq!(r.traceparent, None);
        let b = r.baggage.unwrap();
        assert_eq!((b.get("a"), b.get("c")), (Some("b"), Some("d")));
    }

    #[test]
    fn empty_baggage_reads_as_absent() {
        // Found by fuzzing: a baggage value of separators only used to parse to an
        // empty list, which `to_http` then omitted, breaking the round trip.
        let mut http = ConnectRequest::new("hq:515".parse().unwrap())
            .to_http()
            .unwrap();
        http.headers_mut()
            .insert(BAGGAGE, HeaderValue::from_static(" , "));
        let r = ConnectRequest::from_http(&http).unwrap();
        assert_eq!(r.baggage, None);
        assert_eq!(ConnectRequest::from_http(&r.to_http().unwrap()).unwrap(), r);
    }

    #[test]
    fn destination_check() {
        let r = ConnectRequest::new("10.0.0.1:80".parse().unwrap());
        assert_eq!(r.check_destination("10.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(
            r.check_destination("::ffff:10.0.0.1".parse().unwrap()),
            Ok(())
        );
        assert_eq!(
            r.check_destination("10.0.0.2".parse().unwrap()),
            Err(Rejection::BadRequest)
        );
        let r = ConnectRequest::new("svc.ns:80".parse().unwrap());
        assert_eq!(r.check_destination("10.0.0.2".parse().unwrap()), Ok(()));
    }

    #[test]
    fn statuses() {
        for r in [
            Rejection::BadRequest,
            Rejection::Unauthorized,
            Rejection::ServiceUnavailable,
        ] {
            assert_eq!(Rejection::from_status(r.status()), Some(r));
            assert_eq!(r.to_http().status(), r.status());
        }
        assert_eq!(Rejection::BadRequest.status().as_u16(), 400);
        assert_eq!(Rejection::Unauthorized.status().as_u16(), 401);
        assert_eq!(Rejection::ServiceUnavailable.status().as_u16(), 503);
        assert_eq!(Rejection::from_status(StatusCode::OK), None);
        let resp = ConnectResponse::ok()
            .with_baggage(Baggage::parse("k8s.namespace.name=x").unwrap())
            .to_http()
            .unwrap();
        let back = ConnectResponse::from_parts(resp.status(), resp.headers());
        assert_eq!(back.status, StatusCode::OK);
        assert_eq!(back.baggage.unwrap().get("k8s.namespace.name"), Some("x"));
    }
}
