//! The state directory of a cluster, and the emergency clean-up of every state directory
//! this process created.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory removed on drop.
#[derive(Debug)]
pub(crate) struct StateDir(PathBuf);

impl StateDir {
    pub(crate) fn create() -> std::io::Result<Self> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{}{n}", state_dir_prefix()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The prefix of the state directories of this process's clusters.
fn state_dir_prefix() -> String {
    format!("meshwire-demo-{}-", std::process::id())
}

/// Removes the state directories of this process's clusters and of their API servers
/// (emergency clean-up).
pub fn remove_own_state_dirs() {
    let prefixes = [state_dir_prefix(), testbed::kube::dir_prefix()];
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
