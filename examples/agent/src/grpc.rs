//! The agent's gRPC endpoints: workload xDS and the certificate service on one TLS port, and
//! optionally xDS in plaintext on a unix socket.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use meshwire_svid::service::server::CertificateService;
use meshwire_svid::{IdentityPolicy, TrustBundleSet, TrustDomain};
use meshwire_xds_workload::ads::server::AdsServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::ca::files::CaMaterial;
use crate::ca::service::NodeAuthorizer;

/// The TLS configuration of the gRPC port: the serving certificate issued by the agent's CA,
/// and client certificates of the trust domain accepted (not required).
pub(crate) fn tls_config(
    ca: &CaMaterial,
    trust_domain: &TrustDomain,
) -> anyhow::Result<rustls::ServerConfig> {
    let mut client_roots = TrustBundleSet::default();
    client_roots.insert(ca.ca.bundle());
    meshwire_svid::tls::control_plane_server_config(
        meshwire_svid::provider::ring(),
        ca.serving_chain.clone(),
        ca.serving_key.clone_key(),
        Some((
            client_roots,
            IdentityPolicy::SameTrustDomain(trust_domain.clone()),
        )),
    )
    .context("building the gRPC TLS configuration")
}

/// Serves xDS and the certificate service over TLS on `listener` until `shutdown`.
pub(crate) async fn serve_tls(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    ads: AdsServer,
    certificates: CertificateService<NodeAuthorizer>,
    shutdown: CancellationToken,
) {
    let incoming = meshwire_svid::tls::incoming(listener, Arc::new(tls));
    let stop = {
        let ads = ads.clone();
        async move {
            shutdown.cancelled().await;
            // Ends the open xDS streams and refuses new ones, so a proxy that reconnects at
            // once cannot hold the graceful shutdown open.
            ads.close();
        }
    };
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(ads.service())
        .add_service(certificates.into_server())
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    if let Err(e) = served {
        error!(error = %e, "xDS/CA server failed");
    }
}

/// Serves xDS in plaintext on `listener` until `shutdown`.
pub(crate) async fn serve_unix(
    listener: UnixListener,
    ads: AdsServer,
    shutdown: CancellationToken,
) {
    if let Err(e) = ads.serve_unix(listener, shutdown.cancelled_owned()).await {
        error!(error = %e, "xDS unix socket server failed");
    }
}

/// Binds the plaintext xDS socket, creating its directory and replacing a stale socket (but
/// nothing else) at `path`.
pub(crate) fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(_) => {}
    }
    UnixListener::bind(path)
        .with_context(|| format!("binding the xDS unix socket {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_other_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("xds.sock");
        let first = bind_unix(&path).unwrap();
        drop(first);
        let _second = bind_unix(&path).expect("stale socket replaced");

        let file = dir.path().join("file");
        std::fs::write(&file, "keep").unwrap();
        let e = bind_unix(&file).unwrap_err().to_string();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    }
}
