//! Helpers for the fixtures that run upstream programs: ports, logs, and stopping children.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::Error;

/// A closure that wraps an I/O error with `context`.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("binding a free port"))?;
    Ok(l.local_addr()
        .map_err(io_err("reading a free port"))?
        .port())
}

/// The log file `name` in `dir`, truncated.
pub(crate) fn log_file(dir: &Path, name: &str) -> Result<std::fs::File, Error> {
    std::fs::File::create(dir.join(name)).map_err(io_err(format!("creating {name}")))
}

/// The log file `name` in `dir`, appended to (a restarted process keeps the earlier lines).
pub(crate) fn append_log(dir: &Path, name: &str) -> Result<std::fs::File, Error> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .map_err(io_err(format!("opening {name}")))
}

/// A random number, for names and tokens that must not collide between test processes.
pub(crate) fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// Asks `child` to stop with SIGTERM, and kills it when it has not exited after `grace`.
pub(crate) fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `lines` lines of the file `dir/name` (for failure messages).
pub(crate) fn tail(dir: &Path, name: &str, lines: usize) -> String {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
