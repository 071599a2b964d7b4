//! The W3C `baggage` header and the workload attributes HBONE carries in it.

use std::fmt::{self, Write as _};

use super::is_tchar;

/// Longest `baggage` value accepted (all header lines joined), per W3C Baggage.
pub const MAX_BAGGAGE_LEN: usize = 8192;
/// Most list-members accepted in one `baggage` value, per W3C Baggage.
pub const MAX_BAGGAGE_MEMBERS: usize = 64;

/// Why a `baggage` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BaggageError {
    /// The value is longer than [`MAX_BAGGAGE_LEN`].
    #[error("baggage is {0} bytes long, more than {MAX_BAGGAGE_LEN}")]
    TooLong(usize),
    /// More than [`MAX_BAGGAGE_MEMBERS`] list-members.
    #[error("baggage has more than {MAX_BAGGAGE_MEMBERS} members")]
    TooManyMembers,
    /// A list-member does not follow `key=value[;property]*`.
    #[error("malformed baggage member")]
    Syntax,
    /// A value's percent-encoding is broken or does not decode to UTF-8.
    #[error("bad percent-encoding in baggage value")]
    Encoding,
}

/// One baggage list-member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaggageMember {
    /// The key (a token).
    pub key: String,
    /// The value, percent-decoded.
    pub value: String,
    /// Member properties, as written (whitespace around them removed).
    pub properties: Vec<String>,
}

/// A parsed `baggage` header: an ordered list of key/value members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    members: Vec<BaggageMember>,
}

impl Baggage {
    /// An empty baggage list.
    pub fn new() -> Self {
        Self::default()
    }

    /// The members in order.
    pub fn members(&self) -> &[BaggageMember] {
        &self.members
    }

    /// The value of the first member named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.key == key)
            .map(|m| m.value.as_str())
    }

    /// Appends a member. Returns `false` (and does nothing) if `key` is not a token.
    pub fn push(&mut self, key: &str, value: &str) -> bool {
        if key.is_empty() || !key.bytes().all(is_tchar) {
            return false;
        }
        self.members.push(BaggageMember {
            key: key.to_owned(),
            value: value.to_owned(),
            properties: Vec::new(),
        });
        true
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Parses a header value (several header lines may be joined with `,`). Empty
    /// list-members are skipped.
    pub fn parse(s: &str) -> Result<Self, BaggageError> {
        if s.len() > MAX_BAGGAGE_LEN {
            return Err(BaggageError::TooLong(s.len()));
        }
        let mut members = Vec::new();
        for raw in s.split(',') {
            let raw = trim_ows(raw);
            if raw.is_empty() {
                continue;
            }
            if members.len() == MAX_BAGGAGE_MEMBERS {
                return Err(BaggageError::TooManyMembers);
            }
            let mut parts = raw.split(';');
            let kv = parts.next().unwrap_or_default();
            let (k, v) = kv.split_once('=').ok_or(BaggageError::Syntax)?;
            let key = trim_ows(k);
            let value = trim_ows(v);
            if key.is_empty() || !key.bytes().all(is_tchar) {
                return Err(BaggageError::Syntax);
            }
            if !value.bytes().all(is_baggage_octet) {
                return Err(BaggageError::Syntax);
            }
            let mut properties = Vec::new();
            for prop in parts {
                let prop = trim_ows(prop);
                let pk = prop.split_once('=').map_or(prop, |(k, _)| trim_ows(k));
                if pk.is_empty() || !pk.bytes().all(is_tchar) {
                    return Err(BaggageError::Syntax);
                }
                if let Some((_, pv)) = prop.split_once('=')
                    && !trim_ows(pv).bytes().all(is_baggage_octet)
                {
                    return Err(BaggageError::Syntax);
                }
                properties.push(prop.to_owned());
            }
            members.push(BaggageMember {
                key: key.to_owned(),
                value: percent_decode(value)?,
                properties,
            });
        }
        Ok(Self { members })
    }
}

impl fmt::Display for Baggage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.members.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            f.write_str(&m.key)?;
            f.write_char('=')?;
            percent_encode(f, &m.value)?;
            for p in &m.properties {
                f.write_char(';')?;
                f.write_str(p)?;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Baggage {
    type Err = BaggageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// W3C `baggage-octet`: visible ASCII except `"`, `,`, `;` and `\`.
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

fn percent_decode(s: &str) -> Result<String, BaggageError> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(BaggageError::Encoding);
            };
            // hi and lo are < 16, so this fits a byte.
            out.push(((hi << 4) | lo) as u8);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| BaggageError::Encoding)
}

fn percent_encode(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    for b in s.bytes() {
        if is_baggage_octet(b) && b != b'%' {
            f.write_char(b as char)?;
        } else {
            write!(f, "%{b:02X}")?;
        }
    }
    Ok(())
}

/// Kind of workload named in baggage (`k8s.<kind>.name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WorkloadKind {
    /// `k8s.deployment.name`
    Deployment,
    /// `k8s.cronjob.name`
    CronJob,
    /// `k8s.pod.name`
    Pod,
    /// `k8s.job.name`
    Job,
}

impl WorkloadKind {
    const ALL: [Self; 4] = [Self::Deployment, Self::CronJob, Self::Pod, Self::Job];

    /// The baggage key carrying a workload name of this kind.
    pub fn baggage_key(self) -> &'static str {
        match self {
            Self::Deployment => "k8s.deployment.name",
            Self::CronJob => "k8s.cronjob.name",
            Self::Pod => "k8s.pod.name",
            Self::Job => "k8s.job.name",
        }
    }
}

/// Baggage key of the cluster name.
pub const BAGGAGE_CLUSTER: &str = "k8s.cluster.name";
/// Baggage key of the namespace.
pub const BAGGAGE_NAMESPACE: &str = "k8s.namespace.name";
/// Baggage key of the canonical service name.
pub const BAGGAGE_SERVICE_NAME: &str = "service.name";
/// Baggage key of the canonical service revision.
pub const BAGGAGE_SERVICE_VERSION: &str = "service.version";
/// Baggage key of the region.
pub const BAGGAGE_REGION: &str = "cloud.region";
/// Baggage key of the availability zone.
pub const BAGGAGE_ZONE: &str = "cloud.availability_zone";

/// The workload attributes an HBONE peer sends in `baggage` (request: the source
/// workload; 200 response: the destination workload). Empty fields are omitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkloadBaggage {
    /// `k8s.cluster.name`
    pub cluster: Option<String>,
    /// `k8s.namespace.name`
    pub namespace: Option<String>,
    /// `k8s.<kind>.name`: the kind and the name.
    pub workload: Option<(WorkloadKind, String)>,
    /// `service.name` (canonical name)
    pub service_name: Option<String>,
    /// `service.version` (canonical revision)
    pub service_version: Option<String>,
    /// `cloud.region`
    pub region: Option<String>,
    /// `cloud.availability_zone`
    pub zone: Option<String>,
}

impl WorkloadBaggage {
    /// Renders the attributes as baggage, in the order HBONE peers use.
    pub fn to_baggage(&self) -> Baggage {
        let mut b = Baggage::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                b.push(k, v);
            }
        };
        put(BAGGAGE_CLUSTER, &self.cluster);
        put(BAGGAGE_NAMESPACE, &self.namespace);
        if let Some((kind, name)) = &self.workload {
            put(kind.baggage_key(), &Some(name.clone()));
        }
        put(BAGGAGE_SERVICE_NAME, &self.service_name);
        put(BAGGAGE_SERVICE_VERSION, &self.service_version);
        put(BAGGAGE_REGION, &self.region);
        put(BAGGAGE_ZONE, &self.zone);
        b
    }

    /// Reads the recognised keys out of `baggage`; other keys are ignored.
    pub fn from_baggage(baggage: &Baggage) -> Self {
        let get = |k: &str| baggage.get(k).filter(|v| !v.is_empty()).map(str::to_owned);
        Self {
            cluster: get(BAGGAGE_CLUSTER),
            namespace: get(BAGGAGE_NAMESPACE),
            workload: WorkloadKind::ALL
                .iter()
                .find_map(|k| get(k.baggage_key()).map(|n| (*k, n))),
            service_name: get(BAGGAGE_SERVICE_NAME),
            service_version: get(BAGGAGE_SERVICE_VERSION),
            region: get(BAGGAGE_REGION),
            zone: get(BAGGAGE_ZONE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_order_and_round_trip() {
        let w = WorkloadBaggage {
            cluster: Some("Kubernetes".into()),
            namespace: Some("default".into()),
            workload: Some((WorkloadKind::Deployment, "reviews-v1".into())),
            service_name: Some("reviews".into()),
            service_version: Some("v1".into()),
            region: None,
            zone: Some(String::new()),
        };
        let b = w.to_baggage();
        assert_eq!(
            b.to_string(),
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,\
             k8s.deployment.name=reviews-v1,service.name=reviews,service.version=v1"
        );
        let back = Baggage::parse(&b.to_string()).unwrap();
        let mut expect = w.clone();
        expect.zone = None;
        assert_eq!(WorkloadBaggage::from_baggage(&back), expect);
    }

    #[test]
    fn w3c_forms() {
        let b = Baggage::parse(" k1 = v1 ;p1;p2=x , ,k2=a%20b%2C%3B").unwrap();
        assert_eq!(b.members().len(), 2);
        assert_eq!(b.get("k1"), Some("v1"));
        assert_eq!(b.members()[0].properties, vec!["p1", "p2=x"]);
        assert_eq!(b.get("k2"), Some("a b,;"));
        let again = Baggage::parse(&b.to_string()).unwrap();
        assert_eq!(again, b);
        assert_eq!(Baggage::parse("").unwrap(), Baggage::new());
        assert_eq!(Baggage::parse("k=").unwrap().get("k"), Some(""));
    }

    #[test]
    fn refused() {
        for bad in [
            "k", "=v", "k=\"v\"", "k=v w", "k=%zz", "k=%c3", "k=v;=p", "k e=v",
        ] {
            assert!(Baggage::parse(bad).is_err(), "{bad:?} accepted");
        }
        let many = vec!["k=v"; MAX_BAGGAGE_MEMBERS + 1].join(",");
        assert_eq!(Baggage::parse(&many), Err(BaggageError::TooManyMembers));
        let long = format!("k={}", "v".repeat(MAX_BAGGAGE_LEN));
        assert!(matches!(
            Baggage::parse(&long),
            Err(BaggageError::TooLong(_))
        ));
    }

    #[test]
    fn non_ascii_values_are_percent_encoded() {
        let mut b = Baggage::new();
        assert!(b.push("k", "caf\u{e9} \"x\""));
        assert!(!b.push("bad key", "v"));
        let s = b.to_string();
        assert!(s.is_ascii());
        assert_eq!(Baggage::parse(&s).unwrap(), b);
    }
}
