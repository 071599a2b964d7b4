//! Ready rustls configurations for the HBONE data plane.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::NoServerSessionStorage;

use crate::SpiffeClientVerifier;
use crate::bundle::TrustBundleSet;
use crate::provider::restrict_to_data_plane_suites;
use crate::svid::X509Svid;
use crate::verifier::{IdentityPolicy, SpiffeServerVerifier, VerifierBuilderError};

/// The ALPN protocol offered and accepted on the data plane.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// The provider has neither `TLS13_AES_256_GCM_SHA384` nor `TLS13_AES_128_GCM_SHA256`.
    #[error("crypto provider offers no TLS 1.3 AES-GCM cipher suite")]
    NoUsableCipherSuite,
    /// The verifier could not be built.
    #[error(transparent)]
    Verifier(#[from] VerifierBuilderError),
    /// rustls refused the configuration (for example an unsupported key).
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn data_plane_provider(provider: &CryptoProvider) -> Result<Arc<CryptoProvider>, TlsConfigError> {
    let p = restrict_to_data_plane_suites(provider.clone());
    if p.cipher_suites.is_empty() {
        return Err(TlsConfigError::NoUsableCipherSuite);
    }
    Ok(Arc::new(p))
}

/// A client configuration that presents `own` and accepts a server whose SVID chains to
/// `roots` and whose identity satisfies `expected`.
///
/// TLS 1.3 only, AES-GCM suites only, ALPN `h2`, SNI disabled, resumption disabled. Connect
/// with any `ServerName` (the peer IP is customary); it is not checked.
pub fn client_config(
    provider: Arc<CryptoProvider>,
    own: &X509Svid,
    roots: &TrustBundleSet,
    expected: IdentityPolicy,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let provider = data_plane_provider(&provider)?;
    let verifier = SpiffeServerVerifier::builder(provider.clone())
        .roots(roots.clone())
        .policy(expected)
        .build_server_verifier()?;
    client_config_with_verifier(provider, own, verifier)
}

/// Like [`client_config`] with a ready server verifier (or any weaker one from
/// [`dangerous`](crate::dangerous)).
pub fn client_config_with_verifier(
    provider: Arc<CryptoProvider>,
    own: &X509Svid,
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let provider = data_plane_provider(&provider)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(own.cert_chain().to_vec(), own.private_key())?;
    cfg.enable_sni = false;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.resumption = Resumption::disabled();
    Ok(cfg)
}

/// A server configuration that presents `own`, requires a client certificate that chains to
/// `roots`, and accepts a client whose identity satisfies `clients`.
///
/// TLS 1.3 only, AES-GCM suites only, ALPN `h2`, no session tickets or session cache.
pub fn server_config(
    provider: Arc<CryptoProvider>,
    own: &X509Svid,
    roots: &TrustBundleSet,
    clients: IdentityPolicy,
) -> Result<rustls::ServerConfig, TlsConfigError> {
    let provider = data_plane_provider(&provider)?;
    let verifier = SpiffeClientVerifier::builder(provider.clone())
        .roots(roots.clone())
        .policy(clients)
        .build_client_verifier()?;
    server_config_with_verifier(provider, own, verifier)
}

/// Like [`server_config`] with a ready client verifier.
pub fn server_config_with_verifier(
    provider: Arc<CryptoProvider>,
    own: &X509Svid,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
) -> Result<rustls::ServerConfig, TlsConfigError> {
    let provider = data_plane_provider(&provider)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(own.cert_chain().to_vec(), own.private_key())?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}
