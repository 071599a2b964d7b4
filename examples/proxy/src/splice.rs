//! Zero-copy TCP ↔ TCP: each direction moves bytes socket → pipe → socket with splice(2),
//! so they never enter the proxy's memory. Same half-close, error and counting behaviour
//! as the buffered copy in [`copy`](crate::copy), which it replaces for plain TCP on both
//! sides.

use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::copy::{Meter, Way};

/// Pipe capacity asked for per direction (the kernel's default is 64 KiB): more bytes per
/// system call on bulk transfers. Pages are only used while bytes sit in the pipe.
const PIPE_SIZE: usize = 512 * 1024;

/// One direction's pipe.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Capacity the kernel granted.
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // Best effort: past /proc/sys/fs/pipe-max-size (or the user's pipe quota) the
        // default capacity stays.
        let size = i32::try_from(PIPE_SIZE)
            .ok()
            .and_then(|want| fcntl(&write, FcntlArg::F_SETPIPE_SZ(want)).ok())
            .and_then(|got| usize::try_from(got).ok())
            .unwrap_or(64 * 1024);
        Ok(Self { read, write, size })
    }
}

/// Two pipes, one per direction, for [`splice_bidirectional`]. Created before the copy so
/// that a process out of file descriptors can fall back to the buffered copy.
pub(crate) struct Pipes([Pipe; 2]);

impl Pipes {
    /// Both pipes, or the error of the first that could not be created.
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self([Pipe::new()?, Pipe::new()?]))
    }
}

impl std::fmt::Debug for Pipes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipes").finish_non_exhaustive()
    }
}

const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

/// Splices `a → b` and `b → a` until both directions reached end of stream, or one
/// failed: end of stream on one side shuts down the write half of the other (TCP FIN) and
/// the other direction continues; the first error ends both. Every piece is added to
/// `meter` once written (`a → b` as [`Way::ToUpstream`]).
pub(crate) async fn splice_bidirectional(
    a: &TcpStream,
    b: &TcpStream,
    pipes: Pipes,
    meter: &Meter,
) -> io::Result<()> {
    let [forward_pipe, backward_pipe] = pipes.0;
    let forward = splice_one_way(a, b, &forward_pipe, meter, Way::ToUpstream);
    let backward = splice_one_way(b, a, &backward_pipe, meter, Way::ToDownstream);
    tokio::try_join!(forward, backward).map(|_| ())
}

async fn splice_one_way(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    meter: &Meter,
    way: Way,
) -> io::Result<()> {
    loop {
        // The pipe is empty here: an EAGAIN can only mean the socket has nothing to read.
        let n = from
            .async_io(Interest::READABLE, || {
                splice(from, None, &pipe.write, None, pipe.size, FLAGS).map_err(io::Error::from)
            })
            .await?;
        if n == 0 {
            // Half-close; a peer that already went away is not an error for the direction
            // that still runs.
            return match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
                _ => Ok(()),
            };
        }
        // Drain the pipe completely, so the next read starts empty again. The pipe holds
        // data: an EAGAIN can only mean the socket's send buffer is full.
        let mut left = n;
        while left > 0 {
            let m = to
                .async_io(Interest::WRITABLE, || {
                    splice(&pipe.read, None, to, None, left, FLAGS).map_err(io::Error::from)
                })
                .await?;
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= m;
            meter.add(way, m as u64);
        }
    }
}
