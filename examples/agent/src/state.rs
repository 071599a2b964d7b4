//! Pods whose redirection rules this agent installed, kept in the state directory so that an
//! agent restarted after a namespace was unenrolled still removes their rules.

use std::path::{Path, PathBuf};

use tracing::warn;

use crate::desired::LocalPod;

const FILE: &str = "enrolled-pods.json";

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

    /// Reads the file; a missing or unreadable file means no pods (with a warning).
    pub(crate) fn load(&mut self) -> Vec<LocalPod> {
        let pods = match std::fs::read(&self.path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<LocalPod>>(&bytes) {
                Ok(p) => p,
                Err(e) => {
                    warn!(file = %self.path.display(), error = %e, "ignoring unreadable pod state file");
                    Vec::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                warn!(file = %self.path.display(), error = %e, "cannot read pod state file");
                Vec::new()
            }
        };
        self.last.clone_from(&pods);
        pods
    }

    /// Writes `pods` (atomically, by rename) when they differ from what was last written.
    pub(crate) fn store(&mut self, mut pods: Vec<LocalPod>) -> std::io::Result<()> {
        pods.sort_by(|a, b| a.uid.cmp(&b.uid));
        if pods == self.last {
            return Ok(());
        }
        let json = serde_json::to_vec_pretty(&pods).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &self.path)?;
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
}
