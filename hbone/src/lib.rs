//! HBONE: TCP tunnels as HTTP/2 CONNECT streams inside mutual TLS 1.3, with SPIFFE
//! identities on both ends.
//!
//! This crate is the data path between two enrolled workloads: a client that opens
//! tunnels through a connection pool, a server that verifies the client's SPIFFE ID and
//! hands each CONNECT request to a caller-supplied handler, and the [`Tunnel`] byte
//! stream in between. It speaks the wire format of Istio's ztunnel (ALPN `h2`, no SNI,
//! classic CONNECT with `:authority`, `forwarded`, `baggage` and `traceparent` headers,
//! statuses 200/400/401/503).
//!
//! # Layout
//!
//! The root holds what both sides use: the request ([`ConnectRequest`], its target
//! [`Authority`]), the refusal statuses ([`Rejection`]), the [`Tunnel`], and the HTTP/2
//! settings ([`Http2Config`]). Everything else is in its module:
//!
//! * [`request`]: CONNECT request and response rules without I/O ([`ConnectRequest`],
//!   [`request::ConnectResponse`], [`Authority`], [`Rejection`] ↔ 400/401/503). Parsing
//!   never panics and every header has a size limit.
//! * [`headers`]: the metadata headers, [`headers::Forwarded`], [`headers::Baggage`] /
//!   [`headers::WorkloadBaggage`] and [`headers::TraceParent`].
//! * [`client`]: [`client::Pool`] keyed by [`client::PoolKey`] (source identity, expected
//!   server identities, next hop, source address). The caller supplies a
//!   [`client::Connector`] (to create sockets in a pod's network namespace with a mark)
//!   and a [`client::ClientTlsProvider`] (the source SVID and the expected identities;
//!   see [`client::SvidClientTls`]). [`client::Pool::close`] retires its connections
//!   (idle ones at once, busy ones after their last tunnel).
//!   [`client::ClientConnection`] is a single unpooled connection.
//! * [`server`]: [`server::Server`] takes accepted streams or a listener and a rustls
//!   server configuration ([`server::ServerTlsProvider`]), requires a client certificate,
//!   and calls the [`server::Handler`] with an [`server::IncomingTunnel`]: the peer's
//!   SPIFFE ID, the parsed request, and `accept`/`reject`. [`server::Admission`] holds
//!   the destination rules every HBONE server applies (the target is one of the
//!   workload's own addresses, never one of the proxy's own ports).
//!   [`server::Server::shutdown`] drains with GOAWAY and a deadline.
//! * [`tunnel`]: [`Tunnel`] implements `AsyncRead + AsyncWrite`; END_STREAM is a
//!   half-close, peer resets map to EOF or errors. Flow control is manual underneath
//!   (capacity released as the application reads, writes wait for send capacity), so a
//!   slow reader stops the writer instead of growing buffers.
//!   [`tunnel::copy_bidirectional`] splices a tunnel with a socket without intermediate
//!   copies; [`tunnel::copy_bidirectional_with`] also reports bytes as they pass to a
//!   [`tunnel::CopyObserver`] (such as [`tunnel::CopyCounters`]) for live metrics.
//!
//! Settings ([`Http2Config`], [`client::PoolConfig`], [`server::ServeConfig`]) are
//! `#[non_exhaustive]` structs with public fields and the values HBONE peers use as
//! defaults (4 MiB stream window, 16 MiB connection window, 1 MiB frames, PING every
//! 10 s with a 20 s timeout): start from `Default` and set fields.
//!
//! Not here: workload lookup, authorization policy, network namespaces, certificate
//! issuance (see the `meshwire-svid` crate), PROXY protocol.
//!
//! # Example
//!
//! A server that echoes, and a pooled client, on loopback (a longer version is the
//! `echo` example: `cargo run -p meshwire-hbone --example echo`):
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use meshwire_hbone::svid::{IdentityPolicy, SpiffeId, TrustBundleSet};
//! use meshwire_svid::ca::CertificateAuthority;
//! use meshwire_hbone::client::{Pool, PoolConfig, PoolKey, SvidClientTls, TcpConnector};
//! use meshwire_hbone::server::{IncomingTunnel, ServeConfig, Server};
//! use meshwire_hbone::{ConnectRequest, Rejection};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Identities from a test CA.
//! let td = "cluster.local".parse()?;
//! let ca = CertificateAuthority::generate_root(&td, Default::default())?;
//! let mut roots = TrustBundleSet::new();
//! roots.insert(ca.bundle());
//! let server_id = SpiffeId::new("spiffe://cluster.local/ns/default/sa/server")?;
//! let client_id = SpiffeId::new("spiffe://cluster.local/ns/default/sa/client")?;
//! let provider = meshwire_svid::provider::default();
//! let hour = Duration::from_secs(3600);
//!
//! // Server: only port 7 is served, with an echo.
//! let tls = meshwire_svid::tls::server_config(provider.clone(), &ca.issue(&server_id, hour)?, &roots,
//!                               IdentityPolicy::SameTrustDomain(td))?;
//! let handler = |incoming: IncomingTunnel| async move {
//!     if incoming.request().authority.port() != 7 {
//!         return incoming.reject(Rejection::ServiceUnavailable);
//!     }
//!     let Ok(mut tunnel) = incoming.accept() else { return };
//!     let mut buf = [0u8; 1024];
//!     while let Ok(n @ 1..) = tunnel.read(&mut buf).await {
//!         if tunnel.write_all(&buf[..n]).await.is_err() { break }
//!     }
//! };
//! let server = Server::new(Arc::new(tls), handler, ServeConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn({ let server = server.clone(); async move { server.serve(listener).await } });
//!
//! // Client: a pool that presents the client's SVID and expects the server's identity.
//! let pool = Pool::new(
//!     TcpConnector::new(),
//!     SvidClientTls::new(provider, ca.issue(&client_id, hour)?, roots),
//!     PoolConfig::default(),
//! );
//! let key = PoolKey::new(client_id, [server_id], addr, None);
//! let mut tunnel = pool.connect(&key, &ConnectRequest::new("10.0.0.1:7".parse()?)).await?;
//! tunnel.write_all(b"hello").await?;
//! let mut back = [0u8; 5];
//! tunnel.read_exact(&mut back).await?;
//! assert_eq!(&back, b"hello");
//!
//! // Refusals are typed.
//! let err = pool.connect(&key, &ConnectRequest::new("10.0.0.1:8".parse()?)).await.unwrap_err();
//! assert_eq!(err.rejection(), Some(Rejection::ServiceUnavailable));
//!
//! drop(tunnel);
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! * `ring` (default): rustls with the *ring* provider, through `svid`.
//! * `aws-lc-rs`: also enable the aws-lc-rs provider in `svid` (additive).
//!
//! The crate never uses the process-default crypto provider: TLS configurations come
//! from the caller, built with an explicit provider.
#![forbid(unsafe_code)]

mod config;
mod keepalive;
#[cfg(test)]
mod tests;
mod tls_io;

pub mod client;
pub mod headers;
pub mod request;
pub mod server;
pub mod tunnel;

pub use config::Http2Config;
pub use request::{Authority, ConnectRequest, Rejection};
pub use tunnel::Tunnel;

/// Re-exports of crates whose types appear in this API.
pub use meshwire_svid as svid;
pub use {h2, http, rustls};

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
