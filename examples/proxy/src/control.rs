//! Connections to the control plane (xDS and CA): gRPC over TLS verified against a configured
//! root, with the bearer token and cluster id headers.

use std::fs;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, bail};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

/// Reads root certificates: `value` is a path to a PEM file when such a file exists, else it is
/// taken as inline PEM.
pub(crate) fn load_roots(value: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = if Path::new(value).is_file() {
        fs::read(value).with_context(|| format!("reading {value}"))?
    } else if value.contains("-----BEGIN") {
        value.as_bytes().to_vec()
    } else {
        bail!("root certificate {value:?}: no such file");
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing PEM certificates of {value:?}"))?;
    if certs.is_empty() {
        bail!("{value:?} holds no certificate");
    }
    Ok(certs)
}

/// A rustls client configuration for the control plane: TLS 1.3 (and 1.2), ALPN `h2`, server
/// certificate verified against `roots` for the host name of the address.
pub(crate) fn tls_config(
    roots: &[CertificateDer<'static>],
) -> anyhow::Result<rustls::ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .context("adding a control-plane root")?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A lazily connected gRPC channel to `address` over TLS (reconnects on its own).
pub(crate) fn channel(address: &str, roots: &[CertificateDer<'static>]) -> anyhow::Result<Channel> {
    let connector = connector(address, roots)?;
    let endpoint = Endpoint::from_shared(address.to_owned())
        .with_context(|| format!("{address:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Some(Duration::from_secs(300)))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_with_connector_lazy(connector))
}

fn connector(address: &str, roots: &[CertificateDer<'static>]) -> anyhow::Result<TlsConnect> {
    let uri: Uri = address.parse().with_context(|| format!("{address:?}"))?;
    let host = uri
        .host()
        .with_context(|| format!("{address:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.clone())
            .with_context(|| format!("{host:?} is not a valid server name"))?,
    };
    Ok(TlsConnect {
        tls: TlsConnector::from(Arc::new(tls_config(roots)?)),
        host,
        port,
        server_name,
    })
}

/// Connector handed to tonic: TCP to the configured host and port, then TLS.
#[derive(Clone)]
struct TlsConnect {
    tls: TlsConnector,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

impl tower::Service<Uri> for TlsConnect {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((this.host.as_str(), this.port)).await?;
            tcp.set_nodelay(true)?;
            let tls = this.tls.connect(this.server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Bearer token source: re-read per request from a file, or a literal token.
#[derive(Debug, Clone)]
pub(crate) struct Token(Option<String>);

impl Token {
    pub(crate) fn new(value: Option<String>) -> Self {
        Self(value.filter(|v| !v.is_empty()))
    }

    /// The current token, if any (a file that vanished gives none).
    pub(crate) fn get(&self) -> Option<String> {
        let value = self.0.as_deref()?;
        let path = Path::new(value);
        if path.is_file() {
            fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        } else if value.starts_with('/') {
            // Meant as a path that does not exist (yet).
            None
        } else {
            Some(value.to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let token = Token::new(Some(path.to_string_lossy().into_owned()));
        assert_eq!(token.get(), None);
        fs::write(&path, "abc\n").unwrap();
        assert_eq!(token.get().as_deref(), Some("abc"));
        fs::write(&path, "def").unwrap();
        assert_eq!(token.get().as_deref(), Some("def"));
        assert_eq!(
            Token::new(Some("literal".into())).get().as_deref(),
            Some("literal")
        );
        assert_eq!(Token::new(None).get(), None);
        assert_eq!(Token::new(Some(String::new())).get(), None);
    }

    /// A TLS server with a certificate for 127.0.0.1 from a fresh CA; returns its address and
    /// the CA root in PEM.
    async fn tls_server() -> (std::net::SocketAddr, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let td = svid::TrustDomain::new("cluster.local").unwrap();
        let ca = svid::CertificateAuthority::generate_root(&td, svid::CaConfig::default()).unwrap();
        let (chain, key) = ca
            .issue_server_cert(
                &["localhost"],
                &["127.0.0.1".parse().unwrap()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                        let _ = tls.write_all(&alpn.unwrap_or_default()).await;
                        let _ = tls.shutdown().await;
                        let _ = tls.read(&mut [0u8; 1]).await;
                    }
                });
            }
        });
        (addr, ca.root_pem())
    }

    #[tokio::test]
    async fn connector_verifies_the_server_against_the_root() {
        use tokio::io::AsyncReadExt;
        use tower::Service;
        let (addr, root_pem) = tls_server().await;
        let dir = tempfile::tempdir().unwrap();
        let root_file = dir.path().join("root-cert.pem");
        fs::write(&root_file, &root_pem).unwrap();
        let roots = load_roots(root_file.to_str().unwrap()).unwrap();
        assert_eq!(
            load_roots(&root_pem).unwrap(),
            roots,
            "inline PEM gives the same roots"
        );

        let mut good = connector(&format!("https://{addr}"), &roots).unwrap();
        let io = good.call(Uri::default()).await.unwrap();
        let mut tls = io.into_inner();
        let mut alpn = Vec::new();
        tls.read_to_end(&mut alpn).await.unwrap();
        assert_eq!(alpn, b"h2");

        // Another CA's root does not verify the server.
        let other = svid::CertificateAuthority::generate_root(
            &svid::TrustDomain::new("cluster.local").unwrap(),
            svid::CaConfig::default(),
        )
        .unwrap();
        let other_roots = load_roots(&other.root_pem()).unwrap();
        let mut bad = connector(&format!("https://{addr}"), &other_roots).unwrap();
        assert!(bad.call(Uri::default()).await.is_err());
        // A name the certificate does not carry is refused.
        let mut wrong_name =
            connector(&format!("https://istiod.example:{}", addr.port()), &roots).unwrap();
        wrong_name.host = "127.0.0.1".into();
        assert!(wrong_name.call(Uri::default()).await.is_err());
        // The channel itself builds lazily.
        assert!(channel(&format!("https://{addr}"), &roots).is_ok());
    }

    #[test]
    fn roots_from_missing_file_fail() {
        assert!(load_roots("/nonexistent/root-cert.pem").is_err());
        assert!(
            load_roots("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
