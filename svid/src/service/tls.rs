//! TLS plumbing for the control-plane gRPC endpoint: accepted TLS connections that carry the
//! client's verified identity into tonic, a server config helper, and a channel builder.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

use crate::bundle::TrustBundleSet;
use crate::id::SpiffeId;
use crate::service::server::{Authorizer, CertificateService};
use crate::svid::{X509Svid, certs_from_pem, peer_spiffe_id};
use crate::verifier::{IdentityPolicy, SpiffeClientVerifier, VerifierBuilderError};

/// The default of [`TlsIncomingConfig::handshake_timeout`].
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What tonic request handlers see about the connection (as a request extension) when the
/// server accepts through [`tls_incoming`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The client's certificate chain, if it presented one (verified by the server config).
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The first SPIFFE ID of the client's leaf, if it presented a certificate.
    pub peer_identity: Option<SpiffeId>,
}

/// A server-side TLS connection accepted by [`tls_incoming`].
#[derive(Debug)]
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl TlsConnection {
    /// What is known about the peer.
    pub fn peer_info(&self) -> &PeerInfo {
        &self.info
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A stream of TLS connections for `tonic::transport::Server::serve_with_incoming`.
///
/// TCP accepts run on a background task; each handshake runs on its own task with a time
/// limit, so a slow client cannot hold up others, and at most
/// [`TlsIncomingConfig::max_concurrent_handshakes`] run at once. Failed handshakes are
/// logged and skipped. The background task ends when the stream is dropped.
pub type TlsIncoming = tokio_stream::wrappers::ReceiverStream<io::Result<TlsConnection>>;

/// Limits for the handshakes of [`tls_incoming_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TlsIncomingConfig {
    /// How long an accepted TCP connection may take to finish its TLS handshake. Default
    /// 10 s.
    pub handshake_timeout: Duration,
    /// How many TLS handshakes may run at once. Default 256.
    ///
    /// While all slots are taken the listener accepts nothing: further connections wait in
    /// the kernel's listen backlog (and beyond it the kernel refuses them) until a handshake
    /// ends. This bounds the tasks, memory and CPU that clients which never finish their
    /// handshakes can hold. `0` is treated as `1`.
    pub max_concurrent_handshakes: usize,
}

impl Default for TlsIncomingConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_concurrent_handshakes: 256,
        }
    }
}

/// Accepts TCP connections on `listener` and completes TLS handshakes with `config`, yielding
/// connections whose [`PeerInfo`] reaches tonic handlers as a request extension.
///
/// Uses the default [`TlsIncomingConfig`] (10 s per handshake, at most 256 at once); see
/// [`tls_incoming_with`].
///
/// The client identity in [`PeerInfo`] is only as trustworthy as `config`'s client
/// certificate verifier; [`control_plane_server_config`] verifies against trust bundles.
pub fn tls_incoming(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> TlsIncoming {
    tls_incoming_with(listener, config, TlsIncomingConfig::default())
}

/// [`tls_incoming`] with explicit handshake limits.
pub fn tls_incoming_with(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: TlsIncomingConfig,
) -> TlsIncoming {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(
        limits
            .max_concurrent_handshakes
            .clamp(1, Semaphore::MAX_PERMITS),
    ));
    let timeout = limits.handshake_timeout;
    tokio::spawn(async move {
        loop {
            // Take a handshake slot before accepting, so that excess connections stay in
            // the listen backlog.
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    // The semaphore is never closed.
                    Err(_) => return,
                },
                () = tx.closed() => return,
            };
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = tx.closed() => return,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Avoid a hot loop on persistent errors such as EMFILE.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(timeout, acceptor.accept(tcp));
                let result = handshake.await;
                drop(permit);
                let stream = match result {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote_addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote_addr, "TLS handshake timed out");
                        return;
                    }
                };
                let certs = stream.get_ref().1.peer_certificates().map(|c| {
                    Arc::new(c.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>())
                });
                let peer_identity = certs.as_ref().and_then(|c| peer_spiffe_id(c).ok());
                let info = PeerInfo {
                    remote_addr,
                    peer_certificates: certs,
                    peer_identity,
                };
                let _ = tx.send(Ok(TlsConnection { stream, info })).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Runs `service` alone over TLS on `listener` until `shutdown` completes.
pub async fn serve_tls<A: Authorizer>(
    service: CertificateService<A>,
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(tls_incoming(listener, config), shutdown)
        .await
}

/// Why a control-plane TLS configuration or channel could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlPlaneTlsError {
    /// rustls refused the configuration.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error(transparent)]
    Verifier(#[from] VerifierBuilderError),
    /// The root PEM held no usable certificate.
    #[error("no usable root certificate: {0}")]
    Roots(String),
    /// The endpoint URI is unusable.
    #[error("endpoint {uri:?}: {reason}")]
    Endpoint {
        /// The URI given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A server configuration for the control-plane gRPC endpoint: presents `cert_chain`/`key`
/// (for example from [`CertificateAuthority::issue_server_cert`](crate::CertificateAuthority::issue_server_cert)),
/// TLS 1.3, ALPN `h2`.
///
/// With `client_roots`, clients *may* present an X.509-SVID; a presented one must chain to the
/// bundles and satisfy the policy, and its identity reaches the authorizer. Clients without a
/// certificate are still accepted (they authenticate with a bearer token).
pub fn control_plane_server_config(
    provider: Arc<CryptoProvider>,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: Option<(TrustBundleSet, IdentityPolicy)>,
) -> Result<rustls::ServerConfig, ControlPlaneTlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_roots {
        Some((roots, policy)) => {
            let verifier = SpiffeClientVerifier::builder(provider)
                .roots(roots)
                .policy(policy)
                .client_auth_optional()
                .build_client_verifier()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(cert_chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A client configuration for the control-plane channel: trusts the roots in `root_pem`,
/// verifies the server's DNS name or IP address normally (webpki), TLS 1.3, ALPN `h2`, and
/// presents `client` when given.
pub fn control_plane_client_config(
    provider: Arc<CryptoProvider>,
    root_pem: &[u8],
    client: Option<&X509Svid>,
) -> Result<rustls::ClientConfig, ControlPlaneTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = certs_from_pem(root_pem).map_err(|e| ControlPlaneTlsError::Roots(e.to_string()))?;
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ControlPlaneTlsError::Roots("no certificate in PEM".into()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some(svid) => {
            builder.with_client_auth_cert(svid.cert_chain().to_vec(), svid.private_key())?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A lazily connecting tonic [`Channel`] to `uri` (`https://host:port`) over rustls with
/// `config`. The server name checked is the URI's host, or `server_name` when given (for a
/// certificate issued for another name than the address dialled). Connections are made on
/// first use and re-made after failures.
pub fn tls_channel(
    uri: &str,
    config: Arc<rustls::ClientConfig>,
    server_name: Option<&str>,
) -> Result<Channel, ControlPlaneTlsError> {
    let bad = |reason: &str| ControlPlaneTlsError::Endpoint {
        uri: uri.to_owned(),
        reason: reason.to_owned(),
    };
    let endpoint = Endpoint::from_shared(uri.to_owned()).map_err(|e| bad(&e.to_string()))?;
    let parsed = endpoint.uri().clone();
    if parsed.scheme_str() != Some("https") {
        return Err(bad("scheme must be https"));
    }
    let host = parsed.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed.port_u16().unwrap_or(443);
    let name = server_name.map_or_else(|| host.clone(), str::to_owned);
    let server_name = ServerName::try_from(name).map_err(|e| bad(&e.to_string()))?;
    let connector = TlsConnector::from(config);
    let connect = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let host = host.clone();
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(connect))
}
