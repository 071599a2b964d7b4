//! Pods whose redirection rules this agent installed, kept in the state directory so that an
//! agent restarted after a namespace was unenrolled still removes their rules.

use std::path::{Path, PathBuf};

use tracing::warn;

use crate::desired::LocalPod;
use crate::safe_file::{self, ReadError};

const FILE: &str = "enrolled-pods.json";
/// Largest pod state file read or written (about 20,000 pods).
pub(crate) const MAX_STATE_FILE_BYTES: u64 = 4 << 20;

/// The persisted set of pods with rules.
#[derive(Debug)]
pub(crate) struct PodStateFile {
    path: PathBuf,
    last: Vec<LocalPod>,
}

impl PodStateFile {
    pub(crate) fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(FILE),
            last: Vec::new(),
        }
    }

    /// Reads the file; a missing file means no pods, an unreadable one too (with a warning).
    pub(crate) fn load(&mut self) -> Vec<LocalPod> {
        let pods = self.read().unwrap_or_else(|e| {
            warn!("ignoring the pod state file: {e}");
            Vec::new()
        });
        self.last.clone_from(&pods);
        pods
    }

    /// The pods in the file (none when it does not exist). A symbolic link at the path is
    /// not followed, and a file over [`MAX_STATE_FILE_BYTES`] is not read.
    pub(crate) fn read(&self) -> anyhow::Result<Vec<LocalPod>> {
        let bytes = match safe_file::read_bounded(&self.path, MAX_STATE_FILE_BYTES) {
            Ok(bytes) => bytes,
            Err(ReadError::Missing) => return Ok(Vec::new()),
            Err(e) => anyhow::bail!("pod state file {}: {e}", self.path.display()),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("pod state file {}: {e}", self.path.display()))
    }

    /// Writes `pods` when they differ from what was last written: to a new temporary file,
    /// then renamed over the file (a symbolic link planted at either name is not followed).
    pub(crate) fn store(&mut self, mut pods: Vec<LocalPod>) -> std::io::Result<()> {
        pods.sort_by(|a, b| a.uid.cmp(&b.uid));
        if pods == self.last {
            return Ok(());
        }
        let json = serde_json::to_vec_pretty(&pods).map_err(std::io::Error::other)?;
        if json.len() as u64 > MAX_STATE_FILE_BYTES {
            return Err(std::io::Error::other(format!(
                "{} pods make a pod state file of {} bytes, over the limit of {MAX_STATE_FILE_BYTES} bytes",
                pods.len(),
                json.len()
            )));
        }
        safe_file::replace(&self.path, &json, 0o600)?;
        self.last = pods;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str) -> LocalPod {
        LocalPod {
            uid: uid.into(),
            name: "n".into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
            netns: PathBuf::from("/var/run/netns/x"),
        }
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = PodStateFile::new(dir.path());
        assert!(f.load().is_empty());
        f.store(vec![pod("b"), pod("a")]).unwrap();
        let mut g = PodStateFile::new(dir.path());
        assert_eq!(g.load(), vec![pod("a"), pod("b")]);
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert!(g.load().is_empty());
    }

    #[test]
    fn a_link_planted_at_the_state_file_is_neither_written_through_nor_read() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.json");
        let victim_text = serde_json::to_string(&vec![pod("planted")]).unwrap();
        std::fs::write(&victim, &victim_text).unwrap();
        let path = dir.path().join(FILE);
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        // The temporary name an earlier version always used.
        std::os::unix::fs::symlink(&victim, dir.path().join("enrolled-pods.json.tmp")).unwrap();

        let mut f = PodStateFile::new(dir.path());
        let e = f.read().unwrap_err().to_string();
        assert!(e.contains("symbolic link") && e.contains(FILE), "{e}");
        assert!(f.load().is_empty(), "the link's target is not read");

        f.store(vec![pod("a")]).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), victim_text);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(PodStateFile::new(dir.path()).load(), vec![pod("a")]);
    }

    #[test]
    fn an_oversized_state_file_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        // Valid JSON, padded past the limit.
        let mut big = serde_json::to_vec(&vec![pod("a")]).unwrap();
        big.resize(usize::try_from(MAX_STATE_FILE_BYTES).unwrap() + 1, b' ');
        std::fs::write(dir.path().join(FILE), &big).unwrap();
        let mut f = PodStateFile::new(dir.path());
        let e = f.read().unwrap_err().to_string();
        assert!(
            e.contains(FILE) && e.contains(&format!("limit of {MAX_STATE_FILE_BYTES} bytes")),
            "{e}"
        );
        assert!(f.load().is_empty());
    }
}
