use serde_json::{Value, json};

use super::*;
use crate::workloads::{PolicyAction, PolicyScope};

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).unwrap())
}

fn view() -> View {
    View {
        node: "n1".into(),
        cluster_domain: "cluster.local".into(),
        root_namespace: "istio-system".into(),
    }
}

fn pod_json(name: &str, uid: &str, node: Option<&str>, ips: &[&str]) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "labels": {"app": name}},
        "spec": {"nodeName": node, "serviceAccountName": "sa-".to_owned() + name, "containers": []},
        "status": {"phase": "Running", "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>()}
    })
}

fn objects() -> Objects {
    let mut host = pod_json("host", "u-host", Some("n1"), &["10.0.0.1"]);
    host["spec"]["hostNetwork"] = json!(true);
    let mut done = pod_json("done", "u-done", Some("n1"), &["10.1.0.9"]);
    done["status"]["phase"] = json!("Succeeded");
    let mut no_sa = pod_json("plain", "u-plain", Some("n2"), &["10.1.0.7"]);
    no_sa["spec"]
        .as_object_mut()
        .unwrap()
        .remove("serviceAccountName");
    Objects {
        namespaces: vec![
            obj(
                json!({"metadata": {"name": "shop", "labels": {"io.cilium/mtls-enabled": "true"}}}),
            ),
            obj(json!({"metadata": {"name": "legacy"}})),
        ],
        pods: vec![
            obj(pod_json(
                "web",
                "u-web",
                Some("n1"),
                &["10.1.0.5", "fd00::5"],
            )),
            obj(pod_json("new", "u-new", Some("n1"), &[])),
            obj(pod_json("db", "u-db", Some("n2"), &["10.1.0.6"])),
            obj(pod_json("pending", "u-pending", None, &[])),
            obj(host),
            obj(done),
            obj(no_sa),
        ],
        services: vec![
            obj(json!({
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"clusterIPs": ["10.96.0.10"], "ports": [
                    {"name": "http", "port": 80, "targetPort": "web-http"},
                    {"name": "admin", "port": 9000, "targetPort": 9001},
                    {"name": "dns", "port": 53, "protocol": "UDP"}
                ]}
            })),
            obj(json!({
                "metadata": {"name": "db", "namespace": "shop"},
                "spec": {"clusterIPs": ["None"], "ports": [{"port": 5432}]}
            })),
            obj(json!({
                "metadata": {"name": "ext", "namespace": "shop"},
                "spec": {"type": "ExternalName", "externalName": "example.com"}
            })),
        ],
        slices: vec![
            obj(json!({
                "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": ["10.1.0.5"], "targetRef": {"kind": "Pod", "name": "web", "namespace": "shop", "uid": "u-web"}},
                    {"addresses": ["10.1.0.6"], "conditions": {"ready": false},
                     "targetRef": {"kind": "Pod", "name": "db", "namespace": "shop", "uid": "u-db"}}
                ],
                "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9001}]
            })),
            obj(json!({
                "metadata": {"name": "db-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.1.0.6"], "targetRef": {"kind": "Pod", "name": "db", "namespace": "shop", "uid": "u-db"}}],
                "ports": [{"port": 5432}]
            })),
            obj(json!({
                "metadata": {"name": "gone-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "gone"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.1.0.5"], "targetRef": {"kind": "Pod", "name": "web", "namespace": "shop", "uid": "u-web"}}]
            })),
        ],
        policies: vec![
            obj(json!({
                "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "deny-intruder", "namespace": "shop"},
                "spec": {"action": "DENY", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/intruder"]}}]}]}
            })),
            obj(json!({
                "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "web-only", "namespace": "shop"},
                "spec": {"selector": {"matchLabels": {"app": "web"}}, "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}
            })),
            obj(json!({
                "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "audit", "namespace": "shop"},
                "spec": {"action": "AUDIT"}
            })),
            obj(json!({
                "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "nothing", "namespace": "legacy"}
            })),
        ],
        service_accounts: vec![
            obj(json!({"metadata": {"name": "sa-web", "namespace": "shop"}})),
            obj(json!({"metadata": {"name": "idle", "namespace": "shop"}})),
            obj(json!({"metadata": {"name": "default", "namespace": "legacy"}})),
        ],
    }
}

fn sandboxes() -> BTreeMap<String, Sandbox> {
    let sandbox = |path: &str, ips: &[&str]| Sandbox {
        netns: PathBuf::from(path),
        ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
    };
    BTreeMap::from([
        (
            "u-web".to_owned(),
            sandbox("/var/run/netns/cni-web", &["10.1.0.5"]),
        ),
        (
            "u-new".to_owned(),
            sandbox("/var/run/netns/cni-new", &["10.1.0.8"]),
        ),
        // A sandbox reported for a pod of another node is never used.
        (
            "u-db".to_owned(),
            sandbox("/var/run/netns/cni-db", &["10.1.0.6"]),
        ),
    ])
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn pods_namespaces_and_sandboxes() {
    let (c, _) = cluster(&objects(), &sandboxes(), &view());
    assert!(c.namespace_enrolled("shop", "io.cilium/mtls-enabled"));
    assert!(!c.namespace_enrolled("legacy", "io.cilium/mtls-enabled"));
    let uids: Vec<&str> = c.pods.iter().map(|p| p.uid.as_str()).collect();
    assert_eq!(
        uids,
        ["u-db", "u-new", "u-plain", "u-web"],
        "sorted; unscheduled, host-network and finished pods left out"
    );
    let by = |uid: &str| c.pods.iter().find(|p| p.uid == uid).unwrap();
    let web = by("u-web");
    assert_eq!(web.name, "web");
    assert_eq!(web.namespace, "shop");
    assert_eq!(web.node, "n1");
    assert_eq!(web.service_account, "sa-web");
    assert_eq!(web.ips, vec![ip("10.1.0.5"), ip("fd00::5")]);
    assert_eq!(web.netns, Some(PathBuf::from("/var/run/netns/cni-web")));
    assert_eq!(web.labels["app"], "web");
    assert_eq!(
        by("u-new").ips,
        vec![ip("10.1.0.8")],
        "from the sandbox until the status has some"
    );
    assert_eq!(by("u-db").netns, None, "another node's pod");
    assert_eq!(by("u-plain").service_account, "default");
    // The ServiceAccount objects as they are, with or without pods (`sa-db` has a pod
    // but no object).
    let accounts: Vec<(&str, &str)> = c
        .service_accounts
        .iter()
        .map(|(ns, sa)| (ns.as_str(), sa.as_str()))
        .collect();
    assert_eq!(
        accounts,
        [("legacy", "default"), ("shop", "idle"), ("shop", "sa-web")]
    );
}

#[test]
fn services_and_their_endpoints() {
    let (c, _) = cluster(&objects(), &sandboxes(), &view());
    let keys: Vec<String> = c.services.iter().map(|s| s.key().to_string()).collect();
    assert_eq!(
        keys,
        [
            "shop/db.shop.svc.cluster.local",
            "shop/web.shop.svc.cluster.local"
        ],
        "ExternalName left out"
    );
    let web = &c.services[1];
    assert_eq!(web.name, "web");
    assert_eq!(web.vips, vec![ServiceVip::host("", ip("10.96.0.10"))]);
    assert_eq!(
        web.ports,
        vec![Port::new(80, 0), Port::new(9000, 9001)],
        "TCP only; a named target port is resolved per endpoint"
    );
    assert!(c.services[0].vips.is_empty(), "headless");

    let by = |uid: &str| c.pods.iter().find(|p| p.uid == uid).unwrap();
    let key = NamespacedHostname::new("shop", "web.shop.svc.cluster.local");
    assert_eq!(
        by("u-web").services,
        BTreeMap::from([(key, vec![Port::new(80, 8080), Port::new(9000, 9001)])]),
        "ports resolved by name through the slice; a slice of an unknown service ignored"
    );
    let db = by("u-db");
    assert_eq!(db.services.len(), 1, "not ready for web; ready for db");
    assert_eq!(
        db.services[&NamespacedHostname::new("shop", "db.shop.svc.cluster.local")],
        vec![Port::new(5432, 5432)]
    );
}

#[test]
fn policies_and_their_notes() {
    let (c, notes) = cluster(&objects(), &sandboxes(), &view());
    let keys: Vec<String> = c
        .policies
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    assert_eq!(
        keys,
        ["legacy/nothing", "shop/deny-intruder", "shop/web-only"]
    );
    assert_eq!(c.policies[0].action, PolicyAction::Allow);
    assert!(c.policies[0].rules.is_empty(), "no spec: allows nothing");
    assert_eq!(c.policies[1].action, PolicyAction::Deny);
    assert!(matches!(c.policies[2].scope, PolicyScope::Selector(_)));
    assert!(c.policies[2].rules.is_empty(), "its only rule needs HTTP");
    let web = c.pods.iter().find(|p| p.uid == "u-web").unwrap();
    assert_eq!(c.selected_policies(web), vec!["shop/web-only".to_owned()]);
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes
            .iter()
            .any(|(k, n)| k == "shop/audit" && n.contains("not enforced"))
    );
    assert!(
        notes
            .iter()
            .any(|(k, n)| k == "shop/web-only" && n.contains("methods"))
    );
}

#[test]
fn remote_pods_are_ready_while_annotated_enabled() {
    let annotated = |name: &str, uid: &str, node: &str, value: Option<&str>| {
        let mut p = pod_json(name, uid, Some(node), &["10.1.0.1"]);
        if let Some(v) = value {
            p["metadata"]["annotations"] = json!({ REDIRECTION_ANNOTATION: v });
        }
        obj::<KubePod>(p)
    };
    let pods = vec![
        annotated("a", "u-a", "n2", Some("enabled")),
        annotated("b", "u-b", "n2", Some("pending")),
        annotated("c", "u-c", "n2", None),
        annotated("d", "u-d", "n3", Some("enabled")),
        annotated("e", "u-e", "n1", Some("enabled")),
    ];
    let ready = remote_ready(&pods, "n1");
    assert!(ready.lists("n2", "u-a"));
    assert!(!ready.lists("n2", "u-b"), "pending is not enrolled");
    assert!(!ready.lists("n2", "u-c"));
    assert!(ready.lists("n3", "u-d"));
    assert!(!ready.lists("n2", "u-d"), "only on its own node");
    assert!(
        !ready.lists("n1", "u-e"),
        "this node's pods follow the local state"
    );
    assert_eq!(redirection(&pods[1]), Some("pending"));
    assert_eq!(redirection(&pods[2]), None);
}
