//! SPIFFE identities, X.509-SVIDs, rustls verifiers, a small CA and the Istio certificate
//! service.
#![forbid(unsafe_code)]

mod bundle;
mod ca;
mod id;
mod manager;
pub mod pb;
pub mod provider;
mod service;
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
pub use manager::{
    CertificateHandle, CertificateManager, CertificateSource, CertificateState, ManagerConfig,
    ManagerError, Priority,
};
pub use service::client::{
    CaClient, CaClientConfig, CaClientError, CsrAndKey, FetchedSvid, Token, make_csr,
    svid_from_response,
};
pub use service::server::{
    AuthorizationRequest, Authorizer, CertificateService, CertificateServiceConfig, Denial,
};
pub use service::tls::{
    ControlPlaneTlsError, PeerInfo, TlsConnection, TlsIncoming, control_plane_client_config,
    control_plane_server_config, serve_tls, tls_channel, tls_incoming,
};
pub use service::{CLUSTER_ID_HEADER, IMPERSONATED_IDENTITY_KEY};
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
