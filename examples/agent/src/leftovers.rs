//! Rules left behind by an earlier run that this run does not remember.
//!
//! The pod state file tells a restarted agent which pods have rules. When it is lost (a
//! fresh state directory, a node reboot that kept the pods), a pod whose namespace was
//! unenrolled while the agent was away would keep its redirection rules, and with nobody to
//! hand it to the proxy its TCP would be reset for good. So at start-up every pod of this
//! node in the workloads file that is neither to be enrolled nor remembered is checked for
//! the rule set's chains; those that have them are handed to the reconciler as remembered
//! pods, whose first pass removes their rules (and sends the proxy a delete) like for any
//! pod that left.

use std::collections::BTreeSet;

use tracing::{info, warn};

use crate::desired::{LocalPod, Settings, local_desired};
use crate::effects::rules::NetnsRules;
use crate::workloads::Cluster;

/// The pods of this node that have a network namespace path but are neither to be enrolled
/// nor in `remembered`.
pub(crate) fn candidates(
    cluster: &Cluster,
    settings: &Settings,
    remembered: &[LocalPod],
) -> Vec<LocalPod> {
    let desired = local_desired(cluster, settings).pods;
    let remembered: BTreeSet<&str> = remembered.iter().map(|p| p.uid.as_str()).collect();
    cluster
        .pods
        .iter()
        .filter(|p| p.node == settings.node)
        .filter(|p| !desired.contains_key(&p.uid) && !remembered.contains(p.uid.as_str()))
        .filter_map(|p| Some(LocalPod::of(p, p.netns.as_deref()?)))
        .collect()
}

/// The [`candidates`] whose network namespace holds the chains of `rules`.
pub(crate) async fn find(
    cluster: &Cluster,
    settings: &Settings,
    remembered: &[LocalPod],
    rules: &NetnsRules,
) -> Vec<LocalPod> {
    let mut found = Vec::new();
    for pod in candidates(cluster, settings, remembered) {
        match rules.present(&pod.netns).await {
            Ok(true) => {
                info!(
                    pod = %pod.display_name(),
                    uid = %pod.uid,
                    netns = %pod.netns.display(),
                    "redirection rules found in a pod that is not enrolled (left by an earlier run); removing them"
                );
                found.push(pod);
            }
            Ok(false) => {}
            Err(e) => {
                warn!(pod = %pod.display_name(), uid = %pod.uid, error = %e, "cannot check a pod that is not enrolled for leftover redirection rules");
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::tests::{EXAMPLE, settings};

    #[test]
    fn candidates_are_local_pods_neither_desired_nor_remembered() {
        let c = Cluster::from_yaml(EXAMPLE).unwrap();
        let uids = |pods: Vec<LocalPod>| pods.into_iter().map(|p| p.uid).collect::<Vec<_>>();
        // node-1: client-1 is enrolled, old-1 (legacy) is not; server-1 runs on node-2.
        let found = candidates(&c, &settings("node-1"), &[]);
        assert_eq!(uids(found.clone()), ["legacy/old-1"]);
        assert_eq!(found[0].netns, std::path::Path::new("/var/run/netns/mw-p3"));
        // A remembered pod is left to the state file's path.
        assert!(candidates(&c, &settings("node-1"), &found).is_empty());
        // node-2's only pod is enrolled.
        assert!(candidates(&c, &settings("node-2"), &[]).is_empty());
        // Once shop is unenrolled, client-1 is a candidate too.
        let unlabelled = EXAMPLE.replace(r#"{ io.cilium/mtls-enabled: "true" }"#, "{}");
        let c = Cluster::from_yaml(&unlabelled).unwrap();
        assert_eq!(
            uids(candidates(&c, &settings("node-1"), &[])),
            ["8d2f-1", "legacy/old-1"]
        );
    }
}
