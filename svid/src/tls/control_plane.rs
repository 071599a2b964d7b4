//! rustls configurations for the control-plane gRPC endpoint (xDS, certificate service):
//! ordinary server-name verification towards the server, optional SPIFFE client certificates.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ALPN_H2;
use crate::bundle::TrustBundleSet;
use crate::verify::{IdentityPolicy, SpiffeClientVerifier, VerifierBuilderError};
use crate::x509::{X509Svid, certs_from_pem};

/// Why a control-plane TLS configuration or channel could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlPlaneTlsError {
    /// rustls refused the configuration.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error(transparent)]
    Verifier(#[from] VerifierBuilderError),
    /// The root PEM held no usable certificate.
    #[error("no usable root certificate: {0}")]
    Roots(String),
    /// The endpoint URI is unusable.
    #[error("endpoint {uri:?}: {reason}")]
    Endpoint {
        /// The URI given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A server configuration for the control-plane gRPC endpoint: presents `cert_chain`/`key`
/// (for example from `ca::CertificateAuthority::issue_server_cert`),
/// TLS 1.3, ALPN `h2`.
///
/// With `client_roots`, clients *may* present an X.509-SVID; a presented one must chain to the
/// bundles and satisfy the policy, and its identity reaches the authorizer. Clients without a
/// certificate are still accepted (they authenticate with a bearer token).
pub fn control_plane_server_config(
    provider: Arc<CryptoProvider>,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: Option<(TrustBundleSet, IdentityPolicy)>,
) -> Result<rustls::ServerConfig, ControlPlaneTlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_roots {
        Some((roots, policy)) => {
            let verifier = SpiffeClientVerifier::builder(provider)
                .roots(roots)
                .policy(policy)
                .client_auth_optional()
                .build_client_verifier()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(cert_chain, key)?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// A client configuration for the control-plane channel: trusts the roots in `root_pem`,
/// verifies the server's DNS name or IP address normally (webpki), TLS 1.3, ALPN `h2`, and
/// presents `client` when given.
pub fn control_plane_client_config(
    provider: Arc<CryptoProvider>,
    root_pem: &[u8],
    client: Option<&X509Svid>,
) -> Result<rustls::ClientConfig, ControlPlaneTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = certs_from_pem(root_pem).map_err(|e| ControlPlaneTlsError::Roots(e.to_string()))?;
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ControlPlaneTlsError::Roots("no certificate in PEM".into()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some(svid) => {
            builder.with_client_auth_cert(svid.cert_chain().to_vec(), svid.private_key())?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}
