//! Desired state derived from the workloads file: which pods of this node are enrolled, and
//! the workload view every proxy gets over xDS.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::workloads::Cluster;

/// What the agent needs to know about itself to read the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// This node.
    pub(crate) node: String,
    /// Enrollment label key (value must be `"true"`).
    pub(crate) label_key: String,
    /// Trust domain of published identities.
    pub(crate) trust_domain: String,
    /// Cluster id of published workloads.
    pub(crate) cluster_id: String,
}

/// A pod of this node in an enrolled namespace: what ZDS and the rules need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LocalPod {
    pub(crate) uid: String,
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) service_account: String,
    pub(crate) netns: PathBuf,
}

impl LocalPod {
    /// `namespace/name`, for logs.
    pub(crate) fn display_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Local pods that should be enrolled, and local pods of enrolled namespaces that cannot be.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct LocalDesired {
    /// Enrolled pods of this node, by uid.
    pub(crate) pods: BTreeMap<String, LocalPod>,
    /// `(namespace/name, reason)` of local pods in enrolled namespaces that are left out.
    pub(crate) skipped: Vec<(String, String)>,
}

/// The pods of `settings.node` whose namespace is enrolled.
pub(crate) fn local_desired(cluster: &Cluster, settings: &Settings) -> LocalDesired {
    let mut out = LocalDesired::default();
    for pod in &cluster.pods {
        if pod.node != settings.node
            || !cluster.namespace_enrolled(&pod.namespace, &settings.label_key)
        {
            continue;
        }
        let Some(netns) = &pod.netns else {
            out.skipped.push((
                format!("{}/{}", pod.namespace, pod.name),
                "no `netns` path is given for it".to_owned(),
            ));
            continue;
        };
        out.pods.insert(
            pod.uid.clone(),
            LocalPod {
                uid: pod.uid.clone(),
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                service_account: pod.service_account.clone(),
                netns: netns.clone(),
            },
        );
    }
    out
}

/// The xDS `Workload` of one pod, before conversion to the wire type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkloadView {
    pub(crate) uid: String,
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) service_account: String,
    pub(crate) addresses: Vec<IpAddr>,
    pub(crate) node: String,
    pub(crate) trust_domain: String,
    pub(crate) cluster_id: String,
    /// Advertise HBONE (peers tunnel to it on 15008); otherwise peers send plain TCP.
    pub(crate) hbone: bool,
}

/// Every pod cluster-wide as an xDS workload, sorted by uid.
///
/// A pod speaks HBONE when its namespace is enrolled and, for a pod of this node, only once
/// `local_ready` contains it (the proxy holds it and its rules are in place). Pods of other
/// nodes are enrolled by their own node's agent.
pub(crate) fn workload_views(
    cluster: &Cluster,
    settings: &Settings,
    local_ready: &BTreeSet<String>,
) -> Vec<WorkloadView> {
    cluster
        .pods
        .iter()
        .map(|pod| {
            let enrolled = cluster.namespace_enrolled(&pod.namespace, &settings.label_key);
            let hbone = enrolled && (pod.node != settings.node || local_ready.contains(&pod.uid));
            WorkloadView {
                uid: pod.uid.clone(),
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                service_account: pod.service_account.clone(),
                addresses: pod.ips.clone(),
                node: pod.node.clone(),
                trust_domain: settings.trust_domain.clone(),
                cluster_id: settings.cluster_id.clone(),
                hbone,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::tests::EXAMPLE;

    fn settings(node: &str) -> Settings {
        Settings {
            node: node.into(),
            label_key: "io.cilium/mtls-enabled".into(),
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
        }
    }

    #[test]
    fn only_local_pods_of_enrolled_namespaces() {
        let c = Cluster::from_yaml(EXAMPLE).unwrap();
        let d = local_desired(&c, &settings("node-1"));
        // client-1 (shop, node-1) yes; old-1 (legacy, node-1) no; server-1 (node-2) no.
        assert_eq!(d.pods.keys().collect::<Vec<_>>(), ["8d2f-1"]);
        let p = &d.pods["8d2f-1"];
        assert_eq!(p.name, "client-1");
        assert_eq!(p.namespace, "shop");
        assert_eq!(p.service_account, "client");
        assert_eq!(p.netns, PathBuf::from("/var/run/netns/mw-p1"));
        assert!(d.skipped.is_empty());

        let d = local_desired(&c, &settings("node-2"));
        assert_eq!(d.pods.keys().collect::<Vec<_>>(), ["shop/server-1"]);
        assert!(local_desired(&c, &settings("node-3")).pods.is_empty());
    }

    #[test]
    fn label_key_is_configurable() {
        let c = Cluster::from_yaml(EXAMPLE).unwrap();
        let mut s = settings("node-1");
        s.label_key = "mtls-enabled".into();
        assert!(local_desired(&c, &s).pods.is_empty());
    }

    #[test]
    fn local_pod_without_netns_is_skipped_with_reason() {
        let c = Cluster::from_yaml(
            "namespaces: [{name: a, labels: {io.cilium/mtls-enabled: 'true'}}]\n\
             pods: [{name: p, namespace: a, ip: 10.0.0.1, node: n1}, {name: q, namespace: a, ip: 10.0.0.2, node: n2}]\n",
        )
        .unwrap();
        let d = local_desired(&c, &settings("n1"));
        assert!(d.pods.is_empty());
        assert_eq!(d.skipped.len(), 1);
        assert_eq!(d.skipped[0].0, "a/p");
        // A remote pod without netns is fine: its own agent enrolls it.
        assert!(local_desired(&c, &settings("n2")).skipped.len() == 1);
    }

    #[test]
    fn xds_view_covers_every_pod_and_gates_local_hbone() {
        let c = Cluster::from_yaml(EXAMPLE).unwrap();
        let s = settings("node-1");

        let views = workload_views(&c, &s, &BTreeSet::new());
        assert_eq!(views.len(), 3);
        let by_uid: BTreeMap<_, _> = views.iter().map(|v| (v.uid.as_str(), v)).collect();
        let client = by_uid["8d2f-1"];
        assert!(
            !client.hbone,
            "local enrolled pod is not HBONE before it is ready"
        );
        assert_eq!(client.node, "node-1");
        assert_eq!(client.trust_domain, "cluster.local");
        assert_eq!(client.cluster_id, "Kubernetes");
        assert_eq!(client.service_account, "client");
        assert_eq!(
            client.addresses,
            vec!["10.10.1.2".parse::<IpAddr>().unwrap()]
        );
        assert!(
            by_uid["shop/server-1"].hbone,
            "remote pod of an enrolled namespace"
        );
        assert!(!by_uid["legacy/old-1"].hbone, "namespace not enrolled");

        let ready = BTreeSet::from(["8d2f-1".to_owned(), "legacy/old-1".to_owned()]);
        let views = workload_views(&c, &s, &ready);
        let by_uid: BTreeMap<_, _> = views.iter().map(|v| (v.uid.as_str(), v)).collect();
        assert!(by_uid["8d2f-1"].hbone);
        assert!(
            !by_uid["legacy/old-1"].hbone,
            "ready set never overrides the namespace label"
        );
    }

    #[test]
    fn unlabelling_a_namespace_drops_hbone_everywhere() {
        let text = EXAMPLE.replace(
            r#"labels: { io.cilium/mtls-enabled: "true" }"#,
            "labels: {}",
        );
        let c = Cluster::from_yaml(&text).unwrap();
        let s = settings("node-1");
        let ready = BTreeSet::from(["8d2f-1".to_owned()]);
        assert!(workload_views(&c, &s, &ready).iter().all(|v| !v.hbone));
        assert!(local_desired(&c, &s).pods.is_empty());
    }
}
