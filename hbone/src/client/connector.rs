//! Opening the transport connection under a pooled HBONE connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::PoolKey;

/// Opens the transport connection to a pool key's next hop.
///
/// The proxy implements this to create sockets inside a pod's network namespace with a
/// packet mark; [`TcpConnector`] is the plain version.
pub trait Connector: Send + Sync + 'static {
    /// The connected byte stream.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Connects to `key.next_hop` (from `key.source_addr` if the connector binds).
    fn connect(&self, key: &PoolKey) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// A [`Connector`] that opens a TCP connection from the current network namespace,
/// binds `source_addr` when the key has one, and sets `TCP_NODELAY`.
#[derive(Debug, Clone, Default)]
pub struct TcpConnector {
    _priv: (),
}

impl TcpConnector {
    /// A new connector.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Connector for TcpConnector {
    type Io = TcpStream;

    async fn connect(&self, key: &PoolKey) -> io::Result<TcpStream> {
        let stream = match key.source_addr {
            None => TcpStream::connect(key.next_hop).await?,
            Some(src) => {
                let socket = if key.next_hop.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(src, 0))?;
                socket.connect(key.next_hop).await?
            }
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}
