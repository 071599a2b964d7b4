//! [`AcceptedIo`]: an accepted connection of any kind, served by tonic.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wraps an already-accepted connection of any kind (a TLS stream, a TCP or unix stream)
/// so that tonic's server can serve it: tonic wants its `Connected` trait, which this
/// implements with no connection info.
///
/// [`AdsServer::serve_with_incoming`](super::AdsServer::serve_with_incoming) wraps connections itself; this is for callers that
/// build their own `tonic::transport::Server` (for instance with [`AdsServer::service`](super::AdsServer::service)
/// next to other services) and serve a stream of TLS connections they accepted.
#[derive(Debug)]
pub struct AcceptedIo<IO>(pub IO);

impl<IO> tonic::transport::server::Connected for AcceptedIo<IO> {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl<IO: AsyncRead + Unpin> AsyncRead for AcceptedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AcceptedIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
