//! The real upstream programs the tests start (kube-apiserver, etcd, SPIRE), built from
//! the Go module proxy by `testbed/peers/build.sh` into `target/peers/bin`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use crate::error::Error;
use crate::namespace::run_checked;

/// A group of peers built together from one pinned Go module under `testbed/peers/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerGroup {
    /// `kube-apiserver` and `etcd`.
    Kube,
    /// `spire-server` and `spire-agent`.
    Spire,
}

impl PeerGroup {
    fn dir_name(self) -> &'static str {
        match self {
            Self::Kube => "kube",
            Self::Spire => "spire",
        }
    }
}

/// The workspace root (this crate lives in `<root>/testbed`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map_or_else(|| here.clone(), PathBuf::from)
}

/// Where the peer binaries are: `MESHWIRE_PEERS_DIR/bin` when set, else
/// `<workspace>/target/peers/bin`.
pub fn peers_bin_dir() -> PathBuf {
    std::env::var_os("MESHWIRE_PEERS_DIR")
        .map_or_else(|| workspace_root().join("target/peers"), PathBuf::from)
        .join("bin")
}

/// Groups already checked by this process.
static BUILT: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// Returns the path of peer binary `name` of `group`, building the group first (once per
/// process; a no-op when the binaries are up to date with the pinned module).
pub fn peer_binary(group: PeerGroup, name: &str) -> Result<PathBuf, Error> {
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !built.contains(&group.dir_name()) {
        let script = workspace_root().join("testbed/peers/build.sh");
        run_checked(Command::new("bash").arg(&script).arg(group.dir_name()))?;
        built.push(group.dir_name());
    }
    let path = peers_bin_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Io {
            context: format!("peer binary {}", path.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "not built; build it with `bash testbed/peers/build.sh {}` (needs Go{})",
                    group.dir_name(),
                    if group == PeerGroup::Spire {
                        " and gcc"
                    } else {
                        ""
                    }
                ),
            ),
        })
    }
}
