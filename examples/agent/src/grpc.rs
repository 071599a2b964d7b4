//! The agent's gRPC endpoints: workload xDS and the certificate service on one TLS port, and
//! optionally xDS in plaintext on a unix socket.
//!
//! Both endpoints admit only node proxies. On the TLS port an xDS stream must come from a
//! caller the CA recognises ([`XdsGate`], [`Authenticator`]: a node client certificate, a
//! proxy token, a reviewed projected service-account token, or, in file-source demo mode,
//! this node's loopback); the unix socket is created with mode 0600, so only its owner
//! (root) can connect.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use meshwire_svid::service::server::CertificateService;
use meshwire_svid::{IdentityPolicy, TrustBundleSet, TrustDomain};
use meshwire_xds_workload::ads::server::AdsServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::ca::authn::Authenticator;
use crate::ca::files::CaMaterial;
use crate::ca::service::NodeAuthorizer;

mod gate;

pub(crate) use gate::XdsGate;

/// Mode of the plaintext xDS unix socket: only its owner may connect.
pub(crate) const XDS_SOCKET_MODE: u32 = 0o600;

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

/// Serves xDS (to the callers `authenticator` recognises) and the certificate service over
/// TLS on `listener` until `shutdown`.
pub(crate) async fn serve_tls(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    ads: AdsServer,
    authenticator: Arc<Authenticator>,
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
        .add_service(XdsGate::new(ads.service(), authenticator))
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

/// Binds the plaintext xDS socket with mode [`XDS_SOCKET_MODE`], creating its directory and
/// replacing a stale socket (but nothing else) at `path`.
///
/// There is no moment at which another user can connect: the socket is bound inside a new
/// directory only its owner can enter, given its mode there, and only then linked at `path`
/// (a link fails rather than replace whatever appeared at `path` meanwhile).
pub(crate) fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.to_owned()
        }
        None => PathBuf::from("."),
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(_) => {}
    }
    let private = dir.join(format!(
        ".{}.{}.bind",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    // A leftover of an earlier run of this process id (the agent was killed mid-way).
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let bound = bind_private(&private, path);
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Binds in the private directory `private`, sets the mode, links the socket at `path`.
fn bind_private(private: &Path, path: &Path) -> anyhow::Result<UnixListener> {
    let inner = private.join("xds.sock");
    let listener = UnixListener::bind(&inner)
        .with_context(|| format!("binding the xDS unix socket {}", path.display()))?;
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(XDS_SOCKET_MODE))
        .with_context(|| format!("setting the mode of {}", inner.display()))?;
    std::fs::hard_link(&inner, path)
        .with_context(|| format!("placing the xDS unix socket at {}", path.display()))?;
    Ok(listener)
}

#[cfg(test)]
pub(crate) mod tests;
