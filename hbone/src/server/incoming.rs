//! What the handler sees: the connection's addresses and each CONNECT request waiting for
//! its answer.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::HeaderMap;
use meshwire_svid::SpiffeId;

use crate::headers::Baggage;
use crate::request::{ConnectRequest, ConnectResponse, Rejection};
use crate::tunnel::Tunnel;

/// Addresses of an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// Our address (the destination the client connected to).
    pub local_addr: SocketAddr,
    /// The client's address.
    pub peer_addr: SocketAddr,
}

impl ConnectionInfo {
    /// Connection addresses.
    pub fn new(local_addr: SocketAddr, peer_addr: SocketAddr) -> Self {
        Self {
            local_addr,
            peer_addr,
        }
    }
}

/// Decides what happens to each well-formed CONNECT request.
///
/// Requests that are not CONNECT or whose authority does not parse never reach the
/// handler: the server answers 400 itself. The handler must call
/// [`IncomingTunnel::accept`] or [`IncomingTunnel::reject`]; dropping the tunnel
/// unanswered sends 503. Each call runs in its own task.
///
/// Closures `Fn(IncomingTunnel) -> impl Future<Output = ()>` implement this trait.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    fn handle(&self, tunnel: IncomingTunnel) -> impl Future<Output = ()> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(IncomingTunnel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    fn handle(&self, tunnel: IncomingTunnel) -> impl Future<Output = ()> + Send {
        self(tunnel)
    }
}

/// A CONNECT request waiting for the handler's decision.
#[derive(Debug)]
pub struct IncomingTunnel {
    peer: SpiffeId,
    info: ConnectionInfo,
    request: ConnectRequest,
    headers: HeaderMap,
    respond: Option<SendResponse<Bytes>>,
    recv: Option<RecvStream>,
}

impl IncomingTunnel {
    pub(super) fn new(
        peer: SpiffeId,
        info: ConnectionInfo,
        request: ConnectRequest,
        headers: HeaderMap,
        respond: SendResponse<Bytes>,
        recv: RecvStream,
    ) -> Self {
        Self {
            peer,
            info,
            request,
            headers,
            respond: Some(respond),
            recv: Some(recv),
        }
    }

    /// The client's verified SPIFFE ID (from its certificate).
    pub fn peer_identity(&self) -> &SpiffeId {
        &self.peer
    }

    /// The connection's addresses.
    pub fn connection(&self) -> &ConnectionInfo {
        &self.info
    }

    /// The validated request.
    pub fn request(&self) -> &ConnectRequest {
        &self.request
    }

    /// All request headers as received.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Answers 200 and returns the tunnel.
    pub fn accept(self) -> io::Result<Tunnel> {
        self.respond_ok(ConnectResponse::ok())
    }

    /// Answers 200 with `baggage` describing the destination workload.
    pub fn accept_with_baggage(self, baggage: Baggage) -> io::Result<Tunnel> {
        self.respond_ok(ConnectResponse::ok().with_baggage(baggage))
    }

    fn respond_ok(mut self, response: ConnectResponse) -> io::Result<Tunnel> {
        let http = response
            .to_http()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (Some(mut respond), Some(recv)) = (self.respond.take(), self.recv.take()) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let send = respond
            .send_response(http, false)
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        Ok(Tunnel::new(recv, send, None, None))
    }

    /// Refuses the tunnel with the rejection's status (a headers-only response).
    pub fn reject(mut self, rejection: Rejection) {
        if let Some(respond) = self.respond.take() {
            send_status(respond, rejection);
        }
    }
}

impl Drop for IncomingTunnel {
    fn drop(&mut self) {
        if let Some(respond) = self.respond.take() {
            send_status(respond, Rejection::ServiceUnavailable);
        }
    }
}

pub(super) fn send_status(mut respond: SendResponse<Bytes>, rejection: Rejection) {
    if let Err(e) = respond.send_response(rejection.to_http(), true) {
        tracing::debug!(error = %e, "could not send CONNECT refusal");
    }
}
