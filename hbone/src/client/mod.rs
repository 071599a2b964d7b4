//! The outbound side: a [`Pool`] of HBONE connections keyed by [`PoolKey`], and the
//! unpooled [`ClientConnection`].
//!
//! The pool dials through a caller-supplied [`Connector`] (for example sockets made in a
//! pod's network namespace with a packet mark; [`TcpConnector`] is the plain one) and
//! takes the TLS client configuration per key from a [`ClientTlsProvider`]
//! ([`SvidClientTls`] builds it from one SVID). Every failure is a [`ClientError`];
//! refusals by the server carry their [`Rejection`](crate::Rejection).
//!
//! ```no_run
//! use meshwire_hbone::ConnectRequest;
//! use meshwire_hbone::client::{Pool, PoolConfig, PoolKey, SvidClientTls, TcpConnector};
//! use meshwire_hbone::svid::SpiffeId;
//!
//! # async fn run(tls: SvidClientTls, me: SpiffeId, peer: SpiffeId) -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::new(TcpConnector::new(), tls, PoolConfig::default());
//! let key = PoolKey::new(me, [peer], "10.0.0.7:15008".parse()?, None);
//! let tunnel = pool.connect(&key, &ConnectRequest::new("10.0.0.7:8080".parse()?)).await?;
//! # drop(tunnel); Ok(()) }
//! ```

mod config;
mod connection;
mod connector;
mod error;
mod key;
mod pool;
mod tls;

pub use config::PoolConfig;
pub use connection::ClientConnection;
pub use connector::{Connector, TcpConnector};
pub use error::ClientError;
pub use key::PoolKey;
pub use pool::{Pool, PoolStats};
pub use tls::{ClientTlsProvider, SvidClientTls, SvidClientTlsError};

use connection::{h2_handshake, open_stream, tls_connect};
