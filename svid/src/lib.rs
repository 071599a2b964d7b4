//! SPIFFE identities, X.509-SVIDs, rustls verifiers, a small CA and the Istio certificate
//! service.
#![forbid(unsafe_code)]

mod bundle;
mod ca;
mod id;
pub mod provider;
mod svid;
mod tls;
mod verifier;

#[cfg(test)]
mod tests;

pub use bundle::{BundleError, TrustBundle, TrustBundleSet};
pub use ca::{CaConfig, CaError, CertificateAuthority};
pub use id::{
    IstioIdentity, MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, SpiffeId, SpiffeIdError, TrustDomain,
};
pub use svid::{SvidError, X509Svid, peer_spiffe_id};
pub use tls::{
    ALPN_H2, TlsConfigError, client_config, client_config_with_verifier, server_config,
    server_config_with_verifier,
};
pub use verifier::{
    IdentityPolicy, PeerVerifyError, SpiffeClientVerifier, SpiffeServerVerifier,
    SpiffeVerifierBuilder, VerifierBuilderError, dangerous,
};

/// Re-exports of the rustls crates whose types appear in this API.
pub use rustls;
pub use rustls_pki_types as pki_types;
