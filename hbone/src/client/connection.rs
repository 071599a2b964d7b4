//! A single HBONE client connection: TLS 1.3 + HTTP/2, one CONNECT stream per tunnel.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::StatusCode;
use meshwire_svid::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};

use super::ClientError;
use crate::config::Http2Config;
use crate::keepalive::{ClientDriver, ClientExit};
use crate::request::{ConnectRequest, ConnectResponse, Rejection};
use crate::tls_io::{BufferedIo, TLS_SEND_BUFFER, buffered};
use crate::tunnel::{StreamSlot, Tunnel};

/// The name used for the TLS handshake. SNI is disabled on HBONE and the SPIFFE
/// verifier ignores the name, so a fixed placeholder is used.
pub(crate) fn placeholder_server_name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into())
}

/// TLS client handshake; returns the stream and the server's SPIFFE ID.
pub(crate) async fn tls_connect<T>(
    io: T,
    tls: Arc<rustls::ClientConfig>,
) -> Result<
    (
        tokio_rustls::client::TlsStream<BufferedIo<T>>,
        Option<SpiffeId>,
    ),
    ClientError,
>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(placeholder_server_name(), buffered(io))
        .await
        .map_err(|e| ClientError::Tls(Arc::new(e)))?;
    stream.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| meshwire_svid::tls::peer_spiffe_id(c).ok());
    Ok((stream, peer))
}

/// HTTP/2 client handshake over an established (secured) stream; spawns the driver.
pub(crate) async fn h2_handshake<T>(
    io: T,
    config: &Http2Config,
    probe: Option<Box<dyn FnOnce() + Send>>,
) -> Result<(h2::client::SendRequest<Bytes>, ClientDriver<T>), ClientError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = config
        .client_builder()
        .handshake::<T, Bytes>(io)
        .await
        .map_err(ClientError::http2)?;
    Ok((send, ClientDriver::new(conn, config, probe)))
}

/// Sends one CONNECT request and waits for the response.
pub(crate) async fn open_stream(
    send: h2::client::SendRequest<Bytes>,
    http: http::Request<()>,
    slot: Option<StreamSlot>,
) -> Result<Tunnel, ClientError> {
    let mut send = send.ready().await.map_err(ClientError::http2)?;
    let (response, stream) = send.send_request(http, false).map_err(ClientError::http2)?;
    let response = response.await.map_err(ClientError::http2)?;
    let (parts, recv) = response.into_parts();
    if parts.status != StatusCode::OK {
        return Err(match Rejection::from_status(parts.status) {
            Some(r) => ClientError::Rejected(r),
            None => ClientError::UnexpectedStatus(parts.status),
        });
    }
    let response = ConnectResponse::from_parts(parts.status, &parts.headers);
    Ok(Tunnel::new(recv, stream, Some(response), slot))
}

/// One HBONE client connection, not pooled: TLS 1.3 with the caller's configuration,
/// HTTP/2 on top, and any number of tunnels (up to the server's stream limit).
///
/// Useful for hops that must not be pooled (the inner connection of double HBONE runs
/// over a [`Tunnel`]) and for measuring fresh-connection cost. Most callers want the
/// [`Pool`](super::Pool).
///
/// The connection task runs on the current tokio runtime and ends when the
/// `ClientConnection` and all its tunnels are dropped, the server closes the
/// connection, or a keepalive PING goes unanswered.
#[derive(Debug, Clone)]
pub struct ClientConnection {
    send: h2::client::SendRequest<Bytes>,
    peer: Option<SpiffeId>,
    closed: Arc<AtomicBool>,
}

impl ClientConnection {
    /// TLS handshake over `io` (any connected byte stream), then HTTP/2.
    ///
    /// `tls` should come from [`meshwire_svid::tls::client_config`], which verifies the server's
    /// identity against the expected ones; the handshake fails if it does not match.
    pub async fn connect<T>(
        io: T,
        tls: Arc<rustls::ClientConfig>,
        config: &Http2Config,
    ) -> Result<Self, ClientError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (stream, peer) = tls_connect(io, tls).await?;
        let mut conn = Self::handshake(stream, config).await?;
        conn.peer = peer;
        Ok(conn)
    }

    /// HTTP/2 over a stream that is already secured (or a test stream): no TLS here.
    pub(crate) async fn handshake<T>(io: T, config: &Http2Config) -> Result<Self, ClientError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, driver) = h2_handshake(io, config, None).await?;
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        tokio::spawn(async move {
            match driver.await {
                ClientExit::Closed(Ok(())) => tracing::debug!("HBONE connection closed"),
                ClientExit::Closed(Err(e)) => {
                    tracing::debug!(error = %e, "HBONE connection failed")
                }
                ClientExit::KeepaliveTimeout => {
                    tracing::info!("HBONE connection dropped: keepalive PING unanswered");
                }
            }
            flag.store(true, Ordering::Release);
        });
        Ok(Self {
            send,
            peer: None,
            closed,
        })
    }

    /// The server's SPIFFE ID, from its certificate.
    pub fn peer_identity(&self) -> Option<&SpiffeId> {
        self.peer.as_ref()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The server's current limit on concurrent streams (SETTINGS_MAX_CONCURRENT_STREAMS,
    /// or the assumed initial value before the server's SETTINGS arrived).
    pub fn max_send_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }

    /// Opens a tunnel: sends CONNECT and waits for the response. Anything but 200 is an
    /// error ([`ClientError::Rejected`] for 400/401/503).
    pub async fn open(&self, request: &ConnectRequest) -> Result<Tunnel, ClientError> {
        if self.is_closed() {
            return Err(ClientError::ConnectionClosed);
        }
        open_stream(self.send.clone(), request.to_http()?, None).await
    }
}
