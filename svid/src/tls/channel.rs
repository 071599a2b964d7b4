//! A tonic channel over rustls for the control plane.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::ControlPlaneTlsError;

/// A lazily connecting tonic [`Channel`] to `uri` (`https://host:port`) over rustls with
/// `config`. The server name checked is the URI's host, or `server_name` when given (for a
/// certificate issued for another name than the address dialled). Connections are made on
/// first use and re-made after failures.
pub fn channel(
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
