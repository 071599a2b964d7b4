//! Follows the workloads file and publishes every valid new version.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::file_watch::{Stamp, Wakeups};
use crate::metrics::Metrics;
use crate::workloads::Cluster;

/// Watches one workloads file.
#[derive(Debug)]
pub(crate) struct WorkloadsFile {
    path: PathBuf,
    last_stamp: Option<Stamp>,
    last_text: String,
}

impl WorkloadsFile {
    /// Loads the file once; fails when it is missing or invalid.
    pub(crate) fn open(path: &Path) -> anyhow::Result<(Self, Cluster)> {
        let last_stamp = Stamp::of(path).ok();
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read workloads file {}: {e}", path.display()))?;
        let cluster = Cluster::from_yaml(&text)
            .map_err(|e| anyhow::anyhow!("workloads file {}: {e}", path.display()))?;
        log_version(path, &cluster, "workloads file loaded");
        Ok((
            Self {
                path: path.to_owned(),
                last_stamp,
                last_text: text,
            },
            cluster,
        ))
    }

    /// Checks the file once: `Ok(Some(cluster))` for a new valid version, `Ok(None)` when
    /// unchanged, `Err` for a new version that cannot be used (the previous one stays).
    pub(crate) fn poll(&mut self) -> Result<Option<Cluster>, String> {
        let now = Stamp::of(&self.path).ok();
        if now.is_some() && now == self.last_stamp {
            return Ok(None);
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                // Report a vanished file once per change of state.
                if self.last_stamp.take().is_some() {
                    return Err(format!("cannot read {}: {e}", self.path.display()));
                }
                return Ok(None);
            }
        };
        self.last_stamp = now;
        if text == self.last_text {
            return Ok(None);
        }
        self.last_text = text;
        Cluster::from_yaml(&self.last_text)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Looks at the file whenever its directory changes (and every `interval` in case a
    /// change notification is missed) and sends each valid new version, until `shutdown`.
    pub(crate) async fn run(
        mut self,
        interval: Duration,
        tx: watch::Sender<Arc<Cluster>>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) {
        let mut wakeups = Wakeups::for_file(&self.path, interval);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = wakeups.next() => {}
            }
            match self.poll() {
                Ok(None) => {}
                Ok(Some(cluster)) => {
                    log_version(&self.path, &cluster, "workloads file changed; reconciling");
                    metrics.workloads_reloads.inc();
                    tx.send_replace(Arc::new(cluster));
                }
                Err(e) => {
                    warn!(file = %self.path.display(), error = %e, "ignoring the new workloads file; keeping the previous version");
                    metrics.failure("workloads_file");
                }
            }
        }
    }
}

/// Logs what a version of the file holds.
fn log_version(path: &Path, cluster: &Cluster, message: &str) {
    info!(
        file = %path.display(),
        namespaces = cluster.namespaces.len(),
        pods = cluster.pods.len(),
        policies = cluster.policies.len(),
        "{message}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_sees_changes_and_keeps_the_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.yaml");
        std::fs::write(&path, "namespaces: [{name: a}]\n").unwrap();
        let (mut w, c) = WorkloadsFile::open(&path).unwrap();
        assert_eq!(c.namespaces.len(), 1);
        assert_eq!(w.poll(), Ok(None));

        std::fs::write(&path, "namespaces: [{name: a}, {name: b}]\n").unwrap();
        let c = w.poll().unwrap().expect("new version");
        assert_eq!(c.namespaces.len(), 2);
        assert_eq!(w.poll(), Ok(None));

        std::fs::write(&path, "namespaces: [{name: a}, {name: a}]\n").unwrap();
        let e = w.poll().unwrap_err();
        assert!(e.contains("declared twice"), "{e}");
        assert_eq!(w.poll(), Ok(None), "a bad version is reported once");

        // Replaced by rename (as editors and `mv` do).
        let tmp = dir.path().join("w.tmp");
        std::fs::write(&tmp, "namespaces: [{name: c}]\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let c = w.poll().unwrap().expect("renamed version");
        assert!(c.namespaces.contains_key("c"));

        std::fs::remove_file(&path).unwrap();
        assert!(w.poll().is_err(), "vanished file is reported");
        assert_eq!(w.poll(), Ok(None), "once");
        std::fs::write(&path, "namespaces: [{name: d}]\n").unwrap();
        assert!(w.poll().unwrap().unwrap().namespaces.contains_key("d"));
    }

    #[test]
    fn open_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.yaml");
        let e = WorkloadsFile::open(&path).unwrap_err().to_string();
        assert!(e.contains("cannot read workloads file"), "{e}");
        std::fs::write(&path, "pods: [{name: a}]").unwrap();
        let e = WorkloadsFile::open(&path).unwrap_err().to_string();
        assert!(e.contains("w.yaml"), "{e}");
    }
}
