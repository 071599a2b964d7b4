//! Control-plane plumbing: the root that signs the xDS/CA serving certificate, the gRPC
//! channels (TLS, or plaintext on the agent's unix socket for xDS), and the bearer token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use meshwire_xds_workload::WorkloadStore;
use meshwire_xds_workload::ads::client::{AdsClient, ClientConfig, NodeInfo, StoreHandler};
use rustls::crypto::CryptoProvider;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::{Config, XdsEndpoint};

/// Reads root certificates in PEM: `value` names a file when such a file exists, otherwise it
/// must be inline PEM.
pub(crate) fn read_root_pem(value: &str) -> anyhow::Result<Vec<u8>> {
    let path = Path::new(value);
    let pem = if path.is_file() {
        std::fs::read(path).with_context(|| format!("reading {value}"))?
    } else if value.contains("-----BEGIN") {
        value.as_bytes().to_vec()
    } else {
        bail!("root certificate file {value} does not exist");
    };
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        bail!("{value}: no PEM certificate");
    }
    Ok(pem)
}

/// Like [`read_root_pem`], but waits (polling every 500 ms) while the file does not exist yet
/// (the agent writes it when it starts). `None` when `stop` fired first.
pub(crate) async fn wait_for_root_pem(value: &str, stop: &CancellationToken) -> Option<Vec<u8>> {
    let mut warned = false;
    loop {
        match read_root_pem(value) {
            Ok(pem) => return Some(pem),
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %crate::error_text::chain(&e), "waiting for the control-plane root certificate");
                    warned = true;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// A lazily connecting gRPC channel to `address` over TLS 1.3, verifying the server against
/// `root_pem` for the address's host (an IP or DNS name).
pub(crate) fn channel(
    address: &str,
    root_pem: &[u8],
    crypto: Arc<CryptoProvider>,
) -> anyhow::Result<Channel> {
    let tls = meshwire_svid::tls::control_plane_client_config(crypto, root_pem, None)
        .context("control-plane TLS configuration")?;
    meshwire_svid::tls::channel(address, Arc::new(tls), None)
        .with_context(|| format!("control-plane channel to {address}"))
}

/// How long a connection to the agent's xDS unix socket may take.
const UNIX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The channel workload xDS is read over, with the root that verifies its server (`None` on
/// a unix socket, where no TLS is spoken and `XDS_ROOT_CA` is not read). For TLS, waits for
/// the root file; `None` when `stop` fired first.
pub(crate) async fn xds_channel(
    config: &Config,
    crypto: &Arc<CryptoProvider>,
    stop: &CancellationToken,
) -> anyhow::Result<Option<(Channel, Option<Vec<u8>>)>> {
    match &config.xds_address {
        XdsEndpoint::Unix(path) => Ok(Some((
            meshwire_svid::uds::channel(path.clone(), UNIX_CONNECT_TIMEOUT),
            None,
        ))),
        XdsEndpoint::Tls(uri) => {
            let Some(root) = wait_for_root_pem(&config.xds_root_ca, stop).await else {
                return Ok(None);
            };
            Ok(Some((channel(uri, &root, crypto.clone())?, Some(root))))
        }
    }
}

/// The workload xDS client of the proxy: announced with the configured node identity and
/// cluster, with its bearer token, feeding `store`, over `xds_channel` (see [`xds_channel`]).
pub(crate) fn ads_client(
    config: &Config,
    xds_channel: Channel,
    token: Option<&TokenValue>,
    store: Arc<WorkloadStore>,
) -> anyhow::Result<AdsClient<StoreHandler>> {
    let mut xds_config = ClientConfig::default();
    xds_config.node = NodeInfo::proxy(
        config.instance_ip,
        &config.pod_name,
        &config.pod_namespace,
        &config.node_name,
    )
    .with_metadata("CLUSTER_ID", config.cluster_id.as_str());
    xds_config.cluster_id = Some(config.cluster_id.clone());
    xds_config.token = token.map(TokenValue::for_xds);
    AdsClient::new(xds_config, xds_channel, StoreHandler::new(store))
        .map_err(|e| anyhow::anyhow!("xDS client: {e}"))
}

/// The certificate service client of the proxy: certificates of the configured lifetime for
/// the identities of its pods (impersonation), from `address` over TLS verified against
/// `root_pem`.
pub(crate) fn ca_client(
    config: &Config,
    address: &str,
    root_pem: &[u8],
    token: Option<&TokenValue>,
    crypto: &Arc<CryptoProvider>,
) -> anyhow::Result<meshwire_svid::service::client::CaClient> {
    let ca_channel = channel(address, root_pem, crypto.clone())?;
    let mut ca_config = meshwire_svid::service::client::CaClientConfig::default();
    ca_config.cluster_id = config.cluster_id.clone();
    ca_config.ttl = config.secret_ttl;
    ca_config.impersonate = true;
    if let Some(t) = token {
        ca_config.token = t.for_ca();
    }
    Ok(meshwire_svid::service::client::CaClient::new(
        ca_channel, ca_config,
    ))
}

/// Where the bearer token comes from: `AUTH_TOKEN` names a file (read again for every
/// request), unless it contains no `/` and no such file exists: then it is the token itself.
/// A path whose file does not exist yet (a projected token still being mounted) stays a path,
/// so it is never sent as a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenValue {
    File(PathBuf),
    Literal(String),
}

impl TokenValue {
    pub(crate) fn parse(value: Option<&str>) -> Option<Self> {
        let value = value?.trim();
        if value.is_empty() {
            return None;
        }
        let path = Path::new(value);
        Some(if value.contains('/') || path.is_file() {
            Self::File(path.to_path_buf())
        } else {
            Self::Literal(value.to_owned())
        })
    }

    pub(crate) fn for_ca(&self) -> meshwire_svid::service::client::Token {
        match self {
            Self::File(p) => meshwire_svid::service::client::Token::File(p.clone()),
            Self::Literal(t) => meshwire_svid::service::client::Token::Static(t.clone()),
        }
    }

    pub(crate) fn for_xds(&self) -> meshwire_xds_workload::ads::client::TokenSource {
        match self {
            Self::File(p) => meshwire_xds_workload::ads::client::TokenSource::File(p.clone()),
            Self::Literal(t) => meshwire_xds_workload::ads::client::TokenSource::Static(t.clone()),
        }
    }
}

/// Logs what the xDS client reports (connects, disconnects, applied and rejected resources)
/// until it stops.
pub(crate) async fn log_xds_events(
    mut events: tokio::sync::broadcast::Receiver<meshwire_xds_workload::ads::client::ClientEvent>,
) {
    use meshwire_xds_workload::ads::client::ClientEvent;
    while let Ok(event) = events.recv().await {
        match event {
            ClientEvent::Connected => tracing::info!("xDS stream connected"),
            ClientEvent::Disconnected {
                reason, retry_in, ..
            } => {
                tracing::warn!(%reason, retry_in_ms = retry_in.as_millis() as u64, "xDS stream ended");
            }
            ClientEvent::Applied {
                type_url,
                resources,
                removed,
                rejected,
                ..
            } => {
                tracing::debug!(%type_url, resources, removed, rejected = rejected.len(), "xDS response applied");
                for r in rejected {
                    tracing::warn!(rejection = ?r, "xDS resource rejected");
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_pem() -> String {
        meshwire_svid::test_util::TestPki::new("cluster.local")
            .ca()
            .root_pem()
    }

    #[test]
    fn roots_from_file_or_inline() {
        let pem = root_pem();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("root-cert.pem");
        std::fs::write(&file, &pem).unwrap();
        assert_eq!(
            read_root_pem(file.to_str().unwrap()).unwrap(),
            pem.as_bytes()
        );
        assert_eq!(read_root_pem(&pem).unwrap(), pem.as_bytes());
        assert!(read_root_pem("/nonexistent/root-cert.pem").is_err());
        std::fs::write(&file, "garbage").unwrap();
        assert!(read_root_pem(file.to_str().unwrap()).is_err());
    }

    #[tokio::test]
    async fn waits_for_the_root_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("root-cert.pem");
        let value = file.to_string_lossy().into_owned();
        let stop = CancellationToken::new();
        let waiter = tokio::spawn({
            let stop = stop.clone();
            async move { wait_for_root_pem(&value, &stop).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished());
        std::fs::write(&file, root_pem()).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(got.is_some());

        let stop_now = CancellationToken::new();
        stop_now.cancel();
        assert_eq!(
            wait_for_root_pem("/nonexistent/x.pem", &stop_now).await,
            None
        );
    }

    #[tokio::test]
    async fn channel_needs_https_and_a_root() {
        let crypto = meshwire_svid::provider::ring();
        let pem = root_pem();
        assert!(channel("https://127.0.0.1:15012", pem.as_bytes(), crypto.clone()).is_ok());
        assert!(channel("https://127.0.0.1:15012", b"no pem", crypto).is_err());
    }

    /// Accepts one plaintext HTTP/2 connection on `listener` and returns the path and headers
    /// of its first request.
    async fn first_plaintext_request(
        listener: tokio::net::UnixListener,
    ) -> (String, http::HeaderMap) {
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(stream).await.unwrap();
        let (request, _respond) = conn.accept().await.unwrap().unwrap();
        (request.uri().path().to_owned(), request.headers().clone())
    }

    #[tokio::test]
    async fn xds_over_a_unix_socket_is_plaintext_and_keeps_the_headers() {
        use clap::Parser as _;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("xds.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let address = format!("unix://{}", socket.display());
        let config = crate::config::Cli::try_parse_from([
            "proxy",
            "--node-name",
            "node-1",
            "--xds-address",
            &address,
            // Never read: nothing exists there, and waiting for it would hang the test.
            "--xds-root-ca",
            "/nonexistent/root-cert.pem",
            "--spire-enabled",
            "true",
            "--auth-token-file",
            "secret-token",
            "--cluster-id",
            "cluster-7",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        let stop = CancellationToken::new();
        let crypto = meshwire_svid::provider::ring();
        let (xds, root) =
            tokio::time::timeout(Duration::from_secs(5), xds_channel(&config, &crypto, &stop))
                .await
                .expect("no wait for a root certificate")
                .unwrap()
                .unwrap();
        assert_eq!(root, None);
        let token = TokenValue::parse(config.auth_token.as_deref());
        let store = Arc::new(WorkloadStore::new());
        let ads = ads_client(&config, xds, token.as_ref(), store).unwrap();
        let running = tokio::spawn(ads.run(stop.clone().cancelled_owned()));

        // The listener speaks HTTP/2 without TLS: the handshake succeeding proves plaintext.
        let (path, headers) =
            tokio::time::timeout(Duration::from_secs(10), first_plaintext_request(listener))
                .await
                .unwrap();
        assert_eq!(
            path,
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
        );
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header("authorization"), Some("Bearer secret-token"));
        assert_eq!(header("clusterid"), Some("cluster-7"));
        stop.cancel();
        let _ = running.await;
    }

    #[test]
    fn token_file_or_literal() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "abc").unwrap();
        assert_eq!(
            TokenValue::parse(file.to_str()),
            Some(TokenValue::File(file.clone()))
        );
        assert_eq!(
            TokenValue::parse(Some("secret")),
            Some(TokenValue::Literal("secret".into()))
        );
        assert_eq!(
            TokenValue::parse(Some("/var/run/secrets/tokens/not-yet-mounted")),
            Some(TokenValue::File(PathBuf::from(
                "/var/run/secrets/tokens/not-yet-mounted"
            )))
        );
        assert_eq!(TokenValue::parse(Some(" ")), None);
        assert_eq!(TokenValue::parse(None), None);
        assert!(matches!(
            TokenValue::Literal("t".into()).for_xds(),
            meshwire_xds_workload::ads::client::TokenSource::Static(t) if t == "t"
        ));
    }
}
