//! The `forwarded` header (RFC 7239) as HBONE uses it: `for="<client ip:port>"`, plus
//! `;host=<service hostname>` when the connection was addressed to a service.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use super::is_tchar;

/// Longest `forwarded` value accepted (all header lines joined).
pub const MAX_FORWARDED_LEN: usize = 4096;
/// Most forwarded-elements accepted in one request.
pub const MAX_FORWARDED_ELEMENTS: usize = 32;

/// Why a `forwarded` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardedError {
    /// The value is longer than [`MAX_FORWARDED_LEN`].
    #[error("forwarded header is {0} bytes long, more than {MAX_FORWARDED_LEN}")]
    TooLong(usize),
    /// More than [`MAX_FORWARDED_ELEMENTS`] elements.
    #[error("forwarded header has more than {MAX_FORWARDED_ELEMENTS} elements")]
    TooManyElements,
    /// The value is not valid per the RFC 7239 grammar.
    #[error("malformed forwarded header: {0}")]
    Syntax(&'static str),
    /// A parameter occurs twice in one element.
    #[error("parameter {0:?} repeated in one forwarded element")]
    DuplicateParameter(String),
    /// A `for`/`by` node is not an IP, `unknown` or an obfuscated identifier.
    #[error("invalid node in forwarded header")]
    InvalidNode,
}

/// The name part of a `for`/`by` node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NodeName {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// The literal `unknown`.
    Unknown,
    /// An obfuscated identifier such as `_hidden` (leading underscore included).
    Obfuscated(String),
}

/// The port part of a `for`/`by` node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NodePort {
    /// A numeric port.
    Port(u16),
    /// An obfuscated port such as `_p1` (leading underscore included).
    Obfuscated(String),
}

/// A `for` or `by` node: a name and an optional port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    /// The node name.
    pub name: NodeName,
    /// The node port, if any.
    pub port: Option<NodePort>,
}

impl Node {
    /// A node for a socket address (`ip:port`).
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        Self {
            name: NodeName::Ip(addr.ip()),
            port: Some(NodePort::Port(addr.port())),
        }
    }

    /// The socket address, when the node is an IP with a numeric port.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match (&self.name, &self.port) {
            (NodeName::Ip(ip), Some(NodePort::Port(p))) => Some(SocketAddr::new(*ip, *p)),
            _ => None,
        }
    }

    /// The IP address, when the node name is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.name {
            NodeName::Ip(ip) => Some(ip),
            _ => None,
        }
    }

    fn parse(s: &str) -> Result<Self, ForwardedError> {
        let (name, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest.split_once(']').ok_or(ForwardedError::InvalidNode)?;
            let ip: std::net::Ipv6Addr = v6.parse().map_err(|_| ForwardedError::InvalidNode)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(ForwardedError::InvalidNode)?),
            };
            (NodeName::Ip(IpAddr::V6(ip)), port)
        } else {
            let (name, port) = match s.split_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (s, None),
            };
            let name = if name.eq_ignore_ascii_case("unknown") {
                NodeName::Unknown
            } else if is_obfuscated(name) {
                NodeName::Obfuscated(name.to_owned())
            } else {
                let ip: std::net::Ipv4Addr =
                    name.parse().map_err(|_| ForwardedError::InvalidNode)?;
                NodeName::Ip(IpAddr::V4(ip))
            };
            (name, port)
        };
        let port = match port {
            None => None,
            Some(p) if is_obfuscated(p) => Some(NodePort::Obfuscated(p.to_owned())),
            Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(NodePort::Port(
                    p.parse().map_err(|_| ForwardedError::InvalidNode)?,
                ))
            }
            Some(_) => return Err(ForwardedError::InvalidNode),
        };
        Ok(Self { name, port })
    }
}

fn is_obfuscated(s: &str) -> bool {
    s.len() > 1
        && s.starts_with('_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            NodeName::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            NodeName::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            NodeName::Unknown => f.write_str("unknown")?,
            NodeName::Obfuscated(s) => f.write_str(s)?,
        }
        match &self.port {
            None => Ok(()),
            Some(NodePort::Port(p)) => write!(f, ":{p}"),
            Some(NodePort::Obfuscated(p)) => write!(f, ":{p}"),
        }
    }
}

/// One forwarded-element: the parameters of one hop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwardedElement {
    /// `for=`: the client of this hop.
    pub for_node: Option<Node>,
    /// `by=`: the interface that received the request.
    pub by: Option<Node>,
    /// `host=`: the host the client addressed (for HBONE, the service hostname).
    pub host: Option<String>,
    /// `proto=`: the protocol the client used.
    pub proto: Option<String>,
    /// Extension parameters, in order (names lower-cased).
    pub extensions: Vec<(String, String)>,
}

impl ForwardedElement {
    /// `for="<addr>"`, the element HBONE clients send.
    pub fn for_client(addr: SocketAddr) -> Self {
        Self {
            for_node: Some(Node::from_socket_addr(addr)),
            ..Self::default()
        }
    }

    /// Adds `host=<host>`.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
}

impl fmt::Display for ForwardedElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        let mut pair = |f: &mut fmt::Formatter<'_>, name: &str, value: &str, always_quote| {
            f.write_str(sep)?;
            sep = ";";
            f.write_str(name)?;
            f.write_char('=')?;
            write_value(f, value, always_quote)
        };
        if let Some(n) = &self.for_node {
            pair(f, "for", &n.to_string(), true)?;
        }
        if let Some(n) = &self.by {
            pair(f, "by", &n.to_string(), true)?;
        }
        if let Some(h) = &self.host {
            pair(f, "host", h, false)?;
        }
        if let Some(p) = &self.proto {
            pair(f, "proto", p, false)?;
        }
        for (k, v) in &self.extensions {
            pair(f, k, v, false)?;
        }
        Ok(())
    }
}

/// Writes a value as a token when possible, else as a quoted-string.
fn write_value(f: &mut fmt::Formatter<'_>, v: &str, always_quote: bool) -> fmt::Result {
    if !always_quote && !v.is_empty() && v.bytes().all(is_tchar) {
        return f.write_str(v);
    }
    f.write_char('"')?;
    for c in v.chars() {
        if c == '"' || c == '\\' {
            f.write_char('\\')?;
        }
        f.write_char(c)?;
    }
    f.write_char('"')
}

/// A parsed `forwarded` header: one element per hop, first hop first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// The elements, in header order.
    pub elements: Vec<ForwardedElement>,
}

impl Forwarded {
    /// A header with one element.
    pub fn new(element: ForwardedElement) -> Self {
        Self {
            elements: vec![element],
        }
    }

    /// The first `for=` socket address, which HBONE treats as the original client.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.elements
            .iter()
            .find_map(|e| e.for_node.as_ref())
            .and_then(Node::socket_addr)
    }

    /// The first `host=` value.
    pub fn host(&self) -> Option<&str> {
        self.elements.iter().find_map(|e| e.host.as_deref())
    }

    /// Parses a header value (several header lines may be joined with `,`).
    pub fn parse(s: &str) -> Result<Self, ForwardedError> {
        if s.len() > MAX_FORWARDED_LEN {
            return Err(ForwardedError::TooLong(s.len()));
        }
        let mut p = Parser {
            s: s.as_bytes(),
            pos: 0,
        };
        let mut elements = Vec::new();
        loop {
            p.skip_ows();
            // Empty list elements (",,") are allowed by the list grammar.
            if p.eat(b',') {
                continue;
            }
            if p.at_end() {
                break;
            }
            if elements.len() == MAX_FORWARDED_ELEMENTS {
                return Err(ForwardedError::TooManyElements);
            }
            elements.push(p.element()?);
            p.skip_ows();
            if p.at_end() {
                break;
            }
            if !p.eat(b',') {
                return Err(ForwardedError::Syntax("expected ','"));
            }
        }
        if elements.is_empty() {
            return Err(ForwardedError::Syntax("no elements"));
        }
        Ok(Self { elements })
    }
}

impl fmt::Display for Forwarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.elements.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            e.fmt(f)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Forwarded {
    type Err = ForwardedError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn token(&mut self) -> &str {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        // tchars are ASCII, so this slice is valid UTF-8.
        std::str::from_utf8(self.s.get(start..self.pos).unwrap_or_default()).unwrap_or_default()
    }

    fn quoted(&mut self) -> Result<String, ForwardedError> {
        // Opening quote already consumed.
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(ForwardedError::Syntax("unterminated quoted-string")),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c) if is_qdtext(c) || c == b'"' || c == b'\\' => {
                            out.push(c);
                            self.pos += 1;
                        }
                        _ => return Err(ForwardedError::Syntax("bad quoted-pair")),
                    }
                }
                Some(c) if is_qdtext(c) => {
                    out.push(c);
                    self.pos += 1;
                }
                Some(_) => return Err(ForwardedError::Syntax("bad character in quoted-string")),
            }
        }
        String::from_utf8(out).map_err(|_| ForwardedError::Syntax("quoted-string is not UTF-8"))
    }

    fn value(&mut self) -> Result<String, ForwardedError> {
        if self.eat(b'"') {
            self.quoted()
        } else {
            let t = self.token();
            if t.is_empty() {
                return Err(ForwardedError::Syntax("empty value"));
            }
            Ok(t.to_owned())
        }
    }

    fn element(&mut self) -> Result<ForwardedElement, ForwardedError> {
        let mut e = ForwardedElement::default();
        let mut any = false;
        loop {
            self.skip_ows();
            if matches!(self.peek(), None | Some(b',')) {
                break;
            }
            if self.eat(b';') {
                continue;
            }
            let name = self.token().to_ascii_lowercase();
            if name.is_empty() {
                return Err(ForwardedError::Syntax("expected parameter name"));
            }
            if !self.eat(b'=') {
                return Err(ForwardedError::Syntax("expected '='"));
            }
            let value = self.value()?;
            any = true;
            let dup = match name.as_str() {
                "for" => e.for_node.replace(Node::parse(&value)?).is_some(),
                "by" => e.by.replace(Node::parse(&value)?).is_some(),
                "host" => e.host.replace(value).is_some(),
                "proto" => e.proto.replace(value).is_some(),
                _ => {
                    let dup = e.extensions.iter().any(|(k, _)| *k == name);
                    if !dup {
                        e.extensions.push((name.clone(), value));
                    }
                    dup
                }
            };
            if dup {
                return Err(ForwardedError::DuplicateParameter(name));
            }
            self.skip_ows();
            match self.peek() {
                None | Some(b',') => break,
                Some(b';') => {}
                Some(_) => return Err(ForwardedError::Syntax("expected ';' or ','")),
            }
        }
        if !any {
            return Err(ForwardedError::Syntax("empty element"));
        }
        Ok(e)
    }
}

/// RFC 7230 `qdtext` (obs-text excluded: values must be visible ASCII).
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hbone_forms() {
        let f = Forwarded::new(
            ForwardedElement::for_client("10.0.0.1:43210".parse().unwrap())
                .with_host("foo.ns.svc.cluster.local"),
        );
        assert_eq!(
            f.to_string(),
            r#"for="10.0.0.1:43210";host=foo.ns.svc.cluster.local"#
        );
        let back = Forwarded::parse(&f.to_string()).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.client_addr(), Some("10.0.0.1:43210".parse().unwrap()));
        assert_eq!(back.host(), Some("foo.ns.svc.cluster.local"));

        let f = Forwarded::new(ForwardedElement::for_client("[::1]:80".parse().unwrap()));
        assert_eq!(f.to_string(), r#"for="[::1]:80""#);
        assert_eq!(
            Forwarded::parse(r#"for="[::1]:80""#).unwrap().client_addr(),
            Some("[::1]:80".parse().unwrap())
        );
    }

    #[test]
    fn rfc7239_examples() {
        let f = Forwarded::parse(r#"for="_gazonk""#).unwrap();
        assert_eq!(
            f.elements[0].for_node.as_ref().unwrap().name,
            NodeName::Obfuscated("_gazonk".into())
        );
        let f = Forwarded::parse(r#"For="[2001:db8:cafe::17]:4711""#).unwrap();
        assert_eq!(
            f.client_addr(),
            Some("[2001:db8:cafe::17]:4711".parse().unwrap())
        );
        let f = Forwarded::parse("for=192.0.2.60;proto=http;by=203.0.113.43").unwrap();
        assert_eq!(f.elements[0].proto.as_deref(), Some("http"));
        assert_eq!(
            f.elements[0].by.as_ref().unwrap().ip(),
            Some("203.0.113.43".parse().unwrap())
        );
        assert_eq!(f.client_addr(), None, "no port, so no socket address");
        let f = Forwarded::parse("for=192.0.2.43, for=198.51.100.17").unwrap();
        assert_eq!(f.elements.len(), 2);
        let f = Forwarded::parse("for=unknown;ext=\"a \\\"b\\\"\"").unwrap();
        assert_eq!(
            f.elements[0].for_node.as_ref().unwrap().name,
            NodeName::Unknown
        );
        assert_eq!(
            f.elements[0].extensions,
            vec![("ext".into(), "a \"b\"".into())]
        );
        assert_eq!(Forwarded::parse(&f.to_string()).unwrap(), f);
    }

    #[test]
    fn refused() {
        for bad in [
            "",
            " , ",
            "for",
            "for=",
            "for=\"1.2.3.4",
            "for=1.2.3.4;for=5.6.7.8",
            "for=[::1]:80",
            "for=\"[::1\"",
            "for=\"1.2.3.4:99999\"",
            "for=\"not-an-ip\"",
            "for=1.2.3.4 junk",
            "for=\"\u{e9}\"",
        ] {
            assert!(Forwarded::parse(bad).is_err(), "{bad:?} accepted");
        }
        let many = vec!["for=1.2.3.4"; MAX_FORWARDED_ELEMENTS + 1].join(",");
        assert_eq!(
            Forwarded::parse(&many),
            Err(ForwardedError::TooManyElements)
        );
        let long = format!("for=\"_{}\"", "a".repeat(MAX_FORWARDED_LEN));
        assert!(matches!(
            Forwarded::parse(&long),
            Err(ForwardedError::TooLong(_))
        ));
    }
}
