//! Finding the network namespaces of pods that already run, from `/proc`, as istio-cni does
//! at start-up: for each process whose network namespace is not the host's, the pod uid in
//! its cgroup path names the pod, and the namespace counts only if it holds one of the
//! pod's addresses (a process of one pod may visit another pod's namespace). Of several
//! processes of a pod, the oldest one's namespace wins.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::cgroup;
use super::model::Sandbox;
use super::sandboxes::{Sandboxes, holds_any};
use crate::desired::Settings;
use crate::workloads::Cluster;

/// How often pods of enrolled namespaces without a known sandbox are looked for again.
const RESCAN_INTERVAL: Duration = Duration::from_secs(10);

/// A network namespace's identity: (device, inode).
type NsKey = (u64, u64);

fn ns_key(path: &Path) -> Option<NsKey> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The start time of process `pid` (clock ticks since boot, field 22 of `stat`).
fn start_time(proc_dir: &Path, pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_dir.join(pid).join("stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields resume after the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Finds the sandboxes of `wanted` (pod uid → the pod's addresses) under `proc_dir` (the
/// host's `/proc`). Blocking: it enters namespaces to read their addresses.
pub(crate) fn scan(
    proc_dir: &Path,
    wanted: &BTreeMap<String, Vec<IpAddr>>,
) -> BTreeMap<String, Sandbox> {
    // Never the host's namespace (PID 1's), nor the agent's own.
    let host: BTreeSet<NsKey> = [
        proc_dir.join("1/ns/net"),
        PathBuf::from("/proc/self/ns/net"),
    ]
    .iter()
    .filter_map(|p| ns_key(p))
    .collect();
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        warn!(dir = %proc_dir.display(), "cannot read the process directory; no running pods found");
        return BTreeMap::new();
    };
    // uid → (start time, sandbox)
    let mut best: BTreeMap<String, (u64, Sandbox)> = BTreeMap::new();
    // Namespaces already given to a pod.
    let mut taken: BTreeSet<NsKey> = BTreeSet::new();
    let mut pids: Vec<(u64, String)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|name| name.parse::<u32>().is_ok())
        .filter_map(|pid| Some((start_time(proc_dir, &pid)?, pid)))
        .collect();
    // Oldest first: the first process of a pod that qualifies is its sandbox.
    pids.sort();
    for (started, pid) in pids {
        let netns = proc_dir.join(&pid).join("ns/net");
        let Some(key) = ns_key(&netns) else { continue };
        if host.contains(&key) || taken.contains(&key) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(proc_dir.join(&pid).join("cgroup")) else {
            continue;
        };
        let uid = match cgroup::pod_of_process(&text) {
            Ok(Some(found)) => found.pod_uid,
            Ok(None) => continue,
            Err(e) => {
                debug!(pid, error = %e, "cgroup names no single pod");
                continue;
            }
        };
        let Some(ips) = wanted.get(&uid) else {
            continue;
        };
        if best.contains_key(&uid) || ips.is_empty() {
            continue;
        }
        match holds_any(&netns, ips) {
            Ok(true) => {
                taken.insert(key);
                best.insert(
                    uid,
                    (
                        started,
                        Sandbox {
                            netns,
                            ips: ips.clone(),
                        },
                    ),
                );
            }
            Ok(false) => {
                warn!(pid, %uid, "a process of the pod is in a network namespace without the pod's addresses; not taken");
            }
            Err(e) => {
                debug!(pid, %uid, error = %e, "cannot read the addresses of the process's network namespace")
            }
        }
    }
    best.into_iter().map(|(uid, (_, s))| (uid, s)).collect()
}

/// The local pods of enrolled namespaces whose sandbox is not known, with their addresses.
fn missing(cluster: &Cluster, settings: &Settings) -> BTreeMap<String, Vec<IpAddr>> {
    cluster
        .pods
        .iter()
        .filter(|p| p.node == settings.node && p.netns.is_none() && !p.ips.is_empty())
        .filter(|p| cluster.namespace_enrolled(&p.namespace, &settings.label_key))
        .map(|p| (p.uid.clone(), p.ips.clone()))
        .collect()
}

/// Scans `proc_dir` for `wanted` off the async workers and records what it finds.
pub(crate) async fn find_into(
    proc_dir: &Path,
    wanted: BTreeMap<String, Vec<IpAddr>>,
    sandboxes: &Sandboxes,
) -> usize {
    if wanted.is_empty() {
        return 0;
    }
    let dir = proc_dir.to_owned();
    let found = tokio::task::spawn_blocking(move || scan(&dir, &wanted))
        .await
        .unwrap_or_default();
    for (uid, sandbox) in &found {
        info!(%uid, netns = %sandbox.netns.display(), "found the network namespace of a running pod");
        sandboxes.insert(uid, sandbox.clone());
    }
    found.len()
}

/// Scans again for pods of enrolled namespaces whose sandbox is not known (a namespace
/// labelled after its pods started while the agent was away), when the cluster changes and
/// every [`RESCAN_INTERVAL`] while some are missing, until `shutdown`.
pub(crate) async fn rescan(
    proc_dir: PathBuf,
    sandboxes: Sandboxes,
    mut cluster: watch::Receiver<Arc<Cluster>>,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let mut last: Option<(BTreeMap<String, Vec<IpAddr>>, Instant)> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = cluster.changed() => if r.is_err() { return },
            () = tokio::time::sleep(RESCAN_INTERVAL) => {}
        }
        let wanted = missing(&cluster.borrow_and_update(), &settings);
        if wanted.is_empty() {
            last = None;
            continue;
        }
        if last
            .as_ref()
            .is_some_and(|(w, at)| *w == wanted && at.elapsed() < RESCAN_INTERVAL)
        {
            continue;
        }
        debug!(
            pods = wanted.len(),
            "looking in /proc for pods without a known network namespace"
        );
        find_into(&proc_dir, wanted.clone(), &sandboxes).await;
        last = Some((wanted, Instant::now()));
    }
}

#[cfg(test)]
mod tests;
