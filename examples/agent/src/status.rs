//! Node status files: each agent reports which pods of its node are fully enrolled (the proxy
//! holds them and their rules are in place), and every agent reads every node's report, so a
//! pod of another node is advertised as HBONE only once its own node can receive HBONE.
//!
//! One JSON file per node, `<dir>/<node>.json`: `{"node": "<node>", "pods": ["<uid>", …]}`,
//! replaced atomically (written to a new hidden temporary file, then renamed; a symbolic
//! link planted at either name is not followed) and read only if it is a regular file of at
//! most [`MAX_STATUS_FILE_BYTES`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::desired::RemoteReady;
use crate::file_watch::{Stamp, Wakeups};
use crate::safe_file;

/// Largest pod status file read or written (about 20,000 pod uids).
pub(crate) const MAX_STATUS_FILE_BYTES: u64 = 1 << 20;

/// The content of one node's status file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeStatus {
    node: String,
    pods: BTreeSet<String>,
}

/// Whether `node` can name a status file (`<node>.json`) in the status directory.
pub(crate) fn valid_node_file_name(node: &str) -> bool {
    !node.is_empty() && node != "." && node != ".." && !node.contains('/') && !node.contains('\0')
}

/// Opens the status directory `dir` for `node` (creating it) and reads it once, so the first
/// publish already gates the pods of other nodes on their nodes' reports.
pub(crate) fn open(dir: &Path, node: &str) -> anyhow::Result<(StatusReader, StatusWriter)> {
    if !valid_node_file_name(node) {
        anyhow::bail!(
            "--node-name {node:?} cannot name a pod status file; set --pod-status-dir none"
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the pod status directory {}", dir.display()))?;
    let mut reader = StatusReader::new(dir);
    reader.poll();
    if let RemoteReady::Gated(nodes) = reader.current() {
        info!(
            dir = %dir.display(),
            nodes = nodes.len(),
            "pods of other nodes are HBONE once their node's status file lists them"
        );
    }
    Ok((reader, StatusWriter::new(dir, node)))
}

/// Writes this node's status file.
#[derive(Debug)]
pub(crate) struct StatusWriter {
    dir: PathBuf,
    node: String,
    /// What the file holds now, as far as this writer knows (`None`: not written yet).
    last: Option<BTreeSet<String>>,
}

impl StatusWriter {
    pub(crate) fn new(dir: &Path, node: &str) -> Self {
        Self {
            dir: dir.to_owned(),
            node: node.to_owned(),
            last: None,
        }
    }

    /// The file this writer replaces.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.node))
    }

    /// Replaces the file with `pods` (atomically, by rename) unless it already holds them.
    /// Returns whether it was written. A symbolic link at the path is replaced, not followed.
    pub(crate) fn store(&mut self, pods: &BTreeSet<String>) -> std::io::Result<bool> {
        if self.last.as_ref() == Some(pods) {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.dir)?;
        let status = NodeStatus {
            node: self.node.clone(),
            pods: pods.clone(),
        };
        let json = serde_json::to_vec_pretty(&status).map_err(std::io::Error::other)?;
        if json.len() as u64 > MAX_STATUS_FILE_BYTES {
            return Err(std::io::Error::other(format!(
                "{} pods make a pod status file of {} bytes, over the limit of {MAX_STATUS_FILE_BYTES} bytes",
                pods.len(),
                json.len()
            )));
        }
        safe_file::replace(&self.path(), &json, 0o644)?;
        self.last = Some(pods.clone());
        Ok(true)
    }
}

/// The pods listed in `node`'s status file at `path`: a regular file (not a symbolic link) of
/// at most [`MAX_STATUS_FILE_BYTES`] that names `node`.
fn read_status(path: &Path, node: &str) -> Result<BTreeSet<String>, String> {
    let bytes = safe_file::read_bounded(path, MAX_STATUS_FILE_BYTES).map_err(|e| e.to_string())?;
    let status = serde_json::from_slice::<NodeStatus>(&bytes).map_err(|e| e.to_string())?;
    if status.node == node {
        Ok(status.pods)
    } else {
        Err(format!("it names node {:?}", status.node))
    }
}

#[derive(Debug)]
struct Seen {
    stamp: Stamp,
    /// The last valid content (kept while a newer version is invalid).
    pods: Option<BTreeSet<String>>,
}

/// Reads every node's status file.
#[derive(Debug)]
pub(crate) struct StatusReader {
    dir: PathBuf,
    files: BTreeMap<String, Seen>,
    /// Whether the last directory read failed (reported once).
    dir_failed: bool,
}

impl StatusReader {
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            files: BTreeMap::new(),
            dir_failed: false,
        }
    }

    /// The enrolled pods of every node, as last read.
    pub(crate) fn current(&self) -> RemoteReady {
        RemoteReady::Gated(
            self.files
                .iter()
                .filter_map(|(node, seen)| Some((node.clone(), seen.pods.clone()?)))
                .collect(),
        )
    }

    /// Reads the directory once; returns the new view when it changed. A missing directory
    /// means no node has enrolled pods; an invalid file keeps its node's previous content;
    /// a removed file drops its node.
    pub(crate) fn poll(&mut self) -> Option<RemoteReady> {
        let before = self.current();
        let mut present = BTreeSet::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                self.dir_failed = false;
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let Some(node) = name
                        .to_str()
                        .filter(|n| !n.starts_with('.'))
                        .and_then(|n| n.strip_suffix(".json"))
                        .filter(|n| valid_node_file_name(n))
                    else {
                        continue;
                    };
                    present.insert(node.to_owned());
                    self.read_one(node, &entry.path());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                if !self.dir_failed {
                    warn!(dir = %self.dir.display(), error = %e, "cannot read the pod status directory; keeping the last statuses");
                    self.dir_failed = true;
                }
                return None;
            }
        }
        self.files.retain(|node, _| present.contains(node));
        let now = self.current();
        (now != before).then_some(now)
    }

    fn read_one(&mut self, node: &str, path: &Path) {
        let Ok(stamp) = Stamp::of(path) else {
            return;
        };
        if self.files.get(node).is_some_and(|s| s.stamp == stamp) {
            return;
        }
        let parsed = read_status(path, node);
        let previous = self.files.remove(node).and_then(|s| s.pods);
        let pods = match parsed {
            Ok(pods) => Some(pods),
            Err(e) => {
                warn!(file = %path.display(), error = %e, "ignoring an invalid pod status file; keeping the previous version");
                previous
            }
        };
        self.files.insert(node.to_owned(), Seen { stamp, pods });
    }

    /// Reads the directory whenever it changes (and every `interval` in case a change
    /// notification is missed) and sends each new view, until `shutdown`.
    pub(crate) async fn run(
        mut self,
        interval: Duration,
        tx: watch::Sender<Arc<RemoteReady>>,
        shutdown: CancellationToken,
    ) {
        let mut wakeups = Wakeups::new(&self.dir, interval);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = wakeups.next() => {}
            }
            if let Some(view) = self.poll() {
                if let RemoteReady::Gated(nodes) = &view {
                    let pods: usize = nodes.values().map(BTreeSet::len).sum();
                    info!(
                        nodes = nodes.len(),
                        pods, "pod statuses of the nodes changed"
                    );
                }
                tx.send_replace(Arc::new(view));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(uids: &[&str]) -> BTreeSet<String> {
        uids.iter().map(|u| (*u).to_owned()).collect()
    }

    fn gated(nodes: &[(&str, &[&str])]) -> RemoteReady {
        RemoteReady::Gated(
            nodes
                .iter()
                .map(|(n, u)| ((*n).to_owned(), set(u)))
                .collect(),
        )
    }

    #[test]
    fn status_files_round_trip_between_writers_and_a_reader() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("workloads.yaml.status");
        let mut reader = StatusReader::new(&dir);
        assert_eq!(reader.poll(), None, "missing directory: nothing listed");
        assert_eq!(reader.current(), gated(&[]));

        let mut n1 = StatusWriter::new(&dir, "node-1");
        let mut n2 = StatusWriter::new(&dir, "node-2");
        assert!(n1.store(&set(&["a", "b"])).unwrap(), "first write");
        assert!(
            !n1.store(&set(&["a", "b"])).unwrap(),
            "unchanged: not written"
        );
        assert!(n2.store(&set(&[])).unwrap());
        assert_eq!(
            reader.poll(),
            Some(gated(&[("node-1", &["a", "b"]), ("node-2", &[])]))
        );
        assert_eq!(reader.poll(), None, "unchanged");
        let text = std::fs::read_to_string(dir.join("node-1.json")).unwrap();
        assert!(text.contains("\"node\": \"node-1\""), "{text}");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // Dropping a pod is seen.
        assert!(n1.store(&set(&["b"])).unwrap());
        assert_eq!(
            reader.poll(),
            Some(gated(&[("node-1", &["b"]), ("node-2", &[])]))
        );

        // A file that is not valid keeps the node's previous status.
        std::fs::write(dir.join("node-2.json"), b"{not json").unwrap();
        assert_eq!(reader.poll(), None);
        std::fs::write(
            dir.join("node-2.json"),
            br#"{"node": "node-9", "pods": ["x"]}"#,
        )
        .unwrap();
        assert_eq!(reader.poll(), None, "a file naming another node is ignored");
        // A file that was never valid lists nothing.
        std::fs::write(dir.join("node-3.json"), b"[]").unwrap();
        std::fs::write(dir.join(".node-4.json.tmp"), b"{}").unwrap();
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        assert_eq!(reader.poll(), None);
        assert_eq!(
            reader.current(),
            gated(&[("node-1", &["b"]), ("node-2", &[])])
        );

        // A removed file drops its node.
        std::fs::remove_file(dir.join("node-1.json")).unwrap();
        assert_eq!(reader.poll(), Some(gated(&[("node-2", &[])])));

        // A fresh reader (an agent starting) sees the current files at once.
        assert!(n2.store(&set(&["c"])).unwrap());
        let mut fresh = StatusReader::new(&dir);
        assert_eq!(fresh.poll(), Some(gated(&[("node-2", &["c"])])));
    }

    #[test]
    fn links_are_not_followed_and_oversized_files_not_read() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("s");
        std::fs::create_dir_all(&dir).unwrap();
        let victim = root.path().join("victim.json");
        let victim_text = r#"{"node": "node-3", "pods": ["planted"]}"#;
        std::fs::write(&victim, victim_text).unwrap();
        // At this writer's file, and at the temporary name an earlier version always used.
        std::os::unix::fs::symlink(&victim, dir.join("node-1.json")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(".node-1.json.tmp")).unwrap();
        // Another node's file is a link to a valid status naming that node.
        std::os::unix::fs::symlink(&victim, dir.join("node-3.json")).unwrap();
        // Valid JSON, padded past the limit.
        let mut big = br#"{"node": "node-4", "pods": ["huge"]}"#.to_vec();
        big.resize(usize::try_from(MAX_STATUS_FILE_BYTES).unwrap() + 1, b' ');
        std::fs::write(dir.join("node-4.json"), &big).unwrap();

        let mut reader = StatusReader::new(&dir);
        reader.poll();
        assert_eq!(
            reader.current(),
            gated(&[]),
            "neither the link nor the oversized file is read"
        );
        let e = read_status(&dir.join("node-4.json"), "node-4").unwrap_err();
        assert!(
            e.contains(&format!("limit of {MAX_STATUS_FILE_BYTES} bytes")),
            "{e}"
        );
        assert!(
            read_status(&dir.join("node-3.json"), "node-3")
                .unwrap_err()
                .contains("symbolic link")
        );

        let mut writer = StatusWriter::new(&dir, "node-1");
        assert!(writer.store(&set(&["a"])).unwrap());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), victim_text);
        assert!(
            std::fs::symlink_metadata(writer.path())
                .unwrap()
                .file_type()
                .is_file()
        );
        reader.poll();
        assert_eq!(reader.current(), gated(&[("node-1", &["a"])]));
    }

    #[tokio::test]
    async fn reader_task_sends_each_change() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("s");
        std::fs::create_dir_all(&dir).unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(RemoteReady::Gated(BTreeMap::new())));
        let shutdown = CancellationToken::new();
        // A long poll interval: the change notification must wake the reader.
        let task = tokio::spawn(StatusReader::new(&dir).run(
            Duration::from_secs(3600),
            tx,
            shutdown.clone(),
        ));
        // Let the task start watching; its first tick reads the (empty) directory.
        tokio::time::sleep(Duration::from_millis(100)).await;
        StatusWriter::new(&dir, "node-2")
            .store(&set(&["p"]))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("woken by the change")
            .unwrap();
        assert_eq!(**rx.borrow_and_update(), gated(&[("node-2", &["p"])]));
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn node_names_that_cannot_name_a_file_are_refused() {
        assert!(valid_node_file_name("node-1"));
        assert!(valid_node_file_name("ip-10-0-0-1.ec2.internal"));
        for bad in ["", ".", "..", "a/b"] {
            assert!(!valid_node_file_name(bad), "{bad:?}");
        }
    }
}
