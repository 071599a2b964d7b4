use super::*;
use crate::desired::Settings;

/// The settings of the agent on `node` that the tests of [`EXAMPLE`] use.
pub(crate) fn settings(node: &str) -> Settings {
    Settings {
        node: node.into(),
        label_key: "io.cilium/mtls-enabled".into(),
        trust_domain: "cluster.local".into(),
        cluster_id: "Kubernetes".into(),
    }
}

pub(crate) const EXAMPLE: &str = r#"
namespaces:
  - name: shop
    labels: { io.cilium/mtls-enabled: "true" }
  - name: legacy
    labels: {}
pods:
  - name: client-1
    namespace: shop
    serviceAccount: client
    uid: 8d2f-1
    ip: 10.10.1.2
    node: node-1
    netns: /var/run/netns/mw-p1
  - name: server-1
    namespace: shop
    ips: [10.10.2.2, "fd00::2:2"]
    node: node-2
    netns: /var/run/netns/mw-p2
  - name: old-1
    namespace: legacy
    ip: 10.10.1.3
    node: node-1
    netns: /var/run/netns/mw-p3
policies:
  - name: deny-intruder
    namespace: shop
    action: deny
    rules:
      - from:
          - principals: ["cluster.local/ns/shop/sa/intruder"]
"#;

fn problems(text: &str) -> Vec<String> {
    match Cluster::from_yaml(text) {
        Err(WorkloadsError::Invalid(p)) => p,
        other => panic!("expected validation problems, got {other:?}"),
    }
}

/// Checks that `problems` are exactly one per `expected` prefix.
fn assert_problems(problems: &[String], expected: &[&str]) {
    for e in expected {
        assert!(
            problems.iter().any(|m| m.starts_with(e)),
            "missing {e:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
}

#[test]
fn parses_the_contract_example() {
    let c = Cluster::from_yaml(EXAMPLE).unwrap();
    assert_eq!(c.namespaces.len(), 2);
    assert!(c.namespace_enrolled("shop", "io.cilium/mtls-enabled"));
    assert!(!c.namespace_enrolled("legacy", "io.cilium/mtls-enabled"));
    assert!(!c.namespace_enrolled("missing", "io.cilium/mtls-enabled"));
    assert!(!c.namespace_enrolled("shop", "other-key"));

    // sorted by uid
    let uids: Vec<_> = c.pods.iter().map(|p| p.uid.as_str()).collect();
    assert_eq!(uids, ["8d2f-1", "legacy/old-1", "shop/server-1"]);
    let client = &c.pods[0];
    assert_eq!(client.name, "client-1");
    assert_eq!(client.service_account, "client");
    assert_eq!(client.ips, vec!["10.10.1.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        client.netns.as_deref(),
        Some(std::path::Path::new("/var/run/netns/mw-p1"))
    );
    let server = &c.pods[2];
    assert_eq!(server.service_account, "default", "default service account");
    assert_eq!(server.uid, "shop/server-1", "default uid is namespace/name");
    assert_eq!(server.ips.len(), 2);
    assert!(server.ips[1].is_ipv6());

    assert_eq!(c.policies.len(), 1);
    let p = &c.policies[0];
    assert_eq!(p.action, PolicyAction::Deny);
    assert_eq!(
        p.rules[0].from[0].principals,
        vec!["cluster.local/ns/shop/sa/intruder"]
    );
    assert!(p.rules[0].to.is_empty());
}

#[test]
fn empty_and_minimal_files() {
    assert_eq!(Cluster::from_yaml("{}").unwrap(), Cluster::default());
    let c = Cluster::from_yaml("namespaces: [{name: a}]\n").unwrap();
    assert!(c.namespaces["a"].labels.is_empty());
}

#[test]
fn unquoted_label_values_are_text() {
    let c = Cluster::from_yaml(
        "namespaces:\n  - name: a\n    labels: { io.cilium/mtls-enabled: true, n: 3 }\n",
    )
    .unwrap();
    assert!(c.namespace_enrolled("a", "io.cilium/mtls-enabled"));
    assert_eq!(c.namespaces["a"].labels["n"], "3");
    let c = Cluster::from_yaml(
        "namespaces:\n  - name: a\n    labels: { io.cilium/mtls-enabled: \"True\" }\n",
    )
    .unwrap();
    assert!(
        !c.namespace_enrolled("a", "io.cilium/mtls-enabled"),
        "value must be exactly \"true\""
    );
}

#[test]
fn full_policy_shape() {
    let c = Cluster::from_yaml(
        r#"
namespaces: [{name: shop}]
policies:
  - name: allow-some
    namespace: shop
    action: allow
    rules:
      - from:
          - principals: ["cluster.local/ns/shop/sa/*"]
            notPrincipals: ["cluster.local/ns/shop/sa/intruder"]
          - namespaces: [shop]
            notNamespaces: [legacy]
            ipBlocks: ["10.0.0.0/8", "10.1.2.3"]
            notIpBlocks: ["10.9.0.0/16"]
        to:
          - ports: [8080]
            notPorts: [9090]
"#,
    )
    .unwrap();
    let r = &c.policies[0].rules[0];
    assert_eq!(r.from.len(), 2);
    assert_eq!(
        r.from[1].ip_blocks[1],
        "10.1.2.3/32".parse::<IpNet>().unwrap()
    );
    assert_eq!(r.to[0].ports, vec![8080]);
    assert_eq!(r.to[0].not_ports, vec![9090]);
}

#[test]
fn syntax_errors_and_unknown_fields_are_parse_errors() {
    for bad in [
        "namespaces: [",
        "pods: 3",
        "pods:\n  - name: a\n    namespace: b\n    node: n\n    ip: 10.0.0.1\n    serviceaccount: x\n",
        "unknown: 1",
        "policies:\n  - {name: a, namespace: b, action: maybe}\n",
        "pods:\n  - {namespace: b, node: n, ip: 10.0.0.1}\n",
    ] {
        match Cluster::from_yaml(bad) {
            Err(WorkloadsError::Parse(msg)) => assert!(!msg.is_empty()),
            other => panic!("{bad:?}: expected a parse error, got {other:?}"),
        }
    }
    let msg = Cluster::from_yaml("unknown: 1").unwrap_err().to_string();
    assert!(msg.contains("unknown"), "{msg}");
}

#[test]
fn semantic_errors_name_the_entry() {
    let p = problems(
        r#"
namespaces: [{name: shop}, {name: shop}, {name: "bad/ns"}]
pods:
  - {name: a, namespace: nowhere, node: n1, ip: 10.0.0.1}
  - {name: b, namespace: shop, node: n1, ip: not-an-ip}
  - {name: c, namespace: shop, node: n1}
  - {name: d, namespace: shop, node: n1, ip: 10.0.0.4, ips: [10.0.0.5]}
  - {name: e, namespace: shop, node: n1, ip: 10.0.0.6, netns: relative/path}
  - {name: f, namespace: shop, node: n1, ip: 10.0.0.7, uid: same}
  - {name: g, namespace: shop, node: n1, ip: 10.0.0.8, uid: same}
  - {name: h, namespace: shop, node: n1, ip: 10.0.0.7}
  - {name: f, namespace: shop, node: n1, ip: 10.0.0.9}
  - {name: i, namespace: shop, node: "", ip: 10.0.0.10, serviceAccount: "a/b"}
"#,
    );
    let expect = [
        "namespaces[1]: namespace \"shop\" is declared twice",
        "namespaces[2]: name \"bad/ns\" contains '/'",
        "pods[0] (nowhere/a): namespace \"nowhere\" is not declared",
        "pods[1] (shop/b): \"not-an-ip\" is not an IP address",
        "pods[2] (shop/c): has no address",
        "pods[3] (shop/d): give either `ip` or `ips`, not both",
        "pods[4] (shop/e): netns path relative/path is not absolute",
        "pods[6] (shop/g): uid \"same\" is used by another pod",
        "pods[7] (shop/h): address 10.0.0.7 is also used by pod shop/f",
        "pods[8] (shop/f): another pod has the same namespace and name",
        "pods[9] (shop/i): node is empty",
        "pods[9] (shop/i): serviceAccount \"a/b\" contains '/'",
    ];
    assert_problems(&p, &expect);
}

#[test]
fn policy_errors() {
    let p = problems(
        r#"
namespaces: [{name: shop}]
policies:
  - {name: a, namespace: other, action: allow}
  - name: b
    namespace: shop
    action: deny
    rules:
      - from: [{}]
        to: [{}]
      - from: [{ipBlocks: ["10.0.0.0/33"], principals: ["a*b"]}]
        to: [{ports: [0]}]
  - {name: c, namespace: shop, action: allow}
  - {name: c, namespace: shop, action: deny}
"#,
    );
    let expect = [
        "policies[0] (other/a): namespace \"other\" is not declared",
        "policies[1] (shop/b): rules[0].from[0]: is empty",
        "policies[1] (shop/b): rules[0].to[0]: is empty",
        "policies[1] (shop/b): rules[1].from[0]: \"10.0.0.0/33\" is neither",
        "policies[1] (shop/b): rules[1].from[0]: \"a*b\" may use '*' only",
        "policies[1] (shop/b): rules[1].to[0]: port 0",
        "policies[3] (shop/c): another policy has the same namespace and name",
    ];
    assert_problems(&p, &expect);
}

#[test]
fn error_display_lists_every_problem() {
    let e = WorkloadsError::Invalid(vec!["one".into(), "two".into()]);
    assert_eq!(
        e.to_string(),
        "the workloads file has 2 problem(s): one; two"
    );
}
