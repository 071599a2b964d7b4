//! Identifying and checking network-namespace descriptors, without `unsafe`.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::stat::fstat;
use nix::sys::statfs::{NSFS_MAGIC, PROC_SUPER_MAGIC, fstatfs};

/// Identity of a namespace: the device and inode of its nsfs file.
///
/// Two descriptors refer to the same network namespace exactly when their ids are equal,
/// so a proxy can tell whether a repeated add for a uid names the namespace it already
/// serves (a no-op) or a new one (the pod sandbox was recreated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsId {
    /// `st_dev` of the descriptor.
    pub dev: u64,
    /// `st_ino` of the descriptor.
    pub ino: u64,
}

impl NetnsId {
    /// The id of whatever `fd` refers to (`fstat`). This does not check that `fd` is a
    /// namespace; see [`verify_netns`].
    pub fn of(fd: impl AsFd) -> io::Result<Self> {
        let stat = fstat(fd.as_fd()).map_err(io::Error::from)?;
        Ok(Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
        })
    }
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}] on dev {}", self.ino, self.dev)
    }
}

/// Why a descriptor is not accepted as a network namespace.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// The descriptor does not live on the namespace filesystem.
    #[error("fd is not a namespace (filesystem magic {0:#x})")]
    NotNamespace(i64),
    /// The descriptor is a namespace of another kind.
    #[error("fd is a namespace but not a network namespace ({0})")]
    NotNetwork(String),
    /// The checks could not run.
    #[error("cannot inspect fd: {0}")]
    Io(#[from] io::Error),
}

/// Checks that `fd` is a network-namespace descriptor and returns its id.
///
/// Two checks, both without `unsafe`: `fstatfs` must report the namespace filesystem
/// (`NSFS_MAGIC`, or `PROC_SUPER_MAGIC` on old kernels), and `setns(fd, CLONE_NEWNET)`
/// must accept it. The kernel refuses `setns` with `EINVAL` for a namespace of another
/// kind, so this is exact for every way of naming a namespace (`/proc/<pid>/ns/net`,
/// a bind mount under `/var/run/netns`, a pidfd is not accepted). The `setns` runs on a
/// short-lived thread of its own, so no thread of the caller ever changes namespace. It
/// needs `CAP_SYS_ADMIN`, which a node proxy has anyway.
pub fn verify_netns(fd: BorrowedFd<'_>) -> Result<NetnsId, NetnsError> {
    let fs = fstatfs(fd).map_err(io::Error::from)?;
    let magic = fs.filesystem_type();
    if magic != NSFS_MAGIC && magic != PROC_SUPER_MAGIC {
        #[allow(
            clippy::unnecessary_cast,
            reason = "the magic's type differs by target"
        )]
        return Err(NetnsError::NotNamespace(magic.0 as i64));
    }
    let entered = std::thread::scope(|scope| {
        scope
            .spawn(|| setns(fd, CloneFlags::CLONE_NEWNET))
            .join()
            .unwrap_or(Err(Errno::EAGAIN))
    });
    match entered {
        Ok(()) => Ok(NetnsId::of(fd)?),
        Err(Errno::EINVAL) => Err(NetnsError::NotNetwork(
            "setns(CLONE_NEWNET) refused it".to_owned(),
        )),
        Err(e) => Err(NetnsError::Io(io::Error::from(e))),
    }
}
