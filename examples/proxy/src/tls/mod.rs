//! TLS of the HBONE connections: client configurations for a pod's outbound pool and server
//! configurations for its 15008 listener, both presenting the pod identity's current
//! certificate through the certificate manager's resolver ([`certs`]).

pub(crate) mod certs;

use std::future::Future;
use std::sync::Arc;

use meshwire_hbone::client::{ClientTlsProvider, PoolKey};
use meshwire_hbone::server::{ConnectionInfo, ServerTlsProvider};
use meshwire_svid::SpiffeId;

use self::certs::Certificates;
use crate::dataplane::DataPlane;
use crate::error_text::chain;
use crate::pods::Pod;

/// TLS client configurations from the certificate of the key's source identity.
pub(crate) struct ClientTls {
    pub(crate) certs: Arc<dyn Certificates>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TlsSetupError(String);

impl ClientTlsProvider for ClientTls {
    type Error = TlsSetupError;

    fn client_config(
        &self,
        key: &PoolKey,
    ) -> impl Future<Output = Result<Arc<rustls::ClientConfig>, TlsSetupError>> + Send {
        let certs = self.certs.clone();
        let source = key.source.clone();
        let policy = key.expected_policy();
        async move {
            certs
                .client_config(&source, policy)
                .await
                .map_err(|e| TlsSetupError(format!("certificate for {source}: {}", chain(&e))))
        }
    }
}

/// TLS server configuration of one pod: its certificate, clients of its trust domain.
pub(crate) struct PodServerTls {
    pub(crate) dp: Arc<DataPlane>,
    pub(crate) pod: Arc<Pod>,
}

impl ServerTlsProvider for PodServerTls {
    type Error = TlsSetupError;

    async fn server_config(
        &self,
        _info: &ConnectionInfo,
    ) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
        let local = self
            .dp
            .local_workload(&self.pod)
            .await
            .ok_or_else(|| TlsSetupError("the pod's xDS workload is unknown".into()))?;
        let id = SpiffeId::try_from(local.identity()).map_err(|e| TlsSetupError(e.to_string()))?;
        self.dp
            .certs()
            .server_config(&id)
            .await
            .map_err(|e| TlsSetupError(format!("certificate for {id}: {}", chain(&e))))
    }
}
