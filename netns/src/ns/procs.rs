//! Finding the processes of a network namespace by scanning `/proc`.
//!
//! A node proxy holds a pod's namespace as a descriptor (received over ZDS), not a process.
//! Some identity providers attest a workload by a process id (SPIRE's Delegated Identity
//! API in PID mode); [`processes_in`] finds the processes that live in the pod's namespace,
//! by comparing the identity ([`NsId`]) of each `/proc/<pid>/ns/net` with the pod's.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::NsId;
use crate::error::Error;

const PROC: &str = "/proc";

/// The network namespace of process `pid`, from `/proc/<pid>/ns/net`.
///
/// Fails when the process does not exist (any more) or its namespace cannot be read (a
/// process of another user, without `CAP_SYS_PTRACE`).
pub fn namespace_of(pid: u32) -> Result<NsId, Error> {
    let path = Path::new(PROC).join(pid.to_string()).join("ns/net");
    // `metadata` follows the magic link to the nsfs inode, the same file a namespace
    // descriptor refers to.
    let meta = std::fs::metadata(&path).map_err(|source| Error::Open { path, source })?;
    Ok(NsId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// The processes whose network namespace is `id`, in ascending process-id order.
///
/// Only processes are listed (thread-group leaders, as `/proc` lists them), never the
/// calling process itself. Processes that exit during the scan, or whose namespace cannot
/// be read, are skipped. Fails only when `/proc` itself cannot be read.
pub fn processes_in(id: NsId) -> Result<Vec<u32>, Error> {
    processes_in_any(&[id])
}

/// The processes whose network namespace is any of `ids`, in ascending process-id order:
/// one pass over `/proc` for all of them (see [`processes_in`]).
pub fn processes_in_any(ids: &[NsId]) -> Result<Vec<u32>, Error> {
    let own = std::process::id();
    let entries = std::fs::read_dir(PROC).map_err(|source| Error::Open {
        path: PROC.into(),
        source,
    })?;
    let mut pids: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| namespace_of(*pid).is_ok_and(|ns| ids.contains(&ns)))
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// Whether process `pid` still exists and lives in the namespace `id` (a process id found
/// earlier may have exited, or been reused by another process).
pub fn is_in(pid: u32, id: NsId) -> bool {
    namespace_of(pid).is_ok_and(|ns| ns == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetNs;
    use std::process::Command;

    #[test]
    fn own_process_is_never_listed() {
        let own = NetNs::current().unwrap().id();
        assert_eq!(namespace_of(std::process::id()).unwrap(), own);
        let pids = processes_in(own).unwrap();
        assert!(!pids.contains(&std::process::id()), "{pids:?}");
        assert!(pids.windows(2).all(|w| w[0] < w[1]), "sorted: {pids:?}");
    }

    #[test]
    fn a_vanished_process_is_gone() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let err = namespace_of(pid).unwrap_err();
        assert!(
            matches!(&err, Error::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{err}"
        );
        assert!(!is_in(pid, NetNs::current().unwrap().id()));
    }

    #[test]
    fn a_child_in_a_fresh_namespace_is_found_and_one_elsewhere_is_not() {
        let Some(_p) = testbed::require_privileged("processes_in") else {
            return;
        };
        let pod = testbed::Namespace::new().unwrap();
        let other = testbed::Namespace::new().unwrap();
        let pod_id = NetNs::from_path(pod.path()).unwrap().id();
        let other_id = NetNs::from_path(other.path()).unwrap().id();
        assert_eq!(processes_in(pod_id).unwrap(), Vec::<u32>::new());

        let inside = pod.spawn(Command::new("sleep").arg("30")).unwrap();
        let elsewhere = other.spawn(Command::new("sleep").arg("30")).unwrap();
        assert_eq!(processes_in(pod_id).unwrap(), vec![inside.id()]);
        assert_eq!(processes_in(other_id).unwrap(), vec![elsewhere.id()]);
        let mut both = vec![inside.id(), elsewhere.id()];
        both.sort_unstable();
        assert_eq!(processes_in_any(&[pod_id, other_id]).unwrap(), both);
        assert!(is_in(inside.id(), pod_id));
        assert!(!is_in(elsewhere.id(), pod_id));
        // The test process's own namespace does not list the pod's process either.
        let own = NetNs::current().unwrap().id();
        assert!(!processes_in(own).unwrap().contains(&inside.id()));

        // Once it exits, it is no longer found.
        let pid = inside.id();
        drop(inside);
        assert!(!is_in(pid, pod_id));
        assert_eq!(processes_in(pod_id).unwrap(), Vec::<u32>::new());
    }
}
