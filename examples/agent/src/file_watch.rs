//! Watching files for new versions, the one way the agent does it: a [`Stamp`] tells whether
//! a file may have changed without reading it, and [`Wakeups`] says when to look again — as
//! soon as something in the file's directory is replaced, written or removed (inotify), and
//! every interval in case a notification is missed or the directory cannot be watched.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{debug, warn};

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    /// The stamp of the file at `path` now (following symbolic links).
    pub(crate) fn of(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(Self {
            modified: m.modified().ok(),
            len: m.len(),
            inode: m.ino(),
        })
    }
}

/// When to look at the files of one directory again.
#[derive(Debug)]
pub(crate) struct Wakeups {
    dir: PathBuf,
    tick: Interval,
    notify: Option<DirNotify>,
}

impl Wakeups {
    /// Wakes on every change in `dir` and every `interval`; the first wake-up is at once.
    /// A directory that cannot be watched is polled every `interval` only (with a warning).
    pub(crate) fn new(dir: &Path, interval: Duration) -> Self {
        let notify = match DirNotify::new(dir) {
            Ok(n) => Some(n),
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot watch the directory for changes; polling it");
                None
            }
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            dir: dir.to_owned(),
            tick,
            notify,
        }
    }

    /// Wakes on changes in the directory that holds `file` (its parent; `.` for a bare name).
    pub(crate) fn for_file(file: &Path, interval: Duration) -> Self {
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        Self::new(dir, interval)
    }

    /// Resolves at the next change or tick.
    pub(crate) async fn next(&mut self) {
        tokio::select! {
            _ = self.tick.tick() => {}
            () = changed(self.notify.as_ref(), &self.dir) => {}
        }
    }
}

/// Resolves after the next change; never, without a watch.
async fn changed(notify: Option<&DirNotify>, dir: &Path) {
    let Some(notify) = notify else {
        return std::future::pending().await;
    };
    match notify.0.readable().await {
        Ok(mut guard) => {
            // Drain the queued events; the caller looks at its files as a whole anyway.
            while let Ok(events) = guard.get_inner().0.read_events() {
                if events.is_empty() {
                    break;
                }
            }
            guard.clear_ready();
        }
        Err(e) => {
            debug!(dir = %dir.display(), error = %e, "directory watch failed; polling only");
            std::future::pending::<()>().await;
        }
    }
}

/// The inotify descriptor, for [`AsyncFd`].
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// An inotify watch on one directory: readable as soon as a file in it is replaced (renamed
/// in or out), written and closed, or removed.
struct DirNotify(AsyncFd<InotifyFd>);

impl DirNotify {
    #[expect(
        deprecated,
        reason = "`AsyncFd::new` is sound here: the AsyncFd owns the inotify descriptor, so it is deregistered before the descriptor closes; its replacement is an unsafe fn"
    )]
    fn new(dir: &Path) -> std::io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(
            dir,
            AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_DELETE,
        )?;
        Ok(Self(AsyncFd::new(InotifyFd(inotify))?))
    }
}

impl std::fmt::Debug for DirNotify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirNotify").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_change_with_content_and_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert!(Stamp::of(&path).is_err(), "missing file");
        std::fs::write(&path, "one").unwrap();
        let first = Stamp::of(&path).unwrap();
        assert_eq!(Stamp::of(&path).unwrap(), first, "unchanged");
        std::fs::write(&path, "three").unwrap();
        assert_ne!(Stamp::of(&path).unwrap(), first, "longer");
        let tmp = dir.path().join("g");
        std::fs::write(&tmp, "three").unwrap();
        let before = Stamp::of(&path).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_ne!(Stamp::of(&path).unwrap(), before, "replaced: another inode");
    }

    #[tokio::test]
    async fn a_change_wakes_before_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.yaml");
        let mut wakeups = Wakeups::for_file(&file, Duration::from_secs(3600));
        // The first wake-up is at once.
        tokio::time::timeout(Duration::from_secs(5), wakeups.next())
            .await
            .expect("first tick");
        let tmp = dir.path().join("w.tmp");
        std::fs::write(&tmp, "x").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        tokio::time::timeout(Duration::from_secs(5), wakeups.next())
            .await
            .expect("woken by the rename");
    }

    #[tokio::test]
    async fn an_unwatchable_directory_is_polled() {
        let dir = tempfile::tempdir().unwrap();
        let mut wakeups = Wakeups::new(&dir.path().join("missing"), Duration::from_millis(20));
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(5), wakeups.next())
                .await
                .expect("ticks");
        }
    }
}
