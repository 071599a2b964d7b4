//! Plaintext gRPC channels to local unix sockets: a SPIRE agent's admin socket or server API
//! socket, or a node agent's workload xDS socket. The socket file's mode is what guards them;
//! no TLS is spoken.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// A lazily connecting gRPC channel (HTTP/2 without TLS) to the unix socket at `path`.
/// Connections are made on first use and re-made after failures (so a restarted server is
/// reached again), each within `connect_timeout`. The socket need not exist yet. Must be
/// called inside a tokio runtime.
pub fn channel(path: impl Into<PathBuf>, connect_timeout: Duration) -> Channel {
    let path = path.into();
    // The URI is a placeholder: the connector ignores it and dials the socket.
    let uri = Endpoint::from_static("http://localhost").connect_timeout(connect_timeout);
    let connect = tower::service_fn(move |_: http::Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    uri.connect_with_connector_lazy(connect)
}
