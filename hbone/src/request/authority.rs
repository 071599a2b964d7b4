//! The `:authority` of an HBONE CONNECT request: `ip:port`, `[v6]:port` or `host:port`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// Longest `:authority` accepted: a 253-byte host name, `:` and a 5-digit port, plus
/// room for IPv6 brackets.
pub const MAX_AUTHORITY_LEN: usize = 261;

/// Longest host name accepted in a `host:port` authority (RFC 1035 limit).
const MAX_HOST_LEN: usize = 253;
/// Longest single DNS label.
const MAX_LABEL_LEN: usize = 63;

/// Why an authority string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The authority was empty.
    #[error("empty authority")]
    Empty,
    /// The authority is longer than [`MAX_AUTHORITY_LEN`].
    #[error("authority is {0} bytes long, more than {MAX_AUTHORITY_LEN}")]
    TooLong(usize),
    /// There is no `:port` suffix.
    #[error("authority has no port")]
    MissingPort,
    /// The port is not a decimal number in `1..=65535`.
    #[error("invalid port in authority")]
    InvalidPort,
    /// The host part is neither an IP address nor a valid DNS name.
    #[error("invalid host in authority")]
    InvalidHost,
}

/// The target of a CONNECT request.
///
/// Parsing accepts `ip:port`, `[ipv6]:port` and `hostname:port` (hostnames are
/// lower-cased). Port 0 is refused. `Display` produces the canonical text form, with
/// brackets around IPv6 addresses; parsing that text gives the same value back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Authority {
    /// A socket address: `10.0.0.1:8080` or `[fd00::1]:8080`.
    Addr(SocketAddr),
    /// A DNS name and a port: `reviews.default.svc.cluster.local:9080`.
    Host(HostPort),
}

/// A validated DNS host name with a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    /// Validates `host` (a DNS name, lower-cased on the way in) and pairs it with `port`.
    pub fn new(host: &str, port: u16) -> Result<Self, AuthorityError> {
        if port == 0 {
            return Err(AuthorityError::InvalidPort);
        }
        if !is_dns_name(host) {
            return Err(AuthorityError::InvalidHost);
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The host name, lower-case.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Authority {
    /// Parses an authority; see the type docs for the accepted forms.
    pub fn parse(s: &str) -> Result<Self, AuthorityError> {
        if s.is_empty() {
            return Err(AuthorityError::Empty);
        }
        if s.len() > MAX_AUTHORITY_LEN {
            return Err(AuthorityError::TooLong(s.len()));
        }
        let (host, port) = s.rsplit_once(':').ok_or(AuthorityError::MissingPort)?;
        let port = parse_port(port)?;
        if let Some(inner) = host.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(AuthorityError::InvalidHost)?;
            let ip: std::net::Ipv6Addr = inner.parse().map_err(|_| AuthorityError::InvalidHost)?;
            return Ok(Self::Addr(SocketAddr::new(IpAddr::V6(ip), port)));
        }
        if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            return Ok(Self::Addr(SocketAddr::new(IpAddr::V4(ip), port)));
        }
        if host.contains(':') {
            // An IPv6 address without brackets is ambiguous with the port separator.
            return Err(AuthorityError::InvalidHost);
        }
        Ok(Self::Host(HostPort::new(host, port)?))
    }

    /// Builds a socket-address authority. Fails for port 0.
    pub fn from_socket_addr(addr: SocketAddr) -> Result<Self, AuthorityError> {
        if addr.port() == 0 {
            return Err(AuthorityError::InvalidPort);
        }
        Ok(Self::Addr(canonical_socket_addr(addr)))
    }

    /// Builds a `host:port` authority.
    pub fn from_host(host: &str, port: u16) -> Result<Self, AuthorityError> {
        Ok(Self::Host(HostPort::new(host, port)?))
    }

    /// The port of either form.
    pub fn port(&self) -> u16 {
        match self {
            Self::Addr(a) => a.port(),
            Self::Host(h) => h.port,
        }
    }

    /// The socket address, for the `ip:port` forms.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Addr(a) => Some(*a),
            Self::Host(_) => None,
        }
    }

    /// The host name, for the `host:port` form.
    pub fn host(&self) -> Option<&str> {
        match self {
            Self::Addr(_) => None,
            Self::Host(h) => Some(&h.host),
        }
    }
}

/// Removes flow info and scope id from IPv6 socket addresses so that `Display` and
/// parsing round-trip.
fn canonical_socket_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip(), addr.port())
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "{}", canonical_socket_addr(*a)),
            Self::Host(h) => h.fmt(f),
        }
    }
}

impl FromStr for Authority {
    type Err = AuthorityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<HostPort> for Authority {
    fn from(h: HostPort) -> Self {
        Self::Host(h)
    }
}

fn parse_port(p: &str) -> Result<u16, AuthorityError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthorityError::InvalidPort);
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(AuthorityError::InvalidPort),
        Ok(port) => Ok(port),
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and hyphens (underscore
/// tolerated), no label starting or ending with a hyphen, an optional trailing dot,
/// and a last label that is not all digits (so a malformed IPv4 address is not taken
/// for a name).
pub(crate) fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return false;
    }
    let mut last_all_digits = false;
    for label in host.split('.') {
        let bytes = label.as_bytes();
        let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
            return false;
        };
        if bytes.len() > MAX_LABEL_LEN || *first == b'-' || *last == b'-' {
            return false;
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return false;
        }
        last_all_digits = bytes.iter().all(u8::is_ascii_digit);
    }
    !last_all_digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let a = Authority::parse("10.0.0.1:8080").unwrap();
        assert_eq!(a.socket_addr(), Some("10.0.0.1:8080".parse().unwrap()));
        assert_eq!(a.to_string(), "10.0.0.1:8080");

        let a = Authority::parse("[fd00::1]:443").unwrap();
        assert_eq!(a.socket_addr(), Some("[fd00::1]:443".parse().unwrap()));
        assert_eq!(a.to_string(), "[fd00::1]:443");

        let a = Authority::parse("Reviews.Default.svc.cluster.local:9080").unwrap();
        assert_eq!(a.host(), Some("reviews.default.svc.cluster.local"));
        assert_eq!(a.port(), 9080);
        assert_eq!(a.to_string(), "reviews.default.svc.cluster.local:9080");

        assert!(Authority::parse("localhost:1").is_ok());
        assert!(Authority::parse("a.b.c.:65535").is_ok());
    }

    #[test]
    fn refused_forms() {
        use AuthorityError::*;
        let cases: &[(&str, AuthorityError)] = &[
            ("", Empty),
            ("10.0.0.1", MissingPort),
            ("10.0.0.1:", InvalidPort),
            ("10.0.0.1:0", InvalidPort),
            ("10.0.0.1:65536", InvalidPort),
            ("10.0.0.1:+80", InvalidPort),
            ("10.0.0.1:000080", InvalidPort),
            ("fd00::1:80", InvalidHost),
            ("[fd00::1:80", InvalidHost),
            ("[10.0.0.1]:80", InvalidHost),
            ("[zz::1]:80", InvalidHost),
            ("1.2.3.999:80", InvalidHost),
            ("-bad.example:80", InvalidHost),
            ("bad-.example:80", InvalidHost),
            ("a..b:80", InvalidHost),
            (":80", InvalidHost),
            ("user@host:80", InvalidHost),
            ("host/path:80", InvalidHost),
            ("host name:80", InvalidHost),
        ];
        for (input, want) in cases {
            assert_eq!(Authority::parse(input).as_ref(), Err(want), "{input:?}");
        }
        let long = format!("{}.com:80", "a".repeat(300));
        assert!(matches!(Authority::parse(&long), Err(TooLong(_))));
        let label = format!("{}.com:80", "a".repeat(64));
        assert_eq!(Authority::parse(&label), Err(InvalidHost));
    }

    #[test]
    fn constructors() {
        assert_eq!(
            Authority::from_socket_addr("1.2.3.4:0".parse().unwrap()),
            Err(AuthorityError::InvalidPort)
        );
        assert_eq!(
            Authority::from_host("a.b", 5).unwrap().to_string(),
            "a.b:5".to_string()
        );
        assert!(Authority::from_host("a b", 5).is_err());
    }
}
