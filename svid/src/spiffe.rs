//! Conversions with the [`spiffe`] crate, so that users of `spiffe`,
//! `spiffe-rustls` or `spire-api` can hand their identities, SVIDs and bundles to this crate
//! and take ours back.
//!
//! | this crate | `spiffe` crate | ours → theirs | theirs → ours |
//! |---|---|---|---|
//! | [`SpiffeId`] | `spiffe::SpiffeId` | `TryFrom` | `TryFrom` |
//! | [`TrustDomain`] | `spiffe::TrustDomain` | `TryFrom` | `TryFrom` |
//! | [`X509Svid`] | `spiffe::X509Svid` | `TryFrom` | `TryFrom` |
//! | [`TrustBundle`] | `spiffe::X509Bundle` | `TryFrom` | `TryFrom` |
//! | [`TrustBundleSet`] | `spiffe::X509BundleSet` | `TryFrom` | `TryFrom` |
//!
//! Every conversion is fallible because each side checks its own rules: this crate refuses an
//! expired SVID, a key that does not match its leaf, or a bundle without roots; the `spiffe`
//! crate accepts only PKCS#8 keys. The error says which side refused ([`ConversionError`]).
//! Each conversion is implemented for the owned value and for a reference.
//!
//! ```
//! use meshwire_svid::SpiffeId;
//!
//! let ours: SpiffeId = "spiffe://cluster.local/ns/default/sa/web".parse()?;
//! let theirs = spiffe::SpiffeId::try_from(&ours)?;
//! assert_eq!(theirs.path(), "/ns/default/sa/web");
//! assert_eq!(SpiffeId::try_from(theirs)?, ours);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::bundle::{BundleError, TrustBundle, TrustBundleSet};
use crate::id::{SpiffeId, SpiffeIdError, TrustDomain};
use crate::x509::{SvidError, X509Svid};

/// Why a value could not be converted, and which side refused it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConversionError {
    /// This crate refused a SPIFFE ID or trust domain of the `spiffe` crate.
    #[error("SPIFFE ID or trust domain from the spiffe crate: {0}")]
    SpiffeId(#[from] SpiffeIdError),
    /// The `spiffe` crate refused a SPIFFE ID or trust domain of this crate.
    #[error("the spiffe crate refused the SPIFFE ID or trust domain: {0}")]
    SpiffeCrateId(#[from] ::spiffe::SpiffeIdError),
    /// This crate refused an X.509-SVID of the `spiffe` crate.
    #[error("X.509-SVID from the spiffe crate: {0}")]
    Svid(#[from] SvidError),
    /// The `spiffe` crate refused an X.509-SVID of this crate.
    #[error("the spiffe crate refused the X.509-SVID: {0}")]
    SpiffeCrateSvid(#[from] ::spiffe::X509SvidError),
    /// This crate refused an X.509 bundle of the `spiffe` crate.
    #[error("X.509 bundle from the spiffe crate: {0}")]
    Bundle(#[from] BundleError),
    /// The `spiffe` crate refused a trust bundle of this crate.
    #[error("the spiffe crate refused the trust bundle: {0}")]
    SpiffeCrateBundle(#[from] ::spiffe::X509BundleError),
}

/// Implements the owned conversion through the borrowed one.
macro_rules! owned_through_ref {
    ($from:ty => $to:ty) => {
        impl TryFrom<$from> for $to {
            type Error = ConversionError;
            fn try_from(value: $from) -> Result<Self, Self::Error> {
                Self::try_from(&value)
            }
        }
    };
}

impl TryFrom<&SpiffeId> for ::spiffe::SpiffeId {
    type Error = ConversionError;
    fn try_from(id: &SpiffeId) -> Result<Self, Self::Error> {
        Ok(Self::new(id.to_string())?)
    }
}
owned_through_ref!(SpiffeId => ::spiffe::SpiffeId);

impl TryFrom<&::spiffe::SpiffeId> for SpiffeId {
    type Error = ConversionError;
    fn try_from(id: &::spiffe::SpiffeId) -> Result<Self, Self::Error> {
        Ok(Self::new(&id.to_string())?)
    }
}
owned_through_ref!(::spiffe::SpiffeId => SpiffeId);

impl TryFrom<&TrustDomain> for ::spiffe::TrustDomain {
    type Error = ConversionError;
    fn try_from(td: &TrustDomain) -> Result<Self, Self::Error> {
        Ok(Self::new(td.as_str())?)
    }
}
owned_through_ref!(TrustDomain => ::spiffe::TrustDomain);

impl TryFrom<&::spiffe::TrustDomain> for TrustDomain {
    type Error = ConversionError;
    fn try_from(td: &::spiffe::TrustDomain) -> Result<Self, Self::Error> {
        Ok(Self::new(td.as_str())?)
    }
}
owned_through_ref!(::spiffe::TrustDomain => TrustDomain);

/// The chain (leaf first) and the PKCS#8 key; fails for a key in another encoding.
impl TryFrom<&X509Svid> for ::spiffe::X509Svid {
    type Error = ConversionError;
    fn try_from(svid: &X509Svid) -> Result<Self, Self::Error> {
        let chain: Vec<u8> = svid
            .cert_chain()
            .iter()
            .flat_map(|c| c.as_ref().iter().copied())
            .collect();
        let key = svid.private_key();
        Ok(Self::parse_from_der(&chain, key.secret_der())?)
    }
}
owned_through_ref!(X509Svid => ::spiffe::X509Svid);

/// Checked like [`X509Svid::from_der`], at the current time.
impl TryFrom<&::spiffe::X509Svid> for X509Svid {
    type Error = ConversionError;
    fn try_from(svid: &::spiffe::X509Svid) -> Result<Self, Self::Error> {
        let chain = svid.cert_chain().iter().map(der_of).collect();
        let key = PrivatePkcs8KeyDer::from(svid.private_key().as_bytes().to_vec());
        Ok(Self::from_der(chain, PrivateKeyDer::Pkcs8(key))?)
    }
}
owned_through_ref!(::spiffe::X509Svid => X509Svid);

fn der_of(cert: &::spiffe::Certificate) -> CertificateDer<'static> {
    CertificateDer::from(cert.as_bytes().to_vec())
}

impl TryFrom<&TrustBundle> for ::spiffe::X509Bundle {
    type Error = ConversionError;
    fn try_from(bundle: &TrustBundle) -> Result<Self, Self::Error> {
        let td = ::spiffe::TrustDomain::try_from(bundle.trust_domain())?;
        let roots: Vec<&[u8]> = bundle.roots().iter().map(|r| r.as_ref()).collect();
        Ok(Self::from_x509_authorities(td, &roots)?)
    }
}
owned_through_ref!(TrustBundle => ::spiffe::X509Bundle);

/// Fails for a bundle without authorities, which this crate cannot verify against.
impl TryFrom<&::spiffe::X509Bundle> for TrustBundle {
    type Error = ConversionError;
    fn try_from(bundle: &::spiffe::X509Bundle) -> Result<Self, Self::Error> {
        let td = TrustDomain::try_from(bundle.trust_domain())?;
        let roots = bundle.authorities().iter().map(der_of).collect();
        Ok(Self::new(td, roots)?)
    }
}
owned_through_ref!(::spiffe::X509Bundle => TrustBundle);

impl TryFrom<&TrustBundleSet> for ::spiffe::X509BundleSet {
    type Error = ConversionError;
    fn try_from(set: &TrustBundleSet) -> Result<Self, Self::Error> {
        set.iter().map(::spiffe::X509Bundle::try_from).collect()
    }
}
owned_through_ref!(TrustBundleSet => ::spiffe::X509BundleSet);

/// Fails if any bundle fails (see the [`TrustBundle`] conversion).
impl TryFrom<&::spiffe::X509BundleSet> for TrustBundleSet {
    type Error = ConversionError;
    fn try_from(set: &::spiffe::X509BundleSet) -> Result<Self, Self::Error> {
        set.iter()
            .map(|(_, bundle)| TrustBundle::try_from(bundle.as_ref()))
            .collect()
    }
}
owned_through_ref!(::spiffe::X509BundleSet => TrustBundleSet);
