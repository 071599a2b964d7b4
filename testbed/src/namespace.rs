//! Named network namespaces (`ip netns add`) that delete themselves.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use meshwire_netns::NetNs;

use crate::error::Error;

/// Where `ip netns add` puts its bind mounts.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Every name starts with this, followed by the creating process id in hex.
const PREFIX: &str = "mwtb";

/// The roles of namespaces, the last character of their names.
const ROLES: [char; 4] = ['f', 'n', 'p', 'x'];

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A new name: `mwtb<pid hex>-<seq hex><role>`, unique on the machine while this
/// process lives, and short (about 13 characters).
fn fresh_name(role: char) -> String {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{:x}-{seq:x}{role}", std::process::id())
}

/// Runs a command to completion and fails unless it exits with 0.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<Output, Error> {
    let text = command_text(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(cmd.get_program(), &text, e))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error::Command {
            command: text,
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn spawn_error(program: &OsStr, text: &str, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::NotFound {
        let tool = program.to_string_lossy().into_owned();
        let package = if tool == "ip" {
            "iproute2"
        } else {
            "the package that provides it"
        };
        Error::ToolMissing { tool, package }
    } else {
        Error::Io {
            context: format!("cannot run `{text}`"),
            source: e,
        }
    }
}

fn command_text(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `ip <args>` in the host namespace.
pub(crate) fn ip(args: &[&str]) -> Result<String, Error> {
    let out = run_checked(Command::new("ip").args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Inner {
    name: String,
    path: PathBuf,
    handle: NetNs,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            tracing::warn!(namespace = %self.name, error = %e, "cannot delete test namespace");
        }
    }
}

/// A named network namespace owned by a test; deleted (`ip netns del`) when the
/// last clone is dropped, also while a failed test unwinds.
///
/// Its path under `/var/run/netns` can be opened by anything that takes a netns
/// path, like a real pod's.
#[derive(Clone)]
pub struct Namespace {
    inner: Arc<Inner>,
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.inner.name)
            .field("id", &self.inner.handle.id())
            .finish()
    }
}

impl Namespace {
    /// Creates a namespace with a fresh name and its loopback interface up.
    pub(crate) fn create(role: char) -> Result<Self, Error> {
        Self::create_named(fresh_name(role))
    }

    /// A bare namespace of the caller's own (only `lo`, up), outside any
    /// [`Testbed`](crate::Testbed), deleted when the last clone is dropped. Its name
    /// follows the test-bed scheme, so the next test bed deletes it if this process is
    /// killed before.
    ///
    /// Call [`require_privileged`](crate::require_privileged) first.
    pub fn new() -> Result<Self, Error> {
        Self::create('x')
    }

    /// Deletes this namespace and creates a new, empty one (only `lo`, up) under the same
    /// name and path, the way a pod's sandbox is recreated. Whoever still holds a handle to
    /// the old namespace (an open file descriptor) keeps it; the path names the new one.
    ///
    /// Fails, deleting nothing, while another clone of this value exists.
    pub fn recreate(self) -> Result<Self, Error> {
        let inner = Arc::try_unwrap(self.inner).map_err(|inner| Error::Shared {
            name: inner.name.clone(),
        })?;
        let name = inner.name.clone();
        // Dropping the last owner deletes the old namespace.
        drop(inner);
        Self::create_named(name)
    }

    fn create_named(name: String) -> Result<Self, Error> {
        ip(&["netns", "add", &name])?;
        let path = Path::new(NETNS_DIR).join(&name);
        // From here on the namespace is deleted on drop, even if setup fails.
        let handle = match NetNs::from_path(&path) {
            Ok(h) => h,
            Err(e) => {
                let _ = ip(&["netns", "del", &name]);
                return Err(e.into());
            }
        };
        let ns = Self {
            inner: Arc::new(Inner { name, path, handle }),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The path of the namespace: `/var/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A handle to the namespace, shared with this object.
    pub fn netns(&self) -> &NetNs {
        &self.inner.handle
    }

    /// A new, independent handle (its own file descriptor).
    pub fn open(&self) -> Result<NetNs, Error> {
        Ok(self.inner.handle.try_clone()?)
    }

    /// Runs `f` inside the namespace on a short-lived helper thread.
    pub fn run<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        Ok(self.inner.handle.run_on_thread(f)?)
    }

    /// Runs `ip <args>` against this namespace (`ip -n <name> …`) and returns its
    /// standard output.
    pub fn ip(&self, args: &[&str]) -> Result<String, Error> {
        let mut all = vec!["-n", self.name()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `program args…` inside the namespace to completion and returns its
    /// standard output; fails unless it exits with 0.
    pub fn exec<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Result<String, Error> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        let out = self.run(move || run_checked(&mut cmd))??;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A command that runs `program` inside the namespace through
    /// `ip netns exec <name> program`, for callers that start it themselves (for
    /// example with `tokio::process`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name()]).arg(program);
        cmd
    }

    /// Starts `cmd` inside the namespace (the child inherits the namespace of the
    /// helper thread that starts it). The process is killed when the returned
    /// [`Process`] is dropped.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Process, Error> {
        let text = command_text(cmd);
        let child = self
            .run(|| cmd.spawn())?
            .map_err(|e| spawn_error(cmd.get_program(), &text, e))?;
        Ok(Process {
            child: Some(child),
            command: text,
        })
    }

    /// Sets a sysctl of this namespace, for example `net/ipv4/ip_forward`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        let path = Path::new("/proc/sys").join(key);
        let value = value.to_owned();
        let p = path.clone();
        self.run(move || std::fs::write(&p, value))?
            .map_err(|source| Error::Io {
                context: format!("cannot write {} in {}", path.display(), self.name()),
                source,
            })
    }
}

/// A process started inside a namespace; killed and reaped when dropped.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    command: String,
}

impl Process {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The command line it was started with.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The child, for its pipes and status.
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) -> Result<(), Error> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait().map_err(|source| Error::Io {
                context: format!("cannot reap `{}`", self.command),
                source,
            })?;
        }
        Ok(())
    }

    /// Takes the child out; it is then no longer killed on drop.
    pub fn into_child(mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!(error = %e, "cannot stop test process");
        }
    }
}

/// Deletes namespaces left behind by test processes that no longer exist (for
/// example after a test binary was killed). Names of live processes are kept.
pub(crate) fn reap_stale() {
    delete_where(|pid| !Path::new(&format!("/proc/{pid}")).exists());
}

/// Deletes every namespace this process created, whoever still holds it.
///
/// For emergency clean-up when the owning [`Namespace`] values cannot be dropped in
/// order, for example from a signal handler that is about to exit the process.
pub fn delete_own_namespaces() {
    let me = std::process::id();
    delete_where(|pid| pid == me);
}

/// Deletes the test-bed namespaces whose creating pid satisfies `doomed`.
fn delete_where(doomed: impl Fn(u32) -> bool) {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = parse_name(&name) else {
            continue;
        };
        if doomed(pid) {
            tracing::info!(namespace = %name, "deleting test namespace");
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// The pid of the process that created a namespace named by [`fresh_name`].
fn parse_name(name: &str) -> Option<u32> {
    let (pid, rest) = name.strip_prefix(PREFIX)?.split_once('-')?;
    let role = rest.chars().last()?;
    let seq = rest.strip_suffix(role)?;
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !ROLES.contains(&role) || !hex(pid) || !hex(seq) {
        return None;
    }
    u32::from_str_radix(pid, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_unique_and_carry_the_pid() {
        let a = fresh_name('p');
        let b = fresh_name('p');
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
        assert!(a.starts_with(&format!("mwtb{:x}-", std::process::id())));
        assert_eq!(parse_name(&a), Some(std::process::id()));
    }

    #[test]
    fn only_our_names_are_recognised() {
        assert_eq!(parse_name("mwtb1f-3p"), Some(0x1f));
        for other in [
            "mwt-n1",
            "mw1f-3p",
            "mwtb1f-3q",
            "mwtb-3p",
            "mwtb1f-p",
            "mwtbzz-3p",
            "x",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }
}
