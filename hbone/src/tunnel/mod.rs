//! The tunnel: one HTTP/2 CONNECT stream as a byte stream, and splicing it with a socket
//! ([`copy_bidirectional`], [`copy_bidirectional_with`]) with live byte counts
//! ([`CopyObserver`], [`CopyCounters`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::request::ConnectResponse;

mod copy;

pub use copy::{
    CopyCounters, CopyDirection, CopyObserver, CopyStats, copy_bidirectional,
    copy_bidirectional_with,
};

/// What a tunnel keeps alive until both of its halves are gone: the client pool puts its
/// count of the connection's open streams here.
pub(crate) type StreamSlot = Arc<dyn std::fmt::Debug + Send + Sync>;

/// Largest capacity requested from HTTP/2 flow control in one step.
const MAX_RESERVE: usize = 16 * 1024 * 1024;

/// One HBONE tunnel: an HTTP/2 CONNECT stream carrying raw bytes both ways.
///
/// Implements [`AsyncRead`] and [`AsyncWrite`]:
/// * reading returns the peer's DATA frames; end of stream (END_STREAM, or a reset
///   with `NO_ERROR`/`CANCEL`) reads as EOF;
/// * `poll_shutdown` sends END_STREAM (a half-close: reading continues);
/// * writes wait for HTTP/2 send capacity, so a slow reader at the far end stops the
///   writer instead of growing buffers.
///
/// For copies without an intermediate buffer use [`TunnelRecv::recv_bytes`] and
/// [`TunnelSend::send_bytes`], or [`copy_bidirectional`] to splice with a socket.
/// Dropping the tunnel half-closes the write side and resets the stream if the peer
/// is still sending (like closing a TCP socket with unread data).
#[derive(Debug)]
pub struct Tunnel {
    recv: TunnelRecv,
    send: TunnelSend,
    response: Option<ConnectResponse>,
}

impl Tunnel {
    pub(crate) fn new(
        recv: RecvStream,
        send: SendStream<Bytes>,
        response: Option<ConnectResponse>,
        guard: Option<StreamSlot>,
    ) -> Self {
        Self {
            recv: TunnelRecv {
                stream: recv,
                chunk: Bytes::new(),
                eof: false,
                _guard: guard.clone(),
            },
            send: TunnelSend {
                stream: send,
                shutdown: false,
                _guard: guard,
            },
            response,
        }
    }

    /// On the client side, the server's 200 response (its `baggage` describes the
    /// destination workload). `None` on the server side.
    pub fn response(&self) -> Option<&ConnectResponse> {
        self.response.as_ref()
    }

    /// The HTTP/2 stream id.
    pub fn stream_id(&self) -> u32 {
        self.send.stream.stream_id().as_u32()
    }

    /// Splits the tunnel into independently owned read and write halves.
    pub fn into_split(self) -> (TunnelRecv, TunnelSend) {
        (self.recv, self.send)
    }

    /// The read half.
    pub fn recv_half(&mut self) -> &mut TunnelRecv {
        &mut self.recv
    }

    /// The write half.
    pub fn send_half(&mut self) -> &mut TunnelSend {
        &mut self.send
    }

    /// Resets the stream with `reason` (both directions end at once).
    pub fn reset(&mut self, reason: Reason) {
        self.send.stream.send_reset(reason);
    }
}

/// The read half of a [`Tunnel`].
#[derive(Debug)]
pub struct TunnelRecv {
    stream: RecvStream,
    /// Received but not yet consumed; its length is still counted against the window.
    chunk: Bytes,
    eof: bool,
    _guard: Option<StreamSlot>,
}

impl TunnelRecv {
    /// Bytes received from the peer that the application has not read yet. Flow control
    /// bounds this by the stream window.
    pub fn buffered_bytes(&mut self) -> usize {
        self.stream.flow_control().used_capacity()
    }

    fn release(&mut self, n: usize) {
        if n > 0 {
            // Fails only if the connection is gone, which the next read reports.
            let _ = self.stream.flow_control().release_capacity(n);
        }
    }

    /// Makes `self.chunk` non-empty; `Ready(Ok(false))` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            if !self.chunk.is_empty() {
                return Poll::Ready(Ok(true));
            }
            if self.eof {
                return Poll::Ready(Ok(false));
            }
            match ready!(self.stream.poll_data(cx)) {
                None => self.eof = true,
                Some(Ok(data)) => self.chunk = data,
                Some(Err(e)) => match recv_error(e) {
                    None => self.eof = true,
                    Some(e) => return Poll::Ready(Err(e)),
                },
            }
        }
    }

    /// Receives the next chunk as it arrived, without copying. `None` at end of stream.
    /// The chunk's bytes count as read (flow-control capacity is released).
    pub fn poll_recv_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !ready!(self.poll_fill(cx))? {
            return Poll::Ready(Ok(None));
        }
        let chunk = std::mem::take(&mut self.chunk);
        self.release(chunk.len());
        Poll::Ready(Ok(Some(chunk)))
    }

    /// Async form of [`poll_recv_bytes`](Self::poll_recv_bytes).
    pub async fn recv_bytes(&mut self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_recv_bytes(cx)).await
    }
}

impl AsyncRead for TunnelRecv {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !ready!(this.poll_fill(cx))? {
            return Poll::Ready(Ok(()));
        }
        let n = this.chunk.len().min(buf.remaining());
        buf.put_slice(this.chunk.get(..n).unwrap_or_default());
        this.chunk.advance(n);
        this.release(n);
        Poll::Ready(Ok(()))
    }
}

/// The write half of a [`Tunnel`]. Dropping it without shutting down sends END_STREAM.
#[derive(Debug)]
pub struct TunnelSend {
    stream: SendStream<Bytes>,
    shutdown: bool,
    _guard: Option<StreamSlot>,
}

impl TunnelSend {
    /// Waits until HTTP/2 flow control grants send capacity; returns how much.
    fn poll_capacity(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.shutdown {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        loop {
            let cap = self.stream.capacity();
            if cap > 0 {
                return Poll::Ready(Ok(cap));
            }
            self.stream.reserve_capacity(want.clamp(1, MAX_RESERVE));
            match ready!(self.stream.poll_capacity(cx)) {
                Some(Ok(n)) if n > 0 => return Poll::Ready(Ok(n)),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(send_error(e))),
                None => return self.poll_reset_error(cx),
            }
        }
    }

    /// The stream can no longer send: find out why.
    fn poll_reset_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(match ready!(self.stream.poll_reset(cx)) {
            Ok(Reason::NO_ERROR | Reason::CANCEL | Reason::STREAM_CLOSED) => {
                io::ErrorKind::BrokenPipe.into()
            }
            Ok(reason) => io::Error::new(io::ErrorKind::ConnectionReset, h2::Error::from(reason)),
            Err(e) => send_error(e),
        }))
    }

    /// Sends a prefix of `data` as large as the flow-control capacity allows, without
    /// copying; the sent part is removed from `data`. Returns the number of bytes sent.
    pub fn poll_send_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let cap = ready!(self.poll_capacity(cx, data.len()))?;
        let n = cap.min(data.len());
        let part = data.split_to(n);
        self.stream.send_data(part, false).map_err(send_error)?;
        Poll::Ready(Ok(n))
    }

    /// Sends all of `data` without copying it.
    pub async fn send_bytes(&mut self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            std::future::poll_fn(|cx| self.poll_send_bytes(cx, &mut data)).await?;
        }
        Ok(())
    }

    fn send_end_stream(&mut self) -> io::Result<()> {
        if self.shutdown {
            return Ok(());
        }
        self.shutdown = true;
        self.stream.reserve_capacity(0);
        self.stream
            .send_data(Bytes::new(), true)
            .map_err(send_error)
    }
}

impl AsyncWrite for TunnelSend {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let cap = ready!(this.poll_capacity(cx, buf.len()))?;
        let n = cap.min(buf.len());
        let data = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
        this.stream.send_data(data, false).map_err(send_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Data handed to HTTP/2 is written by the connection task; there is no
        // per-stream buffer to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().send_end_stream())
    }
}

impl Drop for TunnelSend {
    fn drop(&mut self) {
        let _ = self.send_end_stream();
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().send).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().send).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().send).poll_shutdown(cx)
    }
}

/// Maps a receive-side stream error; `None` means "treat as end of stream".
fn recv_error(e: h2::Error) -> Option<io::Error> {
    if e.is_io() {
        return Some(
            e.into_io()
                .unwrap_or_else(|| io::ErrorKind::ConnectionReset.into()),
        );
    }
    match e.reason() {
        Some(Reason::NO_ERROR | Reason::CANCEL) if e.is_reset() && e.is_remote() => None,
        Some(Reason::STREAM_CLOSED) => Some(io::Error::new(io::ErrorKind::BrokenPipe, e)),
        _ => Some(io::Error::new(io::ErrorKind::ConnectionReset, e)),
    }
}

fn send_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::ErrorKind::ConnectionReset.into());
    }
    match e.reason() {
        Some(Reason::NO_ERROR | Reason::CANCEL | Reason::STREAM_CLOSED) => {
            io::Error::new(io::ErrorKind::BrokenPipe, e)
        }
        _ => io::Error::new(io::ErrorKind::ConnectionReset, e),
    }
}
