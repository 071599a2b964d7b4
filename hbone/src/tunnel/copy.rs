//! Splicing a tunnel with another byte stream, with byte counts as they pass.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Tunnel;

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
/// HBONE's usual HTTP/2 frame size: a bulk transfer goes out in DATA frames of up to this
/// size, each one write to the socket on the receiving side.
const COPY_MAX_READ: usize = 1024 * 1024;

/// Splices a tunnel with another byte stream (usually a TCP socket) until both
/// directions are finished, propagating half-closes: EOF on `io` sends END_STREAM, and
/// END_STREAM from the peer shuts down `io`'s write side.
///
/// Data read from `io` goes into HTTP/2 without another copy, and received chunks are
/// written to `io` straight from the frames. The read buffer starts at 16 KiB and grows
/// to 1 MiB (the HTTP/2 frame size HBONE uses) while reads keep filling it: a bulk
/// transfer holds up to that much read but not yet taken by HTTP/2, besides HTTP/2's own
/// send buffer.
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
/// let counters = Arc::new(meshwire_hbone::tunnel::CopyCounters::new());
/// let copy = tokio::spawn(meshwire_hbone::tunnel::copy_bidirectional_with(tunnel, socket, counters.clone()));
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
