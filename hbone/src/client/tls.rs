//! Where the pool gets its TLS client configurations from.

use std::future::Future;
use std::sync::Arc;

use meshwire_svid::{SpiffeId, TrustBundleSet, X509Svid};

use super::PoolKey;

/// Supplies the rustls client configuration for a pool key: the source identity's SVID
/// and a verifier for the key's expected identities.
pub trait ClientTlsProvider: Send + Sync + 'static {
    /// Why no configuration is available (for example no certificate yet).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The configuration for connections of `key`.
    fn client_config(
        &self,
        key: &PoolKey,
    ) -> impl Future<Output = Result<Arc<rustls::ClientConfig>, Self::Error>> + Send;
}

/// Why [`SvidClientTls`] could not make a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SvidClientTlsError {
    /// The key asks for a source identity this provider does not hold.
    #[error("no SVID for source identity {0}")]
    UnknownSource(SpiffeId),
    /// Building the configuration failed.
    #[error(transparent)]
    Config(#[from] meshwire_svid::tls::TlsConfigError),
}

/// A [`ClientTlsProvider`] holding one SVID: builds [`meshwire_svid::tls::client_config`] with the
/// key's expected identities.
#[derive(Debug, Clone)]
pub struct SvidClientTls {
    provider: Arc<rustls::crypto::CryptoProvider>,
    svid: X509Svid,
    roots: TrustBundleSet,
}

impl SvidClientTls {
    /// A provider presenting `svid` and trusting `roots`.
    pub fn new(
        provider: Arc<rustls::crypto::CryptoProvider>,
        svid: X509Svid,
        roots: TrustBundleSet,
    ) -> Self {
        Self {
            provider,
            svid,
            roots,
        }
    }
}

impl ClientTlsProvider for SvidClientTls {
    type Error = SvidClientTlsError;

    async fn client_config(
        &self,
        key: &PoolKey,
    ) -> Result<Arc<rustls::ClientConfig>, SvidClientTlsError> {
        if &key.source != self.svid.spiffe_id() {
            return Err(SvidClientTlsError::UnknownSource(key.source.clone()));
        }
        Ok(Arc::new(meshwire_svid::tls::client_config(
            self.provider.clone(),
            &self.svid,
            &self.roots,
            key.expected_policy(),
        )?))
    }
}
