//! [`Identity`] to and from [`meshwire_svid::SpiffeId`] (feature `svid`), part by part,
//! without printing and parsing URIs.

use std::str::FromStr;

use meshwire_svid::{SpiffeId, TrustDomain};

use super::Identity;

/// Why a SPIFFE ID or trust domain did not validate: the error `meshwire-svid` reports.
pub type SpiffeIdError = <SpiffeId as FromStr>::Err;

/// An [`Identity`] whose parts do not make a valid SPIFFE ID: the trust domain breaks the
/// SPIFFE rules (for example upper case or an empty name), or the namespace or service
/// account is not a valid path segment (empty, `.`, or holding `/` or other characters a
/// SPIFFE ID path does not allow).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{identity} is not a valid SPIFFE ID: {source}")]
#[non_exhaustive]
pub struct InvalidSpiffeIdentity {
    /// The identity.
    pub identity: Identity,
    /// The rule it broke.
    #[source]
    pub source: SpiffeIdError,
}

/// A SPIFFE ID whose path is not `/ns/<namespace>/sa/<service account>`, so it names no
/// [`Identity`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not of the form spiffe://<trust domain>/ns/<namespace>/sa/<service account>")]
pub struct NotAnIstioIdentity(pub SpiffeId);

impl TryFrom<&Identity> for SpiffeId {
    type Error = InvalidSpiffeIdentity;

    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, each part checked by
    /// the SPIFFE rules.
    fn try_from(id: &Identity) -> Result<Self, Self::Error> {
        let invalid = |source| InvalidSpiffeIdentity {
            identity: id.clone(),
            source,
        };
        let trust_domain = TrustDomain::new(&id.trust_domain).map_err(invalid)?;
        Self::from_istio(&trust_domain, &id.namespace, &id.service_account).map_err(invalid)
    }
}

impl TryFrom<Identity> for SpiffeId {
    type Error = InvalidSpiffeIdentity;

    fn try_from(id: Identity) -> Result<Self, Self::Error> {
        Self::try_from(&id)
    }
}

impl TryFrom<&SpiffeId> for Identity {
    type Error = NotAnIstioIdentity;

    /// The trust domain, namespace and service account of an Istio-form SPIFFE ID.
    fn try_from(id: &SpiffeId) -> Result<Self, Self::Error> {
        let istio = id.istio().ok_or_else(|| NotAnIstioIdentity(id.clone()))?;
        Ok(Self::new(
            istio.trust_domain().as_str(),
            istio.namespace(),
            istio.service_account(),
        ))
    }
}

impl TryFrom<SpiffeId> for Identity {
    type Error = NotAnIstioIdentity;

    fn try_from(id: SpiffeId) -> Result<Self, Self::Error> {
        Self::try_from(&id)
    }
}
