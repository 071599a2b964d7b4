//! The destination rules an HBONE server applies to every CONNECT request before it dials
//! anything: the request is a well-formed CONNECT, its target is one of the destination
//! workload's own addresses, and never one of the proxy's own ports.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use super::ConnectionInfo;
use crate::request::{Authority, ConnectRequest, HostPort, Rejection, RequestError};

/// The node proxy's own ports: 15001 (outbound capture), 15006 (inbound plaintext
/// capture) and 15008 (inbound HBONE). A request aimed at one of them would make the proxy
/// connect to itself.
pub const PROXY_PORTS: [u16; 3] = [15001, 15006, 15008];

/// Where an admitted request goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    /// Dial this address: the authority's, with an IPv4-mapped IPv6 address turned into
    /// its IPv4 form.
    Addr(SocketAddr),
    /// A service host name and its port. The caller maps it to a port of the destination
    /// workload (the way the service maps its ports) and checks the result with
    /// [`Admission::check_port`] before dialing.
    Host(HostPort),
}

/// Why a request was not admitted. [`rejection`](Self::rejection) gives the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    /// The request head is not a valid CONNECT (wrong method, not authority form, no or
    /// an invalid authority): 400.
    #[error(transparent)]
    Malformed(#[from] RequestError),
    /// The authority's IP is not one of the destination workload's addresses: 400.
    #[error("authority {0} is not an address of the destination workload")]
    ForeignAddress(IpAddr),
    /// The target port is one of the proxy's own: 503.
    #[error("port {0} is one of the proxy's own ports")]
    ProxyPort(u16),
    /// The authority is a host name, and [`Admission::allow_host_names`] is off: 400.
    #[error("host-name authorities are not accepted")]
    HostName,
}

impl AdmissionError {
    /// The refusal to answer with: 503 for a proxy port, 400 for everything else.
    pub fn rejection(&self) -> Rejection {
        match self {
            Self::ProxyPort(_) => Rejection::ServiceUnavailable,
            Self::Malformed(_) | Self::ForeignAddress(_) | Self::HostName => Rejection::BadRequest,
        }
    }
}

/// The admission rules of an inbound HBONE server, as data.
///
/// A request is admitted when
/// 1. it is a CONNECT in authority form with a valid authority (checked by
///    [`ConnectRequest::from_http`]; the [`Server`](super::Server) already refuses other
///    requests with 400 before its handler runs);
/// 2. an IP authority names one of the destination workload's own addresses
///    ([`local_ips`](Self::local_ips), or the address the connection arrived on);
///    IPv4-mapped IPv6 addresses count as their IPv4 form;
/// 3. a host-name authority is allowed at all ([`allow_host_names`](Self::allow_host_names));
/// 4. the port is not one of [`denied_ports`](Self::denied_ports) (the proxy's own).
///
/// Authorization policy (who may reach the destination) is not part of admission.
///
/// ```
/// use meshwire_hbone::ConnectRequest;
/// use meshwire_hbone::server::{Admission, AdmissionError, ConnectionInfo, Target};
///
/// let info = ConnectionInfo::new("10.0.0.7:15008".parse()?, "10.0.0.9:40000".parse()?);
/// let admission = Admission::default();
///
/// let app = ConnectRequest::new("10.0.0.7:8080".parse()?);
/// assert_eq!(admission.check(&app, &info), Ok(Target::Addr("10.0.0.7:8080".parse()?)));
///
/// let elsewhere = ConnectRequest::new("10.0.0.8:8080".parse()?);
/// assert!(matches!(admission.check(&elsewhere, &info), Err(AdmissionError::ForeignAddress(_))));
///
/// let itself = ConnectRequest::new("10.0.0.7:15008".parse()?);
/// assert_eq!(admission.check(&itself, &info), Err(AdmissionError::ProxyPort(15008)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Admission {
    /// The destination workload's own addresses; an IP authority must name one of them.
    /// Empty (the default) means the address the connection arrived on
    /// ([`ConnectionInfo::local_addr`]) is the only one, which is right for a listener
    /// inside the workload's own network namespace.
    pub local_ips: Vec<IpAddr>,
    /// Ports a request may never target. Default [`PROXY_PORTS`]; add the proxy's other
    /// listeners (admin, metrics, readiness) here.
    pub denied_ports: BTreeSet<u16>,
    /// Whether `host:port` authorities (a service the workload serves, resolved by the
    /// caller) are admitted. Default `true`.
    pub allow_host_names: bool,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            local_ips: Vec::new(),
            denied_ports: PROXY_PORTS.into_iter().collect(),
            allow_host_names: true,
        }
    }
}

impl Admission {
    /// Checks a parsed request that arrived on the connection `info`, and returns where it
    /// goes. Rules 2 to 4 of the type documentation, in that order.
    pub fn check(
        &self,
        request: &ConnectRequest,
        info: &ConnectionInfo,
    ) -> Result<Target, AdmissionError> {
        match &request.authority {
            Authority::Addr(addr) => {
                let ip = addr.ip().to_canonical();
                if !self.is_local(ip, info) {
                    return Err(AdmissionError::ForeignAddress(ip));
                }
                self.check_port(addr.port())?;
                Ok(Target::Addr(SocketAddr::new(ip, addr.port())))
            }
            Authority::Host(host) => {
                if !self.allow_host_names {
                    return Err(AdmissionError::HostName);
                }
                self.check_port(host.port())?;
                Ok(Target::Host(host.clone()))
            }
        }
    }

    /// Parses and checks a received request head: all four rules. For servers built on
    /// another HTTP/2 stack; the [`Server`](super::Server) hands its handler a request
    /// that already passed rule 1, so a handler calls [`check`](Self::check).
    pub fn check_http<B>(
        &self,
        request: &http::Request<B>,
        info: &ConnectionInfo,
    ) -> Result<(ConnectRequest, Target), AdmissionError> {
        let parsed = ConnectRequest::from_http(request)?;
        let target = self.check(&parsed, info)?;
        Ok((parsed, target))
    }

    /// Checks a port that is about to be dialed, such as the workload port a service
    /// host name resolved to.
    pub fn check_port(&self, port: u16) -> Result<(), AdmissionError> {
        if self.denied_ports.contains(&port) {
            return Err(AdmissionError::ProxyPort(port));
        }
        Ok(())
    }

    fn is_local(&self, ip: IpAddr, info: &ConnectionInfo) -> bool {
        if self.local_ips.is_empty() {
            return ip == info.local_addr.ip().to_canonical();
        }
        self.local_ips.iter().any(|own| own.to_canonical() == ip)
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Uri};

    use super::*;

    fn info(local: &str) -> ConnectionInfo {
        ConnectionInfo::new(local.parse().unwrap(), "10.9.9.9:40000".parse().unwrap())
    }

    fn request(authority: &str) -> ConnectRequest {
        ConnectRequest::new(authority.parse().unwrap())
    }

    fn addr(s: &str) -> Target {
        Target::Addr(s.parse().unwrap())
    }

    #[test]
    fn defaults() {
        let a = Admission::default();
        assert!(a.local_ips.is_empty());
        assert_eq!(
            a.denied_ports.iter().copied().collect::<Vec<_>>(),
            [15001, 15006, 15008]
        );
        assert!(a.allow_host_names);
    }

    #[test]
    fn authority_must_be_the_arrival_address_by_default() {
        let a = Admission::default();
        let on = info("10.0.0.7:15008");
        assert_eq!(
            a.check(&request("10.0.0.7:8080"), &on),
            Ok(addr("10.0.0.7:8080"))
        );
        let err = a.check(&request("10.0.0.8:8080"), &on).unwrap_err();
        assert_eq!(
            err,
            AdmissionError::ForeignAddress("10.0.0.8".parse().unwrap())
        );
        assert_eq!(err.rejection(), Rejection::BadRequest);
    }

    #[test]
    fn ipv4_mapped_addresses_compare_as_ipv4() {
        let a = Admission::default();
        // Connection arrived on a dual-stack listener: the local address is mapped.
        let mapped = info("[::ffff:10.0.0.7]:15008");
        assert_eq!(
            a.check(&request("10.0.0.7:80"), &mapped),
            Ok(addr("10.0.0.7:80"))
        );
        // The authority is mapped: the target is dialed in IPv4 form.
        assert_eq!(
            a.check(&request("[::ffff:10.0.0.7]:80"), &info("10.0.0.7:15008")),
            Ok(addr("10.0.0.7:80"))
        );
        let v6 = info("[fd00::7]:15008");
        assert_eq!(
            a.check(&request("[fd00::7]:80"), &v6),
            Ok(addr("[fd00::7]:80"))
        );
        assert!(a.check(&request("[fd00::8]:80"), &v6).is_err());
    }

    #[test]
    fn any_of_the_workload_addresses() {
        let a = Admission {
            local_ips: vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()],
            ..Admission::default()
        };
        // The connection arrived on a shared listener: its address does not matter.
        let shared = info("192.0.2.1:15008");
        assert_eq!(
            a.check(&request("[fd00::7]:80"), &shared),
            Ok(addr("[fd00::7]:80"))
        );
        assert_eq!(
            a.check(&request("10.0.0.7:80"), &shared),
            Ok(addr("10.0.0.7:80"))
        );
        assert!(matches!(
            a.check(&request("192.0.2.1:80"), &shared),
            Err(AdmissionError::ForeignAddress(_))
        ));
    }

    #[test]
    fn proxy_ports_are_refused_with_503() {
        let a = Admission::default();
        let on = info("10.0.0.7:15008");
        for port in PROXY_PORTS {
            let err = a
                .check(&request(&format!("10.0.0.7:{port}")), &on)
                .unwrap_err();
            assert_eq!(err, AdmissionError::ProxyPort(port));
            assert_eq!(err.rejection(), Rejection::ServiceUnavailable);
        }
        for port in [15000, 15007, 15009, 15020, 15021] {
            assert!(a.check(&request(&format!("10.0.0.7:{port}")), &on).is_ok());
        }
        // The address rule comes first.
        assert!(matches!(
            a.check(&request("10.0.0.8:15008"), &on),
            Err(AdmissionError::ForeignAddress(_))
        ));
    }

    #[test]
    fn denied_ports_are_configurable() {
        let mut a = Admission::default();
        a.denied_ports.extend([15000, 15020, 15021]);
        let on = info("10.0.0.7:15008");
        assert_eq!(
            a.check(&request("10.0.0.7:15021"), &on),
            Err(AdmissionError::ProxyPort(15021))
        );
        assert_eq!(a.check_port(15020), Err(AdmissionError::ProxyPort(15020)));
        assert_eq!(a.check_port(8080), Ok(()));
    }

    #[test]
    fn host_names_are_returned_for_the_caller_to_resolve() {
        let mut a = Admission::default();
        let on = info("10.0.0.7:15008");
        let host = request("web.shop.svc.cluster.local:80");
        let Ok(Target::Host(h)) = a.check(&host, &on) else {
            panic!("host name not admitted");
        };
        assert_eq!((h.host(), h.port()), ("web.shop.svc.cluster.local", 80));
        assert_eq!(
            a.check(&request("web.shop.svc.cluster.local:15006"), &on),
            Err(AdmissionError::ProxyPort(15006))
        );
        a.allow_host_names = false;
        let err = a.check(&host, &on).unwrap_err();
        assert_eq!(err, AdmissionError::HostName);
        assert_eq!(err.rejection(), Rejection::BadRequest);
    }

    #[test]
    fn request_heads_must_be_connect_in_authority_form() {
        let a = Admission::default();
        let on = info("10.0.0.7:15008");
        let good = request("10.0.0.7:80").to_http().unwrap();
        let (parsed, target) = a.check_http(&good, &on).unwrap();
        assert_eq!(parsed, request("10.0.0.7:80"));
        assert_eq!(target, addr("10.0.0.7:80"));

        let mut get = good.clone();
        *get.method_mut() = Method::GET;
        let err = a.check_http(&get, &on).unwrap_err();
        assert!(matches!(
            err,
            AdmissionError::Malformed(RequestError::NotConnect(_))
        ));
        assert_eq!(err.rejection(), Rejection::BadRequest);

        let mut path = good.clone();
        *path.uri_mut() = Uri::from_static("http://10.0.0.7:80/x");
        assert!(matches!(
            a.check_http(&path, &on),
            Err(AdmissionError::Malformed(RequestError::NotAuthorityForm))
        ));

        let mut port0 = good;
        *port0.uri_mut() = Uri::from_static("10.0.0.7:0");
        assert!(matches!(
            a.check_http(&port0, &on),
            Err(AdmissionError::Malformed(RequestError::Authority(_)))
        ));

        // Well-formed, but aimed elsewhere.
        let foreign = request("10.0.0.8:80").to_http().unwrap();
        assert!(matches!(
            a.check_http(&foreign, &on),
            Err(AdmissionError::ForeignAddress(_))
        ));
    }
}
