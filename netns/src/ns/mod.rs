//! Network-namespace handles and running code inside a namespace.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::thread as std_thread;

use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

use crate::error::Error;

mod procs;
mod thread;

pub use procs::{is_in, namespace_of, processes_in, processes_in_any};
pub use thread::{NsThread, RunIn};

/// The identity of a namespace: the device and inode of its `nsfs` file.
///
/// Two handles refer to the same network namespace exactly when their identities
/// are equal, whatever path, pid or fd they were opened from.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsId {
    dev: u64,
    ino: u64,
}

impl NsId {
    /// The device number of the `nsfs` mount that holds the namespace.
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// The inode number, as shown in `/proc/<pid>/ns/net` links (`net:[<ino>]`).
    pub fn ino(&self) -> u64 {
        self.ino
    }
}

impl fmt::Debug for NsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}] (dev {})", self.ino, self.dev)
    }
}

impl fmt::Display for NsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

/// An open handle to a network namespace.
///
/// The handle owns a file descriptor that keeps the namespace alive for as long as
/// the handle exists, even after every process in it has exited and its
/// `/var/run/netns` bind mount is gone.
///
/// Equality compares namespace identity ([`NsId`]), not file descriptors.
pub struct NetNs {
    fd: OwnedFd,
    id: NsId,
    origin: Origin,
}

#[derive(Debug, Clone)]
enum Origin {
    Path(PathBuf),
    Pid(i32),
    Fd,
    Current,
}

impl NetNs {
    /// Opens the network namespace at `path`, for example `/var/run/netns/<name>` or
    /// `/proc/<pid>/ns/net`.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::checked(file.into(), Origin::Path(path.to_path_buf()))
    }

    /// Opens the network namespace of process `pid` (through `/proc/<pid>/ns/net`).
    pub fn from_pid(pid: i32) -> Result<Self, Error> {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let file = File::open(&path).map_err(|source| Error::Open { path, source })?;
        Self::checked(file.into(), Origin::Pid(pid))
    }

    /// Takes ownership of a file descriptor that refers to a network namespace, for
    /// example one received over ZDS.
    ///
    /// Fails with [`Error::NotNetworkNamespace`] when the descriptor is not an `nsfs`
    /// file of a network namespace (the descriptor is closed in that case).
    pub fn from_fd(fd: OwnedFd) -> Result<Self, Error> {
        Self::checked(fd, Origin::Fd)
    }

    /// Opens the network namespace of the calling thread.
    pub fn current() -> Result<Self, Error> {
        let path = Path::new("/proc/thread-self/ns/net");
        let file = File::open(path).map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::checked(file.into(), Origin::Current)
    }

    fn checked(fd: OwnedFd, origin: Origin) -> Result<Self, Error> {
        let what = || origin_text(&origin);
        let fs = fstatfs(&fd).map_err(|e| Error::Inspect {
            what: what(),
            source: e.into(),
        })?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(Error::NotNetworkNamespace { what: what() });
        }
        let kind = crate::sys::namespace_type(fd.as_fd()).map_err(|source| Error::Inspect {
            what: what(),
            source,
        })?;
        if kind != libc::CLONE_NEWNET {
            return Err(Error::NotNetworkNamespace { what: what() });
        }
        let st = nix::sys::stat::fstat(&fd).map_err(|e| Error::Inspect {
            what: what(),
            source: e.into(),
        })?;
        let id = NsId {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        Ok(Self { fd, id, origin })
    }

    /// The identity of this namespace.
    pub fn id(&self) -> NsId {
        self.id
    }

    /// The path this handle was opened from, if it was opened from a path.
    pub fn path(&self) -> Option<&Path> {
        match &self.origin {
            Origin::Path(p) => Some(p),
            _ => None,
        }
    }

    /// Duplicates the handle (a new file descriptor for the same namespace).
    pub fn try_clone(&self) -> Result<Self, Error> {
        let fd = self.fd.try_clone().map_err(|source| Error::Inspect {
            what: origin_text(&self.origin),
            source,
        })?;
        Ok(Self {
            fd,
            id: self.id,
            origin: self.origin.clone(),
        })
    }

    /// Whether the calling thread is currently in this namespace.
    pub fn is_current(&self) -> Result<bool, Error> {
        Ok(Self::current()?.id == self.id)
    }

    /// Runs `f` on the **calling thread** inside this namespace and switches the
    /// thread back to its previous network namespace afterwards, also when `f`
    /// panics (the panic then continues after the switch back).
    ///
    /// Keep `f` short and blocking: while it runs, everything else on this thread
    /// (for example other tasks of an async runtime) would also run in the wrong
    /// namespace. Never call this on an async worker thread; use
    /// [`NetNs::run_on_thread`] or [`NetNs::run_async`] there.
    ///
    /// If switching back fails, the thread cannot be allowed to continue in the
    /// wrong namespace: the error is logged and the **process aborts**. This cannot
    /// happen in practice, because the thread holds a descriptor of its own
    /// namespace and already had the privilege to switch.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, Error> {
        let original = Self::current()?;
        if original.id == self.id {
            return Ok(f());
        }
        enter(self.fd.as_fd(), self.id)?;
        let _guard = RestoreGuard { original };
        Ok(f())
    }

    /// Runs `f` inside this namespace on a **new, short-lived thread** and returns
    /// its result. The calling thread never changes namespace.
    ///
    /// A panic in `f` is propagated to the caller.
    pub fn run_on_thread<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let fd = self.fd.as_fd();
        let id = self.id;
        std_thread::scope(|scope| {
            let handle = std_thread::Builder::new()
                .name(format!("netns-{}", id.ino))
                .spawn_scoped(scope, move || -> Result<T, Error> {
                    // The thread exits right after `f`; it never needs to switch back.
                    enter(fd, id)?;
                    Ok(f())
                })
                .map_err(Error::Thread)?;
            match handle.join() {
                Ok(result) => result,
                Err(payload) => panic::resume_unwind(payload),
            }
        })
    }

    /// Runs `f` inside this namespace on a new, short-lived OS thread and resolves
    /// to its result. For async callers: no runtime worker thread ever changes
    /// namespace.
    ///
    /// A panic in `f` is propagated to the task awaiting the future.
    pub async fn run_async<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let fd = self.fd.try_clone().map_err(|source| Error::Inspect {
            what: origin_text(&self.origin),
            source,
        })?;
        let id = self.id;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std_thread::Builder::new()
            .name(format!("netns-{}", id.ino))
            .spawn(move || {
                let outcome = match enter(fd.as_fd(), id) {
                    Err(e) => Ok(Err(e)),
                    Ok(()) => panic::catch_unwind(AssertUnwindSafe(f)).map(Ok),
                };
                drop(fd);
                // The receiver is gone only when the caller stopped waiting.
                let _ = tx.send(outcome);
            })
            .map_err(Error::Thread)?;
        match rx.await {
            Ok(Ok(result)) => result,
            Ok(Err(payload)) => panic::resume_unwind(payload),
            Err(_) => Err(Error::Thread(io::Error::other(
                "namespace worker thread ended without a result",
            ))),
        }
    }
}

fn enter(fd: BorrowedFd<'_>, id: NsId) -> Result<(), Error> {
    setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Enter {
        id,
        source: e.into(),
    })
}

fn origin_text(origin: &Origin) -> String {
    match origin {
        Origin::Path(p) => p.display().to_string(),
        Origin::Pid(pid) => format!("network namespace of pid {pid}"),
        Origin::Fd => "namespace file descriptor".to_owned(),
        Origin::Current => "network namespace of the current thread".to_owned(),
    }
}

/// Switches the thread back to `original` when dropped; aborts if that fails.
struct RestoreGuard {
    original: NetNs,
}

impl Drop for RestoreGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.original.fd.as_fd(), CloneFlags::CLONE_NEWNET) {
            tracing::error!(
                error = %e,
                namespace = %self.original.id,
                "cannot switch the thread back to its network namespace; aborting"
            );
            std::process::abort();
        }
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<NetNs> for OwnedFd {
    fn from(ns: NetNs) -> Self {
        ns.fd
    }
}

impl PartialEq for NetNs {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for NetNs {}

impl fmt::Debug for NetNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("NetNs");
        d.field("id", &self.id).field("fd", &self.fd.as_raw_fd());
        match &self.origin {
            Origin::Path(p) => d.field("path", p),
            Origin::Pid(pid) => d.field("pid", pid),
            Origin::Fd => d.field("origin", &"fd"),
            Origin::Current => d.field("origin", &"current thread"),
        };
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_namespace_equals_itself_and_proc_self() {
        let a = NetNs::current().unwrap();
        let b = NetNs::from_pid(std::process::id() as i32).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.id(), a.try_clone().unwrap().id());
        assert!(a.is_current().unwrap());
        assert!(format!("{}", a.id()).starts_with("net:["));
    }

    #[test]
    fn non_namespace_files_are_rejected() {
        let f = File::open("/proc/self/status").unwrap();
        let err = NetNs::from_fd(f.into()).unwrap_err();
        assert!(matches!(err, Error::NotNetworkNamespace { .. }), "{err}");
        // An nsfs file of another namespace type is not a network namespace either.
        let err = NetNs::from_path("/proc/self/ns/uts").unwrap_err();
        assert!(matches!(err, Error::NotNetworkNamespace { .. }), "{err}");
    }

    #[test]
    fn missing_path_is_an_open_error() {
        let err = NetNs::from_path("/nonexistent/netns/x").unwrap_err();
        assert!(matches!(err, Error::Open { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/netns/x"));
    }

    #[test]
    fn run_in_own_namespace_runs_the_closure() {
        let ns = NetNs::current().unwrap();
        // Already there: no namespace switch, so no privilege needed.
        assert_eq!(ns.run(|| 7).unwrap(), 7);
        // The helper thread always calls setns, which needs CAP_SYS_ADMIN.
        let Some(_p) = testbed::require_privileged("run_in_own_namespace_runs_the_closure") else {
            return;
        };
        assert_eq!(ns.run_on_thread(|| 8).unwrap(), 8);
    }
}
