use serde_json::json;

use super::*;

fn policy(spec: Value) -> (Policy, Vec<String>) {
    policy_in("shop", spec)
}

fn policy_in(namespace: &str, spec: Value) -> (Policy, Vec<String>) {
    match convert(namespace, "p", &spec, "istio-system") {
        Converted::Policy(p, notes) => (p, notes),
        Converted::Skipped(why) => panic!("skipped: {why}"),
    }
}

fn skipped(spec: Value) -> String {
    match convert("shop", "p", &spec, "istio-system") {
        Converted::Skipped(why) => why,
        other => panic!("expected a skip, got {other:?}"),
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn l4_fields_convert() {
    let (p, notes) = policy(json!({
        "action": "DENY",
        "rules": [{
            "from": [
                {"source": {"principals": ["cluster.local/ns/shop/sa/intruder"], "notNamespaces": ["shop"]}},
                {"source": {"ipBlocks": ["10.1.0.0/16", "10.2.3.4"], "notIpBlocks": ["10.1.2.0/24"]}},
                {"source": {"serviceAccounts": ["other/robot", "local"]}}
            ],
            "to": [{"operation": {"ports": ["8080", 9090], "notPorts": ["22"]}}]
        }]
    }));
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(p.name, "p");
    assert_eq!(p.namespace, "shop");
    assert_eq!(p.scope, PolicyScope::Namespace);
    assert_eq!(p.action, PolicyAction::Deny);
    let rule = &p.rules[0];
    assert_eq!(
        rule.from[0],
        Source {
            principals: vec!["cluster.local/ns/shop/sa/intruder".into()],
            not_namespaces: vec!["shop".into()],
            ..Source::default()
        }
    );
    assert_eq!(
        rule.from[1].ip_blocks,
        vec![net("10.1.0.0/16"), net("10.2.3.4/32")]
    );
    assert_eq!(rule.from[1].not_ip_blocks, vec![net("10.1.2.0/24")]);
    assert_eq!(
        rule.from[2].service_accounts,
        vec![
            ("other".to_owned(), "robot".to_owned()),
            ("shop".to_owned(), "local".to_owned())
        ],
        "an account without namespace is in the policy's namespace"
    );
    assert_eq!(
        rule.to,
        vec![Destination {
            ports: vec![8080, 9090],
            not_ports: vec![22]
        }]
    );
}

#[test]
fn scope_follows_selector_and_root_namespace() {
    let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    let (p, _) = policy(json!({"selector": {"matchLabels": {"app": "web"}}}));
    assert_eq!(p.scope, PolicyScope::Selector(labels));
    assert_eq!(p.action, PolicyAction::Allow, "ALLOW is the default");
    assert!(p.rules.is_empty(), "no rules: allows nothing");
    let (p, _) = policy(json!({"selector": {"matchLabels": {}}, "action": "ALLOW"}));
    assert_eq!(p.scope, PolicyScope::Namespace);
    let (p, _) = policy_in("istio-system", json!({"action": "DENY", "rules": [{}]}));
    assert_eq!(p.scope, PolicyScope::Global);
    assert_eq!(p.rules, vec![PolicyRule::default()], "a rule matching all");
    let (p, _) = policy_in(
        "istio-system",
        json!({"selector": {"matchLabels": {"app": "x"}}}),
    );
    assert!(matches!(p.scope, PolicyScope::Selector(_)));
}

#[test]
fn waypoint_and_non_l4_actions_are_skipped() {
    assert!(
        skipped(json!({"targetRefs": [{"kind": "Service", "name": "web"}]})).contains("waypoint")
    );
    assert!(skipped(json!({"targetRef": {"kind": "Gateway", "name": "w"}})).contains("waypoint"));
    assert!(skipped(json!({"action": "AUDIT"})).contains("AUDIT"));
    assert!(skipped(json!({"action": "CUSTOM", "provider": {"name": "x"}})).contains("CUSTOM"));
}

#[test]
fn what_l4_cannot_check_makes_allow_allow_less() {
    let (p, notes) = policy(json!({
        "action": "ALLOW",
        "rules": [
            {"from": [{"source": {"principals": ["a"]}}], "to": [{"operation": {"methods": ["GET"], "ports": ["80"]}}]},
            {"from": [{"source": {"requestPrincipals": ["*"]}}]},
            {"from": [{"source": {"namespaces": ["b"]}}], "when": [{"key": "request.headers[x]", "values": ["y"]}]},
            {"to": [{"operation": {"ports": ["http"]}}]},
            {"from": [{"source": {}}]},
            {"from": [{"source": {"namespaces": ["kept"]}}]}
        ]
    }));
    assert_eq!(p.rules.len(), 1, "{p:?}");
    assert_eq!(p.rules[0].from[0].namespaces, vec!["kept".to_owned()]);
    assert_eq!(notes.len(), 5, "{notes:?}");
    assert!(
        notes[0].contains("rules[0]") && notes[0].contains("methods"),
        "{notes:?}"
    );
    assert!(notes[1].contains("requestPrincipals"), "{notes:?}");
    assert!(notes[2].contains("when"), "{notes:?}");
    assert!(notes[3].contains("ports"), "{notes:?}");
    assert!(notes[4].contains("empty"), "{notes:?}");
}

#[test]
fn what_l4_cannot_check_makes_deny_deny_more() {
    let (p, notes) = policy(json!({
        "action": "DENY",
        "rules": [
            // HTTP fields beside ports: the ports still count.
            {"from": [{"source": {"principals": ["a"]}}], "to": [{"operation": {"methods": ["GET"], "ports": ["80"]}}]},
            // Only HTTP fields in `to`: the `to` clause goes, the rule denies every port.
            {"from": [{"source": {"principals": ["b"]}}], "to": [{"operation": {"paths": ["/admin"]}}]},
            // A source with only requestPrincipals: the `from` clause goes.
            {"from": [{"source": {"requestPrincipals": ["*"]}}, {"source": {"namespaces": ["x"]}}], "to": [{"operation": {"ports": ["22"]}}]},
            // A block that does not parse voids the whole field.
            {"from": [{"source": {"ipBlocks": ["10.0.0.0/8", "bogus"], "namespaces": ["y"]}}]}
        ]
    }));
    assert_eq!(notes.len(), 4, "{notes:?}");
    assert!(notes.iter().all(|n| n.contains("denies more")), "{notes:?}");
    assert_eq!(p.rules.len(), 4);
    assert_eq!(p.rules[0].to[0].ports, vec![80]);
    assert_eq!(p.rules[0].from[0].principals, vec!["a".to_owned()]);
    assert!(p.rules[1].to.is_empty(), "every port");
    assert_eq!(p.rules[1].from[0].principals, vec!["b".to_owned()]);
    assert!(p.rules[2].from.is_empty(), "every source");
    assert_eq!(p.rules[2].to[0].ports, vec![22]);
    assert!(p.rules[3].from[0].ip_blocks.is_empty());
    assert_eq!(p.rules[3].from[0].namespaces, vec!["y".to_owned()]);
}

#[test]
fn a_spec_that_cannot_be_read_fails_closed() {
    let (p, notes) = policy(json!({"action": "ALLOW", "rules": "everything"}));
    assert!(p.rules.is_empty(), "allows nothing");
    assert_eq!(p.scope, PolicyScope::Namespace);
    assert!(notes[0].contains("cannot be read"), "{notes:?}");
    let (p, _) = policy(json!({"action": "DENY", "selector": 5}));
    assert_eq!(p.rules, vec![PolicyRule::default()], "denies everything");
    assert_eq!(p.scope, PolicyScope::Namespace, "over the whole namespace");
    let (p, _) = policy(json!(null));
    assert_eq!(p.action, PolicyAction::Allow);
    assert!(p.rules.is_empty());
}
