//! A rustls certificate resolver fed by the manager: every handshake presents the identity's
//! current certificate, so a rotation needs no new TLS configuration.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::CertificateHandle;
use crate::bundle::SharedTrustBundles;
use crate::tls::{TlsConfigError, client_config_with_resolver, server_config_with_resolver};
use crate::verify::{IdentityPolicy, SpiffeClientVerifier, SpiffeServerVerifier};
use crate::x509::FetchedSvid;

/// Presents the current certificate of one identity held by a
/// [`CertificateManager`](super::CertificateManager), for servers
/// ([`ResolvesServerCert`]) and clients ([`ResolvesClientCert`]) alike.
///
/// Each handshake asks the [`CertificateHandle`] for the current certificate; its key is
/// loaded once per certificate and cached. While the identity has no valid certificate the
/// resolver has none to offer: a server then fails the handshake, a client sends no
/// certificate (and a server requiring one refuses it). Build configurations with
/// [`client_config`](Self::client_config) / [`server_config`](Self::server_config), or hand
/// the resolver to [`tls::client_config_with_resolver`] /
/// [`tls::server_config_with_resolver`] with a verifier of your own.
///
/// The certificate rotates through the resolver. The trust bundles are fixed when a
/// configuration is built from a [`TrustBundleSet`](crate::TrustBundleSet), and follow
/// every replacement when it is built from [`SharedTrustBundles`].
///
/// [`tls::client_config_with_resolver`]: crate::tls::client_config_with_resolver
/// [`tls::server_config_with_resolver`]: crate::tls::server_config_with_resolver
pub struct CertificateResolver {
    handle: CertificateHandle,
    provider: Arc<CryptoProvider>,
    /// The certificate last turned into a rustls key, and that key.
    cached: Mutex<Option<(Arc<FetchedSvid>, Arc<CertifiedKey>)>>,
}

impl fmt::Debug for CertificateResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateResolver")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl CertificateResolver {
    /// A resolver presenting the certificates of `handle`, whose keys `provider` loads.
    pub fn new(handle: CertificateHandle, provider: Arc<CryptoProvider>) -> Arc<Self> {
        Arc::new(Self {
            handle,
            provider,
            cached: Mutex::new(None),
        })
    }

    /// The handle whose certificates are presented.
    pub fn handle(&self) -> &CertificateHandle {
        &self.handle
    }

    /// The key the next handshake presents: the handle's current certificate with its key,
    /// or `None` while the identity has no valid certificate.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        let fetched = self.handle.current()?;
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((svid, key)) = cached.as_ref()
            && Arc::ptr_eq(svid, &fetched)
        {
            return Some(key.clone());
        }
        let svid = &fetched.svid;
        match CertifiedKey::from_der(
            svid.cert_chain().to_vec(),
            svid.private_key(),
            &self.provider,
        ) {
            Ok(key) => {
                let key = Arc::new(key);
                *cached = Some((fetched, key.clone()));
                Some(key)
            }
            Err(e) => {
                tracing::warn!(identity = %svid.spiffe_id(), error = %e, "certificate key cannot be used");
                None
            }
        }
    }

    /// A data-plane client configuration (as [`tls::client_config`](crate::tls::client_config))
    /// that presents this resolver's current certificate and accepts a server whose SVID
    /// chains to `roots` (fixed, or [`SharedTrustBundles`] followed at each handshake) and
    /// satisfies `expected`.
    pub fn client_config(
        self: &Arc<Self>,
        roots: impl Into<SharedTrustBundles>,
        expected: IdentityPolicy,
    ) -> Result<rustls::ClientConfig, TlsConfigError> {
        let verifier = SpiffeServerVerifier::builder(self.provider.clone())
            .roots(roots)
            .policy(expected)
            .build_server_verifier()?;
        client_config_with_resolver(self.provider.clone(), self.clone(), verifier)
    }

    /// A data-plane server configuration (as [`tls::server_config`](crate::tls::server_config))
    /// that presents this resolver's current certificate and requires a client whose SVID
    /// chains to `roots` (fixed, or [`SharedTrustBundles`] followed at each handshake) and
    /// satisfies `clients`.
    pub fn server_config(
        self: &Arc<Self>,
        roots: impl Into<SharedTrustBundles>,
        clients: IdentityPolicy,
    ) -> Result<rustls::ServerConfig, TlsConfigError> {
        let verifier = SpiffeClientVerifier::builder(self.provider.clone())
            .roots(roots)
            .policy(clients)
            .build_client_verifier()?;
        server_config_with_resolver(self.provider.clone(), self.clone(), verifier)
    }
}

impl ResolvesServerCert for CertificateResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for CertificateResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
