//! Trust bundles: the root certificates of each trust domain.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls_pki_types::{CertificateDer, TrustAnchor};

use crate::id::TrustDomain;
use crate::x509::{SvidError, cert_to_pem, certs_from_pem};

/// Why a trust bundle could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The input held no certificate.
    #[error("trust bundle for {0} has no root certificate")]
    Empty(TrustDomain),
    /// PEM could not be decoded.
    #[error("trust bundle PEM: {0}")]
    Pem(SvidError),
    /// A root is not usable as a trust anchor.
    #[error("root {index} of the trust bundle is not a usable trust anchor: {reason}")]
    BadRoot {
        /// Position in the input.
        index: usize,
        /// Parser message.
        reason: String,
    },
}

/// The root certificates (trust anchors) of one trust domain.
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// Builds a bundle from DER root certificates (at least one).
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty(trust_domain));
        }
        let anchors = roots
            .iter()
            .enumerate()
            .map(|(index, der)| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|a| a.to_owned())
                    .map_err(|e| BundleError::BadRoot {
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            trust_domain,
            roots,
            anchors,
        })
    }

    /// Builds a bundle from every `CERTIFICATE` block of a PEM document.
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, BundleError> {
        let roots = certs_from_pem(pem).map_err(BundleError::Pem)?;
        Self::new(trust_domain, roots)
    }

    /// The trust domain these roots vouch for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificates.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as a PEM document.
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|c| cert_to_pem(c)).collect()
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .finish()
    }
}

/// Trust bundles keyed by trust domain.
///
/// A peer is verified against the bundle of the trust domain named in its own SPIFFE ID; to
/// trust the same roots for several trust domains, insert one bundle per domain.
#[derive(Clone, Debug, Default)]
pub struct TrustBundleSet {
    bundles: BTreeMap<TrustDomain, TrustBundle>,
}

impl TrustBundleSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts (or replaces) the bundle of its trust domain; returns the one replaced.
    pub fn insert(&mut self, bundle: TrustBundle) -> Option<TrustBundle> {
        self.bundles.insert(bundle.trust_domain.clone(), bundle)
    }

    /// The bundle of `trust_domain`.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&TrustBundle> {
        self.bundles.get(trust_domain)
    }

    /// Removes the bundle of `trust_domain`.
    pub fn remove(&mut self, trust_domain: &TrustDomain) -> Option<TrustBundle> {
        self.bundles.remove(trust_domain)
    }

    /// All bundles, ordered by trust domain.
    pub fn iter(&self) -> impl Iterator<Item = &TrustBundle> {
        self.bundles.values()
    }

    /// Number of trust domains.
    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    /// Whether the set has no bundle.
    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }
}

impl From<TrustBundle> for TrustBundleSet {
    fn from(bundle: TrustBundle) -> Self {
        let mut set = Self::new();
        set.insert(bundle);
        set
    }
}

impl FromIterator<TrustBundle> for TrustBundleSet {
    fn from_iter<I: IntoIterator<Item = TrustBundle>>(iter: I) -> Self {
        let mut set = Self::new();
        for b in iter {
            set.insert(b);
        }
        set
    }
}

/// Trust bundles that may be replaced while the verifiers built on them are in use: every
/// handshake checks the peer against the set current at that moment. Clones share the set.
///
/// Feed it from a bundle source that changes (the SPIRE agent's bundle stream, which adds the
/// next root during a CA rotation and drops the old one later): a root added here is
/// trusted by every verifier at once, without new TLS configurations or new certificates.
/// A fixed [`TrustBundleSet`] converts into one that nobody replaces.
#[derive(Clone, Default)]
pub struct SharedTrustBundles {
    current: Arc<RwLock<Arc<TrustBundleSet>>>,
}

impl SharedTrustBundles {
    /// A shared set starting with `set`.
    pub fn new(set: TrustBundleSet) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(set))),
        }
    }

    /// The set now.
    pub fn current(&self) -> Arc<TrustBundleSet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the set for every holder of a clone; handshakes from now on use `set`.
    pub fn replace(&self, set: TrustBundleSet) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
    }
}

impl fmt::Debug for SharedTrustBundles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedTrustBundles")
            .field(&self.current())
            .finish()
    }
}

impl From<TrustBundleSet> for SharedTrustBundles {
    fn from(set: TrustBundleSet) -> Self {
        Self::new(set)
    }
}

impl From<&TrustBundleSet> for SharedTrustBundles {
    fn from(set: &TrustBundleSet) -> Self {
        Self::new(set.clone())
    }
}

impl From<Arc<TrustBundleSet>> for SharedTrustBundles {
    fn from(set: Arc<TrustBundleSet>) -> Self {
        Self {
            current: Arc::new(RwLock::new(set)),
        }
    }
}
