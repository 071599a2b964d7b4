//! Desired state derived from the workloads file: which pods of this node are enrolled, and
//! the workload view every proxy gets over xDS.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use meshwire_xds_workload::workload::{NamespacedHostname, Port};
use serde::{Deserialize, Serialize};

use crate::workloads::{Cluster, Pod};

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
    /// The pod `pod` of the workloads file, whose network namespace is at `netns`.
    pub(crate) fn of(pod: &Pod, netns: &Path) -> Self {
        Self {
            uid: pod.uid.clone(),
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
            netns: netns.to_owned(),
        }
    }

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
                "its network namespace is not known (no `netns` in the workloads file; with Kubernetes: no CNI event, not found in /proc)".to_owned(),
            ));
            continue;
        };
        out.pods.insert(pod.uid.clone(), LocalPod::of(pod, netns));
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
    /// Enrolled but not HBONE yet: sources in strict namespaces wait instead of sending
    /// plain TCP.
    pub(crate) hbone_pending: bool,
    /// The services it is an endpoint of, with its ports for each.
    pub(crate) services: BTreeMap<NamespacedHostname, Vec<Port>>,
    /// Keys of the policies whose selector it matches.
    pub(crate) policies: Vec<String>,
}

/// Which pods of other nodes their own agents report as fully enrolled.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum RemoteReady {
    /// No gating: a pod of another node is HBONE as soon as its namespace is enrolled.
    #[default]
    Ungated,
    /// Uids of the enrolled pods, by node name; a node without an entry has none.
    Gated(BTreeMap<String, BTreeSet<String>>),
}

impl RemoteReady {
    /// Whether the agent of `node` reports the pod `uid` as enrolled (always, ungated).
    pub(crate) fn lists(&self, node: &str, uid: &str) -> bool {
        match self {
            Self::Ungated => true,
            Self::Gated(nodes) => nodes.get(node).is_some_and(|pods| pods.contains(uid)),
        }
    }
}

/// Every pod cluster-wide as an xDS workload, sorted by uid.
///
/// A pod speaks HBONE when its namespace is enrolled and its node's agent has enrolled it:
/// for a pod of this node, once `local_ready` contains it (the proxy holds it and its rules
/// are in place); for a pod of another node, once `remote` lists it (that node's agent
/// reported the same). Until then a pod of an enrolled namespace is `hbone_pending`.
pub(crate) fn workload_views(
    cluster: &Cluster,
    settings: &Settings,
    local_ready: &BTreeSet<String>,
    remote: &RemoteReady,
) -> Vec<WorkloadView> {
    cluster
        .pods
        .iter()
        .map(|pod| {
            let enrolled = cluster.namespace_enrolled(&pod.namespace, &settings.label_key);
            let ready = if pod.node == settings.node {
                local_ready.contains(&pod.uid)
            } else {
                remote.lists(&pod.node, &pod.uid)
            };
            let hbone = enrolled && ready;
            let hbone_pending = enrolled && !ready;
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
                hbone_pending,
                services: pod.services.clone(),
                policies: cluster.selected_policies(pod),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::tests::{EXAMPLE, settings};

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

        let views = workload_views(&c, &s, &BTreeSet::new(), &RemoteReady::Ungated);
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
        let views = workload_views(&c, &s, &ready, &RemoteReady::Ungated);
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
        let remote = RemoteReady::Gated(BTreeMap::from([(
            "node-2".to_owned(),
            BTreeSet::from(["shop/server-1".to_owned()]),
        )]));
        for remote in [RemoteReady::Ungated, remote] {
            assert!(
                workload_views(&c, &s, &ready, &remote)
                    .iter()
                    .all(|v| !v.hbone)
            );
        }
        assert!(local_desired(&c, &s).pods.is_empty());
    }

    #[test]
    fn views_carry_service_membership_and_selected_policies() {
        use crate::workloads::{Policy, PolicyAction, PolicyScope};
        let mut c = Cluster::from_yaml(EXAMPLE).unwrap();
        let key = NamespacedHostname::new("shop", "web.shop.svc.cluster.local");
        c.pods[0].labels.insert("app".into(), "web".into());
        c.pods[0]
            .services
            .insert(key.clone(), vec![Port::new(80, 8080)]);
        let policy = |name: &str, scope| Policy {
            name: name.into(),
            namespace: "shop".into(),
            scope,
            action: PolicyAction::Allow,
            rules: Vec::new(),
        };
        let web = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        let db = BTreeMap::from([("app".to_owned(), "db".to_owned())]);
        c.policies = vec![
            policy("web-only", PolicyScope::Selector(web)),
            policy("db-only", PolicyScope::Selector(db)),
            policy("all", PolicyScope::Namespace),
        ];
        let views = workload_views(
            &c,
            &settings("node-1"),
            &BTreeSet::new(),
            &RemoteReady::Ungated,
        );
        let client = views.iter().find(|v| v.uid == "8d2f-1").unwrap();
        assert_eq!(client.services[&key], vec![Port::new(80, 8080)]);
        assert_eq!(client.policies, vec!["shop/web-only".to_owned()]);
        let server = views.iter().find(|v| v.uid == "shop/server-1").unwrap();
        assert!(server.services.is_empty());
        assert!(server.policies.is_empty(), "no labels: no selector matches");
    }

    fn hbone_of(views: &[WorkloadView]) -> BTreeMap<String, bool> {
        views.iter().map(|v| (v.uid.clone(), v.hbone)).collect()
    }

    #[test]
    fn remote_pod_is_hbone_only_while_its_node_lists_it() {
        let c = Cluster::from_yaml(EXAMPLE).unwrap();
        let s = settings("node-1");
        let local = BTreeSet::from(["8d2f-1".to_owned()]);
        let gated = |nodes: &[(&str, &[&str])]| {
            RemoteReady::Gated(
                nodes
                    .iter()
                    .map(|(n, uids)| {
                        (
                            (*n).to_owned(),
                            uids.iter().map(|u| (*u).to_owned()).collect(),
                        )
                    })
                    .collect(),
            )
        };

        // No status from node-2 yet: its enrolled pod is not HBONE; the local rule holds.
        let h = hbone_of(&workload_views(&c, &s, &local, &gated(&[])));
        assert!(!h["shop/server-1"], "remote pod before its node lists it");
        assert!(h["8d2f-1"], "local pod follows the local ready set");

        // Listed by another node, or listed for another uid: still not.
        let h = hbone_of(&workload_views(
            &c,
            &s,
            &local,
            &gated(&[("node-3", &["shop/server-1"]), ("node-2", &["x"])]),
        ));
        assert!(!h["shop/server-1"], "only the pod's own node counts");

        // Listed by node-2: HBONE.
        let listed = gated(&[("node-2", &["shop/server-1"])]);
        let h = hbone_of(&workload_views(&c, &s, &local, &listed));
        assert!(h["shop/server-1"]);

        // A status listing the local pod does not bypass the local ready set.
        let h = hbone_of(&workload_views(
            &c,
            &s,
            &BTreeSet::new(),
            &gated(&[("node-1", &["8d2f-1"]), ("node-2", &["shop/server-1"])]),
        ));
        assert!(!h["8d2f-1"]);

        // Dropped from node-2's status (unenrolling there): no longer HBONE.
        let h = hbone_of(&workload_views(&c, &s, &local, &gated(&[("node-2", &[])])));
        assert!(!h["shop/server-1"], "dropped from its node's status");

        // Listing never overrides the namespace label.
        let h = hbone_of(&workload_views(
            &c,
            &settings("node-2"),
            &BTreeSet::new(),
            &gated(&[("node-1", &["8d2f-1", "legacy/old-1"])]),
        ));
        assert!(h["8d2f-1"]);
        assert!(!h["legacy/old-1"]);

        // Ungated: enrolled namespace is enough for remote pods.
        let h = hbone_of(&workload_views(&c, &s, &local, &RemoteReady::Ungated));
        assert!(h["shop/server-1"]);
    }
}
