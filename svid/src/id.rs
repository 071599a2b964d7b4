//! SPIFFE IDs and trust domains, parsed strictly by the rules of the SPIFFE ID standard.

use std::fmt;
use std::str::FromStr;

/// The URI scheme prefix of every SPIFFE ID.
const SCHEME_PREFIX: &str = "spiffe://";

/// Longest SPIFFE ID (the whole URI) accepted, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Longest trust domain name accepted, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a valid SPIFFE ID or trust domain.
///
/// Each variant names the rule of the SPIFFE ID standard that the input broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The input is empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The input does not start with the `spiffe://` scheme and authority marker.
    #[error("SPIFFE ID must start with \"spiffe://\" (lowercase scheme followed by an authority)")]
    WrongScheme,
    /// The whole URI is longer than [`MAX_SPIFFE_ID_LEN`] bytes.
    #[error("SPIFFE ID is {0} bytes long, more than the maximum of 2048")]
    TooLong(usize),
    /// The trust domain (URI authority) is empty.
    #[error("SPIFFE ID trust domain is empty")]
    MissingTrustDomain,
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`] bytes.
    #[error("trust domain is {0} bytes long, more than the maximum of 255")]
    TrustDomainTooLong(usize),
    /// The trust domain contains an upper-case letter (trust domains are lowercase).
    #[error("trust domain must be lowercase, found {ch:?} at byte {pos}")]
    TrustDomainUppercase {
        /// The offending character.
        ch: char,
        /// Byte offset inside the trust domain.
        pos: usize,
    },
    /// The trust domain contains a character outside `[a-z0-9.-_]`.
    #[error("trust domain may only contain a-z, 0-9, '.', '-' and '_', found {ch:?} at byte {pos}")]
    TrustDomainChar {
        /// The offending character.
        ch: char,
        /// Byte offset inside the trust domain.
        pos: usize,
    },
    /// The authority carries user information (`user@host`).
    #[error("SPIFFE ID must not contain user info ('@' in the authority)")]
    UserInfo,
    /// The authority carries a port (`host:port`).
    #[error("SPIFFE ID must not contain a port (':' in the authority)")]
    Port,
    /// The URI has a query component (`?`).
    #[error("SPIFFE ID must not contain a query ('?')")]
    Query,
    /// The URI has a fragment component (`#`).
    #[error("SPIFFE ID must not contain a fragment ('#')")]
    Fragment,
    /// The path contains an empty segment (`//` or a trailing `/`).
    #[error("SPIFFE ID path must not contain empty segments ('//' or a trailing '/')")]
    EmptySegment,
    /// The path contains a `.` or `..` segment.
    #[error("SPIFFE ID path must not contain '.' or '..' segments")]
    DotSegment,
    /// The path contains a character outside `[a-zA-Z0-9.-_]`.
    #[error(
        "SPIFFE ID path segments may only contain a-z, A-Z, 0-9, '.', '-' and '_', found {ch:?} at byte {pos}"
    )]
    PathChar {
        /// The offending character.
        ch: char,
        /// Byte offset inside the path.
        pos: usize,
    },
}

/// A SPIFFE trust domain name, such as `cluster.local`.
///
/// Only lowercase letters, digits, `.`, `-` and `_` are allowed, at most 255 bytes. Parse it
/// with [`str::parse`] or [`TrustDomain::new`]; [`Display`](fmt::Display) prints the bare
/// name, which parses back to the same value.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(pub(crate) String);

impl TrustDomain {
    /// Parses and validates a trust domain name (without the `spiffe://` prefix).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The trust domain name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself (`spiffe://<name>`, empty path).
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            trust_domain: self.clone(),
            path: String::new(),
        }
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl AsRef<str> for TrustDomain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A SPIFFE ID: `spiffe://<trust domain><path>`.
///
/// Parsing follows the SPIFFE ID standard strictly: lowercase `spiffe` scheme, a non-empty
/// lowercase trust domain of `[a-z0-9.-_]`, no user info, port, query or fragment, a path of
/// `/`-separated non-empty segments of `[a-zA-Z0-9.-_]` other than `.` and `..`, no trailing
/// slash, and at most 2048 bytes in all. The path may be empty (the ID of a trust domain).
/// [`Display`](fmt::Display) prints the canonical form, which parses back to the same value.
///
/// Ordering is by trust domain, then path.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or starts with `/`.
    path: String,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong(s.len()));
        }
        let rest = s
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeIdError::WrongScheme)?;
        // Query and fragment end the path in a generic URI; name them before anything else.
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(SpiffeIdError::UserInfo);
        }
        if authority.contains(':') {
            return Err(SpiffeIdError::Port);
        }
        validate_trust_domain(authority)?;
        validate_path(path)?;
        Ok(Self {
            trust_domain: TrustDomain(authority.to_owned()),
            path: path.to_owned(),
        })
    }

    /// Builds `spiffe://<td><path>` from a trust domain and a path (empty or starting with `/`).
    pub fn from_path(trust_domain: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        validate_path(path)?;
        let id = Self {
            trust_domain: trust_domain.clone(),
            path: path.to_owned(),
        };
        let len = SCHEME_PREFIX.len() + trust_domain.0.len() + path.len();
        if len > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong(len));
        }
        Ok(id)
    }

    /// Builds the Istio identity `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn from_istio(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        for seg in [namespace, service_account] {
            if seg.contains('/') {
                return Err(SpiffeIdError::PathChar {
                    ch: '/',
                    pos: seg.find('/').unwrap_or(0),
                });
            }
        }
        Self::from_path(
            trust_domain,
            &format!("/ns/{namespace}/sa/{service_account}"),
        )
    }

    /// The trust domain of this ID.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path: empty, or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The Istio view of this ID, if its path is exactly `/ns/<namespace>/sa/<service account>`.
    pub fn istio(&self) -> Option<IstioIdentity<'_>> {
        let mut parts = self.path.strip_prefix('/')?.split('/');
        let (Some("ns"), Some(namespace), Some("sa"), Some(service_account), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        Some(IstioIdentity {
            trust_domain: &self.trust_domain,
            namespace,
            service_account,
        })
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = SpiffeIdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}{}", self.trust_domain.0, self.path)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

/// The Istio reading of a SPIFFE ID: `spiffe://<td>/ns/<namespace>/sa/<service account>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IstioIdentity<'a> {
    trust_domain: &'a TrustDomain,
    namespace: &'a str,
    service_account: &'a str,
}

impl<'a> IstioIdentity<'a> {
    /// The trust domain.
    pub fn trust_domain(&self) -> &'a TrustDomain {
        self.trust_domain
    }
    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &'a str {
        self.namespace
    }
    /// The Kubernetes service account.
    pub fn service_account(&self) -> &'a str {
        self.service_account
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(td.len()));
    }
    for (pos, ch) in td.char_indices() {
        match ch {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            'A'..='Z' => return Err(SpiffeIdError::TrustDomainUppercase { ch, pos }),
            '@' => return Err(SpiffeIdError::UserInfo),
            ':' => return Err(SpiffeIdError::Port),
            _ => return Err(SpiffeIdError::TrustDomainChar { ch, pos }),
        }
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(body) = path.strip_prefix('/') else {
        // A non-empty path always starts with '/'; anything else is a character error at 0.
        let ch = path.chars().next().unwrap_or('?');
        return Err(SpiffeIdError::PathChar { ch, pos: 0 });
    };
    let mut offset = 1;
    for seg in body.split('/') {
        if seg.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if seg == "." || seg == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        for (i, ch) in seg.char_indices() {
            match ch {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
                '?' => return Err(SpiffeIdError::Query),
                '#' => return Err(SpiffeIdError::Fragment),
                _ => {
                    return Err(SpiffeIdError::PathChar {
                        ch,
                        pos: offset + i,
                    });
                }
            }
        }
        offset += seg.len() + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_valid_ids() {
        for s in [
            "spiffe://example.org",
            "spiffe://cluster.local/ns/default/sa/default",
            "spiffe://a/b",
            "spiffe://td-with_under.score.9/Path/With.Dots/and-dash_/UPPER",
            "spiffe://example.org/...",
            "spiffe://example.org/.hidden",
            "spiffe://1.2.3.4/x",
        ] {
            let id = SpiffeId::new(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn rejects_with_the_rule_broken() {
        use SpiffeIdError as E;
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        let long_id = format!("spiffe://example.org/{}", "a".repeat(2048));
        let cases: Vec<(&str, SpiffeIdError)> = vec![
            ("", E::Empty),
            ("http://example.org/x", E::WrongScheme),
            ("SPIFFE://example.org/x", E::WrongScheme),
            ("spiffe:/example.org/x", E::WrongScheme),
            ("spiffe:example.org", E::WrongScheme),
            ("example.org/x", E::WrongScheme),
            ("spiffe://", E::MissingTrustDomain),
            ("spiffe:///path", E::MissingTrustDomain),
            (&long_td, E::TrustDomainTooLong(256)),
            (&long_id, E::TooLong(long_id.len())),
            (
                "spiffe://Example.org/x",
                E::TrustDomainUppercase { ch: 'E', pos: 0 },
            ),
            (
                "spiffe://exa$mple.org",
                E::TrustDomainChar { ch: '$', pos: 3 },
            ),
            (
                "spiffe://ex%41mple.org",
                E::TrustDomainChar { ch: '%', pos: 2 },
            ),
            ("spiffe://user@example.org/x", E::UserInfo),
            ("spiffe://example.org:8080/x", E::Port),
            ("spiffe://example.org/x?y=1", E::Query),
            ("spiffe://example.org?y", E::Query),
            ("spiffe://example.org/x#frag", E::Fragment),
            ("spiffe://example.org/", E::EmptySegment),
            ("spiffe://example.org/a//b", E::EmptySegment),
            ("spiffe://example.org/a/", E::EmptySegment),
            ("spiffe://example.org/.", E::DotSegment),
            ("spiffe://example.org/a/../b", E::DotSegment),
            ("spiffe://example.org/a/./b", E::DotSegment),
            ("spiffe://example.org/a b", E::PathChar { ch: ' ', pos: 2 }),
            (
                "spiffe://example.org/a%20b",
                E::PathChar { ch: '%', pos: 2 },
            ),
            ("spiffe://example.org/ns/é", E::PathChar { ch: 'é', pos: 4 }),
            ("spiffe://example.org/a:b", E::PathChar { ch: ':', pos: 2 }),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::new(input), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn errors_name_the_rule() {
        let e = SpiffeId::new("spiffe://example.org/a/../b").unwrap_err();
        assert!(e.to_string().contains("'..'"), "{e}");
        let e = SpiffeId::new("spiffe://example.org:1/a").unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
    }

    #[test]
    fn trust_domain_rules() {
        assert_eq!(
            TrustDomain::new("cluster.local").unwrap().as_str(),
            "cluster.local"
        );
        assert_eq!(TrustDomain::new(""), Err(SpiffeIdError::MissingTrustDomain));
        assert!(matches!(
            TrustDomain::new("spiffe://x"),
            Err(SpiffeIdError::Port)
        ));
        assert!(matches!(
            TrustDomain::new("a/b"),
            Err(SpiffeIdError::TrustDomainChar { ch: '/', pos: 1 })
        ));
        let td: TrustDomain = "example.org".parse().unwrap();
        assert_eq!(td.to_string().parse::<TrustDomain>().unwrap(), td);
        assert_eq!(td.id().to_string(), "spiffe://example.org");
    }

    #[test]
    fn istio_view() {
        let id = SpiffeId::new("spiffe://cluster.local/ns/bookinfo/sa/reviews").unwrap();
        let istio = id.istio().unwrap();
        assert_eq!(istio.namespace(), "bookinfo");
        assert_eq!(istio.service_account(), "reviews");
        assert_eq!(istio.trust_domain().as_str(), "cluster.local");
        for not_istio in [
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/a/sa",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/ns/a/xx/b",
            "spiffe://cluster.local/foo/a/sa/b",
        ] {
            assert!(
                SpiffeId::new(not_istio).unwrap().istio().is_none(),
                "{not_istio}"
            );
        }
        let td = TrustDomain::new("cluster.local").unwrap();
        let built = SpiffeId::from_istio(&td, "bookinfo", "reviews").unwrap();
        assert_eq!(built, id);
        assert!(SpiffeId::from_istio(&td, "a/b", "c").is_err());
        assert!(SpiffeId::from_istio(&td, "", "c").is_err());
        assert!(SpiffeId::from_istio(&td, "..", "c").is_err());
    }

    #[test]
    fn ordering_is_by_trust_domain_then_path() {
        let a = SpiffeId::new("spiffe://a.org/z").unwrap();
        let b = SpiffeId::new("spiffe://b.org/a").unwrap();
        assert!(a < b);
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{1,12}".prop_filter("dot segments", |s| s != "." && s != "..")
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(
            td in "[a-z0-9._-]{1,40}",
            segs in proptest::collection::vec(segment(), 0..6),
        ) {
            let mut s = format!("spiffe://{td}");
            for seg in &segs {
                s.push('/');
                s.push_str(seg);
            }
            let id = SpiffeId::new(&s).unwrap();
            prop_assert_eq!(id.to_string(), s.clone());
            prop_assert_eq!(SpiffeId::new(&id.to_string()).unwrap(), id.clone());
            prop_assert_eq!(id.trust_domain().as_str(), td.as_str());
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".*") {
            if let Ok(id) = SpiffeId::new(&s) {
                prop_assert_eq!(id.to_string(), s.clone());
            }
            let _ = TrustDomain::new(&s);
        }

        #[test]
        fn arbitrary_after_prefix_never_panics(s in "[ -~]{0,64}") {
            let input = format!("spiffe://{s}");
            if let Ok(id) = SpiffeId::new(&input) {
                prop_assert_eq!(id.to_string(), input);
            }
        }
    }
}
