//! rustls certificate verifiers for SPIFFE peers: chain validation with webpki against the
//! trust bundle of the peer's trust domain, then an [`IdentityPolicy`].
//!
//! [`SpiffeServerVerifier`] checks servers (the client side of a connection),
//! [`SpiffeClientVerifier`] checks clients; both are built with [`SpiffeVerifierBuilder`],
//! which requires trust bundles and a policy. Weaker verifiers live in [`dangerous`].

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::bundle::SharedTrustBundles;
use crate::id::{SpiffeId, TrustDomain};
use crate::x509::{SvidError, inspect_leaf};

pub mod dangerous;

/// Which peer identities a verifier accepts once the chain is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityPolicy {
    /// The peer leaf's SPIFFE ID must be one of these (exact match, trust domain included).
    /// The usual client-side policy: the identities expected for the hop.
    Exact(BTreeSet<SpiffeId>),
    /// The peer leaf's trust domain must equal this one. The usual server-side policy.
    SameTrustDomain(TrustDomain),
    /// The peer leaf's trust domain must be one of these.
    TrustDomains(BTreeSet<TrustDomain>),
}

impl IdentityPolicy {
    /// [`IdentityPolicy::Exact`] from any collection of IDs.
    pub fn exact(ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self::Exact(ids.into_iter().collect())
    }

    /// Whether `id` satisfies the policy.
    pub fn allows(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(set) => set.contains(id),
            Self::SameTrustDomain(td) => id.trust_domain() == td,
            Self::TrustDomains(tds) => tds.contains(id.trust_domain()),
        }
    }
}

impl fmt::Display for IdentityPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T: fmt::Display>(
            f: &mut fmt::Formatter<'_>,
            it: impl Iterator<Item = T>,
        ) -> fmt::Result {
            for (i, x) in it.enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{x}")?;
            }
            Ok(())
        }
        match self {
            Self::Exact(ids) => {
                f.write_str("one of [")?;
                list(f, ids.iter())?;
                f.write_str("]")
            }
            Self::SameTrustDomain(td) => write!(f, "trust domain {td}"),
            Self::TrustDomains(tds) => {
                f.write_str("a trust domain of [")?;
                list(f, tds.iter())?;
                f.write_str("]")
            }
        }
    }
}

/// Why a peer certificate chain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerVerifyError {
    /// The leaf breaks an X.509-SVID rule (no or several URI SANs, CA as leaf, …).
    #[error("peer certificate is not an X.509-SVID: {0}")]
    NotSvid(SvidError),
    /// No trust bundle is configured for the peer's trust domain.
    #[error("no trust bundle for the peer's trust domain {0}")]
    NoBundle(TrustDomain),
    /// The leaf has expired.
    #[error("peer certificate expired")]
    Expired,
    /// The leaf is not valid yet.
    #[error("peer certificate is not valid yet")]
    NotYetValid,
    /// The chain does not lead to a root of the bundle.
    #[error("peer certificate chain does not lead to a trusted root")]
    UnknownIssuer,
    /// A signature in the chain is invalid.
    #[error("bad signature in peer certificate chain")]
    BadSignature,
    /// The leaf's extended key usage does not allow this side of TLS.
    #[error("peer certificate is not valid for this purpose (extended key usage)")]
    WrongPurpose,
    /// Any other chain validation failure.
    #[error("peer certificate chain rejected: {0}")]
    Chain(String),
    /// The chain is valid but the identity is not acceptable.
    #[error("peer identity {peer} is not allowed; expected {expected}")]
    IdentityNotAllowed {
        /// The peer's SPIFFE ID.
        peer: SpiffeId,
        /// The policy, as text.
        expected: String,
    },
}

impl From<webpki::Error> for PeerVerifyError {
    fn from(e: webpki::Error) -> Self {
        use webpki::Error as W;
        match e {
            W::CertExpired { .. } => Self::Expired,
            W::CertNotValidYet { .. } => Self::NotYetValid,
            W::UnknownIssuer => Self::UnknownIssuer,
            W::InvalidSignatureForPublicKey => Self::BadSignature,
            W::RequiredEkuNotFoundContext(_) | W::EmptyEkuExtension => Self::WrongPurpose,
            W::CaUsedAsEndEntity => Self::NotSvid(SvidError::LeafIsCa),
            other => Self::Chain(other.to_string()),
        }
    }
}

impl From<PeerVerifyError> for rustls::Error {
    fn from(e: PeerVerifyError) -> Self {
        let ce = match e {
            PeerVerifyError::Expired => CertificateError::Expired,
            PeerVerifyError::NotYetValid => CertificateError::NotValidYet,
            PeerVerifyError::UnknownIssuer | PeerVerifyError::NoBundle(_) => {
                CertificateError::UnknownIssuer
            }
            PeerVerifyError::BadSignature => CertificateError::BadSignature,
            PeerVerifyError::WrongPurpose => CertificateError::InvalidPurpose,
            other => CertificateError::Other(OtherError(Arc::new(other))),
        };
        Self::InvalidCertificate(ce)
    }
}

/// The handshake-signature methods of a rustls verifier, checked with the algorithms of the
/// provider at `self.<path>`; shared by every verifier of this module.
macro_rules! handshake_signatures {
    ($($provider:ident).+) => {
        handshake_signatures!(@check verify_tls12_signature, $($provider).+);
        handshake_signatures!(@check verify_tls13_signature, $($provider).+);

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.$($provider).+
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
    // The trait methods share their names with the rustls functions that implement them.
    (@check $method:ident, $($provider:ident).+) => {
        fn $method(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.$($provider).+.signature_verification_algorithms;
            rustls::crypto::$method(message, cert, dss, algorithms)
        }
    };
}
use handshake_signatures;

/// The inherent methods of both verifiers; `$usage` names the webpki key usage checked.
macro_rules! verifier_methods {
    ($usage:ident) => {
        /// Starts a builder.
        pub fn builder(provider: Arc<CryptoProvider>) -> SpiffeVerifierBuilder {
            SpiffeVerifierBuilder::new(provider)
        }

        /// Runs the full check outside of a handshake and returns the peer's identity.
        pub fn verify_peer(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<SpiffeId, PeerVerifyError> {
            let usage = webpki::KeyUsage::$usage();
            self.core.verify(end_entity, intermediates, now, usage)
        }

        /// The identity policy.
        pub fn policy(&self) -> &IdentityPolicy {
            &self.core.policy
        }
    };
}

/// The chain + identity check shared by both verifiers.
#[derive(Clone)]
struct Core {
    provider: Arc<CryptoProvider>,
    roots: SharedTrustBundles,
    policy: IdentityPolicy,
}

impl Core {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<SpiffeId, PeerVerifyError> {
        let leaf = inspect_leaf(end_entity).map_err(PeerVerifyError::NotSvid)?;
        let id = leaf.spiffe_id;
        let roots = self.roots.current();
        let bundle = roots
            .get(id.trust_domain())
            .ok_or_else(|| PeerVerifyError::NoBundle(id.trust_domain().clone()))?;
        let ee = webpki::EndEntityCert::try_from(end_entity)?;
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            bundle.anchors(),
            intermediates,
            now,
            usage,
            None,
            None,
        )?;
        if !self.policy.allows(&id) {
            return Err(PeerVerifyError::IdentityNotAllowed {
                peer: id,
                expected: self.policy.to_string(),
            });
        }
        Ok(id)
    }
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("roots", &self.roots)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Why a verifier could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifierBuilderError {
    /// The trust bundle set is empty.
    #[error("no trust bundle configured")]
    NoRoots,
    /// No identity policy was given.
    #[error("no identity policy configured")]
    NoPolicy,
    /// An [`IdentityPolicy::Exact`] or [`IdentityPolicy::TrustDomains`] with an empty set
    /// would reject every peer.
    #[error("identity policy has an empty set and would reject every peer")]
    EmptyPolicy,
}

/// Builder for [`SpiffeServerVerifier`] and [`SpiffeClientVerifier`].
///
/// Both the trust bundles and the identity policy are required; there is no default that
/// accepts any identity.
#[derive(Clone)]
pub struct SpiffeVerifierBuilder {
    provider: Arc<CryptoProvider>,
    roots: Option<SharedTrustBundles>,
    policy: Option<IdentityPolicy>,
    client_auth_optional: bool,
}

impl fmt::Debug for SpiffeVerifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeVerifierBuilder")
            .field("roots", &self.roots)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl SpiffeVerifierBuilder {
    fn new(provider: Arc<CryptoProvider>) -> Self {
        Self {
            provider,
            roots: None,
            policy: None,
            client_auth_optional: false,
        }
    }

    /// Client verifiers only: accept clients that present no certificate at all (a
    /// certificate that *is* presented is still fully verified). For endpoints where
    /// clients may authenticate otherwise, such as a bearer token on the control plane.
    pub fn client_auth_optional(mut self) -> Self {
        self.client_auth_optional = true;
        self
    }

    /// The trust bundles to validate peer chains against (required): a fixed
    /// [`TrustBundleSet`](crate::TrustBundleSet), or [`SharedTrustBundles`] whose
    /// replacements every later handshake sees (they must hold a bundle when the verifier is
    /// built).
    pub fn roots(mut self, roots: impl Into<SharedTrustBundles>) -> Self {
        self.roots = Some(roots.into());
        self
    }

    /// The identity policy applied after chain validation (required).
    pub fn policy(mut self, policy: IdentityPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Accept only these exact SPIFFE IDs.
    pub fn expect_ids(self, ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        self.policy(IdentityPolicy::exact(ids))
    }

    /// Accept any identity of this trust domain.
    pub fn same_trust_domain(self, td: TrustDomain) -> Self {
        self.policy(IdentityPolicy::SameTrustDomain(td))
    }

    fn core(self) -> Result<Core, VerifierBuilderError> {
        let roots = self.roots.ok_or(VerifierBuilderError::NoRoots)?;
        if roots.current().is_empty() {
            return Err(VerifierBuilderError::NoRoots);
        }
        let policy = self.policy.ok_or(VerifierBuilderError::NoPolicy)?;
        match &policy {
            IdentityPolicy::Exact(s) if s.is_empty() => {
                return Err(VerifierBuilderError::EmptyPolicy);
            }
            IdentityPolicy::TrustDomains(s) if s.is_empty() => {
                return Err(VerifierBuilderError::EmptyPolicy);
            }
            _ => {}
        }
        Ok(Core {
            provider: self.provider,
            roots,
            policy,
        })
    }

    /// Builds a verifier of server certificates (for the client side of a connection).
    pub fn build_server_verifier(self) -> Result<Arc<SpiffeServerVerifier>, VerifierBuilderError> {
        Ok(Arc::new(SpiffeServerVerifier { core: self.core()? }))
    }

    /// Builds a verifier of client certificates (for the server side of a connection).
    /// Client certificates are mandatory unless
    /// [`client_auth_optional`](Self::client_auth_optional) was called.
    pub fn build_client_verifier(self) -> Result<Arc<SpiffeClientVerifier>, VerifierBuilderError> {
        let mandatory = !self.client_auth_optional;
        Ok(Arc::new(SpiffeClientVerifier {
            core: self.core()?,
            mandatory,
        }))
    }
}

/// Verifies a server's X.509-SVID: the leaf follows the SVID rules, the chain leads to a root
/// of the bundle of the leaf's trust domain (webpki, server-auth usage where an EKU is
/// present), and the SPIFFE ID satisfies the [`IdentityPolicy`].
///
/// The TLS server name is ignored: the identity is the SPIFFE ID, so connect with any
/// `ServerName` (for example the peer's IP) and SNI disabled.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    core: Core,
}

impl SpiffeServerVerifier {
    verifier_methods!(server_auth);
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify_peer(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!(core.provider);
}

/// Verifies a client's X.509-SVID: the leaf follows the SVID rules, the chain
/// leads to a root of the bundle of the leaf's trust domain (webpki, client-auth usage where
/// an EKU is present), and the SPIFFE ID satisfies the [`IdentityPolicy`].
///
/// A client certificate is mandatory unless the builder was told
/// [`client_auth_optional`](SpiffeVerifierBuilder::client_auth_optional).
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    core: Core,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    verifier_methods!(client_auth);
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify_peer(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    handshake_signatures!(core.provider);
}
