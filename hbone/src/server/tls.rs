//! Where the server gets its TLS configuration from.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;

use super::ConnectionInfo;

/// Supplies the rustls server configuration for an accepted connection (so that
/// certificates can rotate, or differ per listening address).
///
/// `Arc<rustls::ServerConfig>` implements it with a fixed configuration. Use
/// [`meshwire_svid::tls::server_config`]: it requires a client certificate from the trust domain.
pub trait ServerTlsProvider: Send + Sync + 'static {
    /// Why no configuration is available.
    type Error: StdError + Send + Sync + 'static;

    /// The configuration for the connection described by `info`.
    fn server_config(
        &self,
        info: &ConnectionInfo,
    ) -> impl Future<Output = Result<Arc<rustls::ServerConfig>, Self::Error>> + Send;
}

impl ServerTlsProvider for Arc<rustls::ServerConfig> {
    type Error = Infallible;

    async fn server_config(&self, _info: &ConnectionInfo) -> Result<Self, Infallible> {
        Ok(self.clone())
    }
}
