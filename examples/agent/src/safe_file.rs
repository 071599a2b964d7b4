//! Writing and reading the agent's own small files (pod state, pod status, CA root) without
//! being led elsewhere by what another process planted in the directory.
//!
//! A file is written to a new temporary file next to it, created exclusively under a name
//! nobody can predict (`O_CREAT | O_EXCL` never follows a symbolic link, and a name already
//! taken is skipped), then renamed over the file: `rename` replaces a symbolic link at the
//! destination instead of writing through it. A file is read without following a symbolic
//! link (`O_NOFOLLOW`), only if it is a regular file, and only up to a limit, so a huge
//! file (or a FIFO) cannot exhaust the agent's memory or block it.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How many temporary names are tried before giving up (each one taken by someone else).
const TEMP_ATTEMPTS: u32 = 16;

/// Why a file could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// There is no file at the path.
    Missing,
    /// The path is a symbolic link; it was not followed.
    Symlink,
    /// The path is not a regular file (a directory, FIFO, socket or device).
    NotRegular,
    /// The file is larger than the limit; nothing was read.
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
        /// The size found (at least `limit + 1`).
        size: u64,
    },
    /// Opening or reading failed.
    Io(io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("no such file"),
            Self::Symlink => f.write_str("it is a symbolic link (not followed)"),
            Self::NotRegular => f.write_str("it is not a regular file"),
            Self::TooLarge { limit, size } => write!(
                f,
                "it holds {size} bytes or more, over the limit of {limit} bytes; not read"
            ),
            Self::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads the regular file at `path` (not through a symbolic link), refusing it when it holds
/// more than `limit` bytes.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let file = OpenOptions::new()
        .read(true)
        // O_NONBLOCK: opening a FIFO planted at the path must not wait for a writer.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => ReadError::Symlink,
            _ if e.kind() == io::ErrorKind::NotFound => ReadError::Missing,
            _ => ReadError::Io(e),
        })?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            limit,
            size: meta.len(),
        });
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The file may grow between the size check and the read: never read past the limit.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(ReadError::Io)?;
    let read = data.len() as u64;
    if read > limit {
        return Err(ReadError::TooLarge { limit, size: read });
    }
    Ok(data)
}

/// Replaces `path` with `data` atomically: a new temporary file in the same directory
/// (created exclusively, mode `mode`), then a rename over `path`.
pub(crate) fn replace(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let tmp = write_temp(path, data, mode)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Writes `data` to a new file next to `path` under a fresh hidden name, created exclusively
/// with mode `mode`, and returns its path. The caller renames or links it into place and
/// removes it on failure.
pub(crate) fn write_temp(path: &Path, data: &[u8], mode: u32) -> io::Result<PathBuf> {
    let mut last = None;
    for _ in 0..TEMP_ATTEMPTS {
        let tmp = temp_name(path);
        match create_exclusive(&tmp, mode) {
            Ok(mut f) => {
                let written = f.write_all(data).and_then(|()| f.sync_all());
                return match written {
                    Ok(()) => Ok(tmp),
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        Err(e)
                    }
                };
            }
            // Someone holds this name (perhaps a planted link): take another.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no temporary name was free")))
}

fn create_exclusive(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)
}

/// `.<name>.<pid>.<counter>.<nanoseconds>.tmp` next to `path`: hidden, unique in this
/// process, and not guessable from outside before it exists.
fn temp_name(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{}.{n}.{nanos:09}.tmp", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn replace_never_writes_through_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let path = dir.path().join("file.json");
        symlink(&victim, &path).unwrap();

        replace(&path, b"new", 0o640).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file(), "the link itself was replaced");
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    }

    #[test]
    fn bounded_reads_refuse_links_large_and_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_bounded(&file, 5).unwrap(), b"12345");
        assert!(matches!(
            read_bounded(&file, 4),
            Err(ReadError::TooLarge { limit: 4, size: 5 })
        ));
        let link = dir.path().join("link");
        symlink(&file, &link).unwrap();
        assert!(matches!(read_bounded(&link, 10), Err(ReadError::Symlink)));
        assert!(matches!(
            read_bounded(&dir.path().join("none"), 10),
            Err(ReadError::Missing)
        ));
        assert!(matches!(
            read_bounded(dir.path(), 10),
            Err(ReadError::NotRegular)
        ));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(
            matches!(read_bounded(&fifo, 10), Err(ReadError::NotRegular)),
            "a FIFO is refused without waiting for a writer"
        );
    }
}
