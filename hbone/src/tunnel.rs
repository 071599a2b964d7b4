//! The tunnel: one HTTP/2 CONNECT stream as a byte stream.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::pool::StreamGuard;
use crate::request::ConnectResponse;

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
        guard: Option<Arc<StreamGuard>>,
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
    _guard: Option<Arc<StreamGuard>>,
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
    _guard: Option<Arc<StreamGuard>>,
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

/// Byte counts of a finished [`copy_bidirectional`] or [`copy_bidirectional_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyStats {
    /// Bytes read from the socket side and sent into the tunnel.
    pub to_tunnel: u64,
    /// Bytes received from the tunnel and written to the socket side.
    pub from_tunnel: u64,
}

/// Which way bytes moved in a copy between a tunnel and a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CopyDirection {
    /// Read from the socket side, handed to the tunnel.
    ToTunnel,
    /// Received from the tunnel, written to the socket side.
    FromTunnel,
}

/// Learns about bytes as [`copy_bidirectional_with`] moves them, for live metrics of
/// long connections.
///
/// `carried` is called from the copy's own task, after each piece has been handed on:
/// for [`CopyDirection::ToTunnel`] once HTTP/2 accepted it (within the peer's flow
/// control window), for [`CopyDirection::FromTunnel`] once the socket side's write
/// returned. It runs on the data path, so it should be cheap (an atomic add, a metrics
/// counter). The sums of all calls equal the [`CopyStats`] of a copy that finishes, and
/// are what was carried when a copy fails or is dropped.
///
/// Implemented for [`CopyCounters`], `()` (ignores everything), and references and
/// [`Arc`]s of observers.
pub trait CopyObserver {
    /// `bytes` more bytes moved in `direction`.
    fn carried(&self, direction: CopyDirection, bytes: u64);
}

impl CopyObserver for () {
    fn carried(&self, _direction: CopyDirection, _bytes: u64) {}
}

impl<O: CopyObserver + ?Sized> CopyObserver for &O {
    fn carried(&self, direction: CopyDirection, bytes: u64) {
        (**self).carried(direction, bytes);
    }
}

impl<O: CopyObserver + ?Sized> CopyObserver for Arc<O> {
    fn carried(&self, direction: CopyDirection, bytes: u64) {
        (**self).carried(direction, bytes);
    }
}

/// A [`CopyObserver`] with two atomic counters, readable from anywhere while the copy
/// runs and after it ended (also after an error). Share it by reference or in an
/// [`Arc`].
#[derive(Debug, Default)]
pub struct CopyCounters {
    to_tunnel: AtomicU64,
    from_tunnel: AtomicU64,
}

impl CopyCounters {
    /// Counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes handed to the tunnel so far.
    pub fn to_tunnel(&self) -> u64 {
        self.to_tunnel.load(Ordering::Relaxed)
    }

    /// Bytes received from the tunnel and written to the socket side so far.
    pub fn from_tunnel(&self) -> u64 {
        self.from_tunnel.load(Ordering::Relaxed)
    }

    /// Both counts.
    pub fn stats(&self) -> CopyStats {
        CopyStats {
            to_tunnel: self.to_tunnel(),
            from_tunnel: self.from_tunnel(),
        }
    }
}

impl CopyObserver for CopyCounters {
    fn carried(&self, direction: CopyDirection, bytes: u64) {
        let counter = match direction {
            CopyDirection::ToTunnel => &self.to_tunnel,
            CopyDirection::FromTunnel => &self.from_tunnel,
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }
}

const COPY_MIN_READ: usize = 16 * 1024;
const COPY_MAX_READ: usize = 256 * 1024;

/// Splices a tunnel with another byte stream (usually a TCP socket) until both
/// directions are finished, propagating half-closes: EOF on `io` sends END_STREAM, and
/// END_STREAM from the peer shuts down `io`'s write side.
///
/// Data read from `io` goes into HTTP/2 without another copy, and received chunks are
/// written to `io` straight from the frames. The read buffer starts at 16 KiB and grows
/// to 256 KiB while reads keep filling it.
///
/// The first error ends both directions. Shutting down `io`'s write side after the peer
/// of `io` has gone away (`NotConnected`) is not an error: the other direction goes on.
/// For byte counts while the copy runs, or after an error, use
/// [`copy_bidirectional_with`].
pub async fn copy_bidirectional<T>(tunnel: Tunnel, io: T) -> io::Result<CopyStats>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    copy_bidirectional_with(tunnel, io, ()).await
}

/// [`copy_bidirectional`] that reports every piece it moves to `observer` as it goes
/// (see [`CopyObserver`]), so that long-lived connections show up in metrics while
/// they run. Same half-close, error and buffer behaviour, and no extra copy.
///
/// ```no_run
/// # async fn f(tunnel: meshwire_hbone::Tunnel, socket: tokio::net::TcpStream) -> std::io::Result<()> {
/// use std::sync::Arc;
/// let counters = Arc::new(meshwire_hbone::CopyCounters::new());
/// let copy = tokio::spawn(meshwire_hbone::copy_bidirectional_with(tunnel, socket, counters.clone()));
/// // … meanwhile: counters.to_tunnel(), counters.from_tunnel()
/// let result = copy.await?;
/// println!("{} bytes up, {} down", counters.to_tunnel(), counters.from_tunnel());
/// # result.map(drop) }
/// ```
pub async fn copy_bidirectional_with<T, O>(
    tunnel: Tunnel,
    io: T,
    observer: O,
) -> io::Result<CopyStats>
where
    T: AsyncRead + AsyncWrite + Unpin,
    O: CopyObserver,
{
    let observer = &observer;
    let (mut t_recv, mut t_send) = tunnel.into_split();
    let (mut io_read, mut io_write) = tokio::io::split(io);
    let upstream = async {
        let mut total = 0u64;
        let mut want = COPY_MIN_READ;
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(want);
            let n = io_read.read_buf(&mut buf).await?;
            if n == 0 {
                break;
            }
            if n >= want && want < COPY_MAX_READ {
                want *= 2;
            }
            let mut data = buf.split().freeze();
            while !data.is_empty() {
                let sent =
                    std::future::poll_fn(|cx| t_send.poll_send_bytes(cx, &mut data)).await? as u64;
                total += sent;
                observer.carried(CopyDirection::ToTunnel, sent);
            }
        }
        t_send.shutdown().await?;
        Ok::<_, io::Error>(total)
    };
    let downstream = async {
        let mut total = 0u64;
        while let Some(mut chunk) = t_recv.recv_bytes().await? {
            while !chunk.is_empty() {
                let n = io_write.write(&chunk).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                chunk.advance(n);
                total += n as u64;
                observer.carried(CopyDirection::FromTunnel, n as u64);
            }
            io_write.flush().await?;
        }
        match io_write.shutdown().await {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => return Err(e),
            _ => {}
        }
        Ok::<_, io::Error>(total)
    };
    let (to_tunnel, from_tunnel) = tokio::try_join!(upstream, downstream)?;
    Ok(CopyStats {
        to_tunnel,
        from_tunnel,
    })
}
