//! `AF_UNIX` / `SOCK_SEQPACKET` transport: one message per datagram, netns fds as
//! `SCM_RIGHTS`.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use tokio_seqpacket::UnixSeqpacket;
use tokio_seqpacket::ancillary::{AncillaryMessageWriter, OwnedAncillaryMessage};

use crate::wire::{MAX_MESSAGE_SIZE, Request};

/// Most file descriptors one receive can hold. A peer sending more is caught by
/// `MSG_CTRUNC` (the kernel closes the ones that did not fit); a peer sending between two
/// and this many is caught by counting. Either way every received fd is closed.
const MAX_RECV_FDS: usize = 8;

/// Control buffer with the alignment `cmsghdr` needs: 16 bytes of header room plus
/// space for [`MAX_RECV_FDS`] descriptors, rounded up.
#[repr(C, align(8))]
struct ControlBuffer([u8; 64]);

/// One received datagram.
#[derive(Debug)]
pub struct Datagram {
    /// The message bytes.
    pub bytes: Vec<u8>,
    /// Every file descriptor that arrived with it, owned and close-on-exec.
    pub fds: Vec<OwnedFd>,
}

/// Why sending failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The datagram is longer than [`MAX_MESSAGE_SIZE`]; nothing was sent.
    #[error("datagram of {size} bytes exceeds the {MAX_MESSAGE_SIZE}-byte ZDS limit")]
    TooLarge {
        /// Datagram size in bytes.
        size: usize,
    },
    /// An add must carry exactly one netns fd and every other message none; nothing was
    /// sent.
    #[error("an AddWorkload must carry exactly one fd and other messages none")]
    FdMismatch,
    /// The socket failed (the peer is gone, for example).
    #[error("send failed: {0}")]
    Io(#[from] io::Error),
}

/// Why receiving failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The datagram or its control data did not fit (`MSG_TRUNC` / `MSG_CTRUNC`). Any
    /// descriptors that arrived were closed.
    #[error("received truncated message")]
    Truncated,
    /// The socket failed.
    #[error("receive failed: {0}")]
    Io(#[from] io::Error),
}

/// A connected ZDS socket (`AF_UNIX`, `SOCK_SEQPACKET`, non-blocking, close-on-exec).
///
/// It enforces the transport rules on both directions: at most [`MAX_MESSAGE_SIZE`]
/// bytes per datagram, truncation detected on receive, received descriptors taken as
/// [`OwnedFd`] with close-on-exec set atomically (`MSG_CMSG_CLOEXEC`), and every
/// descriptor nobody takes closed.
#[derive(Debug)]
pub struct Connection {
    socket: UnixSeqpacket,
}

impl Connection {
    /// Connects to the ZDS socket at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Self {
            socket: UnixSeqpacket::connect(path).await?,
        })
    }

    /// The effective uid of the peer (`SO_PEERCRED`): for a connecting client, the uid the
    /// agent ran as when it created its listening socket.
    pub fn peer_uid(&self) -> io::Result<u32> {
        Ok(self.socket.peer_cred()?.uid())
    }

    /// A connected pair, for tests and in-process use.
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = UnixSeqpacket::pair()?;
        Ok((Self { socket: a }, Self { socket: b }))
    }

    pub(crate) fn from_socket(socket: UnixSeqpacket) -> Self {
        Self { socket }
    }

    /// Sends one datagram, with `fd` attached as `SCM_RIGHTS` when given. The caller
    /// keeps its copy of `fd`.
    pub async fn send(&self, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> Result<(), SendError> {
        if bytes.len() > MAX_MESSAGE_SIZE {
            return Err(SendError::TooLarge { size: bytes.len() });
        }
        let mut control = ControlBuffer([0; 64]);
        let mut writer = AncillaryMessageWriter::new(&mut control.0);
        if let Some(fd) = fd {
            writer
                .add_fds([fd])
                .map_err(|_| io::Error::other("control buffer too small for one fd"))?;
        }
        let sent = self
            .socket
            .send_vectored_with_ancillary(&[IoSlice::new(bytes)], &mut writer)
            .await?;
        if sent != bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", bytes.len()),
            )
            .into());
        }
        Ok(())
    }

    /// Encodes and sends a request. `netns` must be given exactly when `request` is an
    /// add.
    pub async fn send_request(
        &self,
        request: &Request,
        netns: Option<BorrowedFd<'_>>,
    ) -> Result<(), SendError> {
        if request.carries_fd() != netns.is_some() {
            return Err(SendError::FdMismatch);
        }
        let bytes = request.encode().map_err(|e| match e {
            crate::wire::EncodeError::TooLarge { size } => SendError::TooLarge { size },
        })?;
        self.send(&bytes, netns).await
    }

    /// Receives one datagram. `Ok(None)` is end of stream: the peer closed (an empty
    /// datagram reads the same way and is treated as such).
    ///
    /// Cancel safe: a datagram is either fully received or left in the socket.
    pub async fn recv(&self) -> Result<Option<Datagram>, RecvError> {
        let mut buf = vec![0u8; MAX_MESSAGE_SIZE];
        let mut control = ControlBuffer([0; 64]);
        let (info, ancillary) = self
            .socket
            .recv_vectored_with_ancillary(&mut [IoSliceMut::new(&mut buf)], &mut control.0)
            .await?;
        // Take ownership of every descriptor first, so that each one is closed on every
        // path below.
        let mut fds = Vec::new();
        for message in ancillary.into_messages() {
            if let OwnedAncillaryMessage::FileDescriptors(received) = message {
                fds.extend(received);
            }
        }
        if info.truncated() || info.ancillary_truncated() {
            drop(fds);
            return Err(RecvError::Truncated);
        }
        let len = info.bytes_read();
        if len == 0 && fds.is_empty() {
            return Ok(None);
        }
        buf.truncate(len);
        Ok(Some(Datagram { bytes: buf, fds }))
    }

    /// Shuts down both directions; the peer sees end of stream.
    pub fn shutdown(&self) -> io::Result<()> {
        self.socket.shutdown(std::net::Shutdown::Both)
    }
}

impl TryFrom<OwnedFd> for Connection {
    type Error = io::Error;

    /// Wraps a connected `SOCK_SEQPACKET` socket. Must be called inside a Tokio runtime.
    fn try_from(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            socket: UnixSeqpacket::try_from(fd)?,
        })
    }
}

// Keep `MAX_RECV_FDS` and the control buffer size in step.
const _: () = assert!(16 + 4 * MAX_RECV_FDS <= 64);
