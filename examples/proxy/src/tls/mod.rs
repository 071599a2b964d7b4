//! TLS of the HBONE connections: client configurations for a pod's outbound pool and server
//! configurations for its 15008 listener, both built from the pod identity's certificate
//! ([`certs`]).

pub(crate) mod certs;

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use meshwire_hbone::client::{ClientTlsProvider, PoolKey};
use meshwire_hbone::server::{ConnectionInfo, ServerTlsProvider};
use meshwire_svid::{IdentityPolicy, SpiffeId};
use rustls::crypto::CryptoProvider;

use self::certs::{Certificates, Material};
use crate::dataplane::DataPlane;
use crate::pods::Pod;

/// TLS client configurations from the certificate of the key's source identity.
pub(crate) struct ClientTls {
    pub(crate) certs: Arc<dyn Certificates>,
    pub(crate) crypto: Arc<CryptoProvider>,
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
        let crypto = self.crypto.clone();
        let source = key.source.clone();
        let policy = key.expected_policy();
        async move {
            let m = certs
                .fetch(&source)
                .await
                .map_err(|e| TlsSetupError(format!("certificate for {source}: {e:#}")))?;
            meshwire_svid::tls::client_config(crypto, &m.svid, &m.roots, policy)
                .map(Arc::new)
                .map_err(|e| TlsSetupError(e.to_string()))
        }
    }
}

/// TLS server configuration of one pod: its certificate, clients of its trust domain.
pub(crate) struct PodServerTls {
    pub(crate) dp: Arc<DataPlane>,
    pub(crate) pod: Arc<Pod>,
    pub(crate) cache: Mutex<Option<(Arc<Material>, Arc<rustls::ServerConfig>)>>,
}

impl ServerTlsProvider for PodServerTls {
    type Error = TlsSetupError;

    async fn server_config(
        &self,
        _info: &ConnectionInfo,
    ) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
        {
            let local = self
                .dp
                .local_workload(&self.pod)
                .await
                .ok_or_else(|| TlsSetupError("the pod's xDS workload is unknown".into()))?;
            let id =
                SpiffeId::try_from(local.identity()).map_err(|e| TlsSetupError(e.to_string()))?;
            let material = self
                .dp
                .certs()
                .fetch(&id)
                .await
                .map_err(|e| TlsSetupError(format!("certificate for {id}: {e:#}")))?;
            {
                let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((m, cfg)) = cache.as_ref()
                    && Arc::ptr_eq(m, &material)
                {
                    return Ok(cfg.clone());
                }
            }
            let policy = IdentityPolicy::SameTrustDomain(id.trust_domain().clone());
            let cfg = Arc::new(
                meshwire_svid::tls::server_config(
                    self.dp.crypto().clone(),
                    &material.svid,
                    &material.roots,
                    policy,
                )
                .map_err(|e| TlsSetupError(e.to_string()))?,
            );
            *self.cache.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((material, cfg.clone()));
            Ok(cfg)
        }
    }
}
