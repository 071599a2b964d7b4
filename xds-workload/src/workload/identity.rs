//! The SPIFFE identity of a workload, split into its Istio parts.

use std::fmt;
use std::str::FromStr;

/// The SPIFFE identity of a workload, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// Trust domain.
    pub trust_domain: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Kubernetes service account.
    pub service_account: String,
}

/// A text that is not a SPIFFE ID of the form `spiffe://<td>/ns/<ns>/sa/<sa>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a spiffe://<trust domain>/ns/<namespace>/sa/<service account> identity: {0:?}")]
pub struct IdentityParseError(pub String);

impl Identity {
    /// An identity from its parts.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// The principal used by authorization: the SPIFFE ID without `spiffe://`,
    /// `<td>/ns/<ns>/sa/<sa>`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IdentityParseError(s.to_owned());
        let rest = s.strip_prefix("spiffe://").ok_or_else(err)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(err());
        };
        if td.is_empty() || ns.is_empty() || sa.is_empty() {
            return Err(err());
        }
        Ok(Self::new(td, ns, sa))
    }
}
