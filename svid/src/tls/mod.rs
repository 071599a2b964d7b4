//! rustls configurations: the HBONE data plane ([`client_config`], [`server_config`]), the
//! control-plane gRPC endpoint ([`control_plane_server_config`],
//! [`control_plane_client_config`]), reading the peer's identity ([`peer_spiffe_id`]), and a
//! bound on the connections TLS listeners hold ([`ConnectionLimit`]: the oldest
//! not-yet-authenticated connection is shed first).
//!
//! With the `service` feature it also holds the tokio side of the control plane: an accept
//! loop that hands tonic connections carrying the client's identity (`incoming`) and a
//! tonic channel over rustls (`channel`).

use std::sync::Arc;

use rustls::ConfigBuilder;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::{ResolvesClientCert, Resumption, WantsClientCert};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, ResolvesServerCert, WantsServerCert};
use rustls_pki_types::CertificateDer;

use crate::bundle::TrustBundleSet;
use crate::id::SpiffeId;
use crate::provider::restrict_to_data_plane_suites;
use crate::verify::{
    IdentityPolicy, SpiffeClientVerifier, SpiffeServerVerifier, VerifierBuilderError,
};
use crate::x509::{SvidError, X509Svid, parse_cert, uri_sans};

mod control_plane;
mod limit;
pub use control_plane::{
    ControlPlaneTlsError, control_plane_client_config, control_plane_server_config,
};
pub use limit::{
    ConnectionLimit, ConnectionLimitConfig, ConnectionSlot, LimitReached, LimitStats, Shed,
};

#[cfg(feature = "service")]
mod channel;
#[cfg(feature = "service")]
mod incoming;
#[cfg(feature = "service")]
#[cfg_attr(docsrs, doc(cfg(feature = "service")))]
pub use channel::channel;
#[cfg(feature = "service")]
#[cfg_attr(docsrs, doc(cfg(feature = "service")))]
pub use incoming::{Incoming, IncomingConfig, PeerInfo, TlsConnection, incoming, incoming_with};

/// The ALPN protocol offered and accepted on the data plane and the control plane.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a data-plane TLS configuration could not be built.
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

fn server_verifier(
    provider: &Arc<CryptoProvider>,
    roots: &TrustBundleSet,
    expected: IdentityPolicy,
) -> Result<Arc<SpiffeServerVerifier>, TlsConfigError> {
    Ok(SpiffeServerVerifier::builder(provider.clone())
        .roots(roots.clone())
        .policy(expected)
        .build_server_verifier()?)
}

fn client_verifier(
    provider: &Arc<CryptoProvider>,
    roots: &TrustBundleSet,
    clients: IdentityPolicy,
) -> Result<Arc<SpiffeClientVerifier>, TlsConfigError> {
    Ok(SpiffeClientVerifier::builder(provider.clone())
        .roots(roots.clone())
        .policy(clients)
        .build_client_verifier()?)
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
    let verifier = server_verifier(&provider, roots, expected)?;
    client_config_with_verifier(provider, own, verifier)
}

/// Like [`client_config`] with a ready server verifier (or any weaker one from
/// [`dangerous`](crate::verify::dangerous)).
pub fn client_config_with_verifier(
    provider: Arc<CryptoProvider>,
    own: &X509Svid,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let cfg = client_builder(provider, verifier)?
        .with_client_auth_cert(own.cert_chain().to_vec(), own.private_key())?;
    Ok(data_plane_client(cfg))
}

/// Like [`client_config_with_verifier`], presenting whatever certificate `resolver` returns
/// at each handshake (for example the certificate manager's current one, see
/// `manager::CertificateResolver`), so a rotation needs no new configuration.
pub fn client_config_with_resolver(
    provider: Arc<CryptoProvider>,
    resolver: Arc<dyn ResolvesClientCert>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let cfg = client_builder(provider, verifier)?.with_client_cert_resolver(resolver);
    Ok(data_plane_client(cfg))
}

fn client_builder(
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<ConfigBuilder<rustls::ClientConfig, WantsClientCert>, TlsConfigError> {
    Ok(
        rustls::ClientConfig::builder_with_provider(data_plane_provider(&provider)?)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier),
    )
}

fn data_plane_client(mut cfg: rustls::ClientConfig) -> rustls::ClientConfig {
    cfg.enable_sni = false;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.resumption = Resumption::disabled();
    cfg
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
    let verifier = client_verifier(&provider, roots, clients)?;
    server_config_with_verifier(provider, own, verifier)
}

/// Like [`server_config`] with a ready client verifier.
pub fn server_config_with_verifier(
    provider: Arc<CryptoProvider>,
    own: &X509Svid,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<rustls::ServerConfig, TlsConfigError> {
    let cfg = server_builder(provider, verifier)?
        .with_single_cert(own.cert_chain().to_vec(), own.private_key())?;
    Ok(data_plane_server(cfg))
}

/// Like [`server_config_with_verifier`], presenting whatever certificate `resolver` returns
/// at each handshake (for example the certificate manager's current one, see
/// `manager::CertificateResolver`), so a rotation needs no new configuration.
pub fn server_config_with_resolver(
    provider: Arc<CryptoProvider>,
    resolver: Arc<dyn ResolvesServerCert>,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<rustls::ServerConfig, TlsConfigError> {
    let cfg = server_builder(provider, verifier)?.with_cert_resolver(resolver);
    Ok(data_plane_server(cfg))
}

fn server_builder(
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<ConfigBuilder<rustls::ServerConfig, WantsServerCert>, TlsConfigError> {
    Ok(
        rustls::ServerConfig::builder_with_provider(data_plane_provider(&provider)?)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier),
    )
}

fn data_plane_server(mut cfg: rustls::ServerConfig) -> rustls::ServerConfig {
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    cfg
}

/// Identity of the peer of an established connection: the first URI SAN of the leaf
/// (`peer_certs[0]`) that is a valid SPIFFE ID. Other SAN types are ignored.
///
/// This only reads the certificate; the chain must already have been verified (for example by
/// [`SpiffeServerVerifier`] during the handshake).
pub fn peer_spiffe_id(peer_certs: &[CertificateDer<'_>]) -> Result<SpiffeId, SvidError> {
    let leaf = peer_certs.first().ok_or(SvidError::EmptyChain)?;
    let cert = parse_cert(leaf, 0)?;
    let uris = uri_sans(&cert, 0)?;
    uris.into_iter()
        .find_map(|u| SpiffeId::new(u).ok())
        .ok_or(SvidError::NoSpiffeId)
}
