//! The cluster model as `xds-workload` domain types: each pod's view as a [`Workload`], each
//! policy as an [`AuthorizationPolicy`].

use meshwire_xds_workload::authorization::{
    AuthorizationPolicy, PolicyAction as XdsAction, PolicyClause, PolicyMatch, PolicyRule,
    PolicyScope as XdsScope, ServiceAccountMatch, StringMatch,
};
use meshwire_xds_workload::workload::{TunnelProtocol, Workload, WorkloadType};

use crate::desired::WorkloadView;
use crate::workloads::{Cluster, Destination, Policy, PolicyAction, PolicyScope, Source};

/// The workload of one pod.
pub(crate) fn workload(v: &WorkloadView) -> Workload {
    let mut w = Workload::new(&v.uid, &v.name, &v.namespace);
    w.addresses.clone_from(&v.addresses);
    w.protocol = if v.hbone {
        TunnelProtocol::Hbone
    } else {
        TunnelProtocol::None
    };
    w.hbone_pending = v.hbone_pending;
    w.trust_domain.clone_from(&v.trust_domain);
    w.service_account.clone_from(&v.service_account);
    w.node.clone_from(&v.node);
    w.cluster_id.clone_from(&v.cluster_id);
    w.canonical_name.clone_from(&v.name);
    w.workload_name.clone_from(&v.name);
    w.workload_type = WorkloadType::Pod;
    w.services.clone_from(&v.services);
    w.authorization_policies.clone_from(&v.policies);
    w
}

/// The policies the cluster's authorization policies become, then the strict mutual-TLS
/// policy ([`AuthorizationPolicy::strict_mtls`]) of every strict namespace.
pub(crate) fn policies(cluster: &Cluster, label_key: &str) -> Vec<AuthorizationPolicy> {
    let strict = cluster
        .strict_namespaces(label_key)
        .into_iter()
        .map(AuthorizationPolicy::strict_mtls);
    cluster.policies.iter().map(policy).chain(strict).collect()
}

/// `*` is presence, `*x` a suffix, `x*` a prefix, anything else exact.
fn string_match(s: &str) -> StringMatch {
    if s == "*" {
        StringMatch::Presence
    } else if let Some(rest) = s.strip_prefix('*') {
        StringMatch::Suffix(rest.to_owned())
    } else if let Some(rest) = s.strip_suffix('*') {
        StringMatch::Prefix(rest.to_owned())
    } else {
        StringMatch::Exact(s.to_owned())
    }
}

/// Principals are matched without the `spiffe://` scheme; accept either spelling.
fn principal_match(s: &str) -> StringMatch {
    string_match(s.strip_prefix("spiffe://").unwrap_or(s))
}

fn strings(values: &[String], f: fn(&str) -> StringMatch) -> Vec<StringMatch> {
    values.iter().map(|v| f(v)).collect()
}

fn accounts(values: &[(String, String)]) -> Vec<ServiceAccountMatch> {
    values
        .iter()
        .map(|(ns, sa)| ServiceAccountMatch::new(ns, sa))
        .collect()
}

fn source_match(s: &Source) -> PolicyMatch {
    let mut m = PolicyMatch::default();
    m.principals = strings(&s.principals, principal_match);
    m.not_principals = strings(&s.not_principals, principal_match);
    m.namespaces = strings(&s.namespaces, string_match);
    m.not_namespaces = strings(&s.not_namespaces, string_match);
    m.source_ips = s.ip_blocks.iter().map(ipnet::IpNet::trunc).collect();
    m.not_source_ips = s.not_ip_blocks.iter().map(ipnet::IpNet::trunc).collect();
    m.service_accounts = accounts(&s.service_accounts);
    m.not_service_accounts = accounts(&s.not_service_accounts);
    m
}

fn destination_match(d: &Destination) -> PolicyMatch {
    let mut m = PolicyMatch::default();
    m.destination_ports = d.ports.iter().map(|p| u32::from(*p)).collect();
    m.not_destination_ports = d.not_ports.iter().map(|p| u32::from(*p)).collect();
    m
}

/// A policy: each rule holds one clause for its `from` entries (any may match) and one for
/// its `to` entries; both must match.
pub(crate) fn policy(p: &Policy) -> AuthorizationPolicy {
    let scope = match p.scope {
        PolicyScope::Namespace => XdsScope::Namespace,
        PolicyScope::Global => XdsScope::Global,
        PolicyScope::Selector(_) => XdsScope::WorkloadSelector,
    };
    let action = match p.action {
        PolicyAction::Allow => XdsAction::Allow,
        PolicyAction::Deny => XdsAction::Deny,
    };
    let mut out = AuthorizationPolicy::new(&p.namespace, &p.name, scope, action);
    out.rules = p
        .rules
        .iter()
        .map(|r| {
            let mut clauses = Vec::new();
            if !r.from.is_empty() {
                clauses.push(PolicyClause::new(r.from.iter().map(source_match).collect()));
            }
            if !r.to.is_empty() {
                clauses.push(PolicyClause::new(
                    r.to.iter().map(destination_match).collect(),
                ));
            }
            PolicyRule::new(clauses)
        })
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::IpAddr;

    use meshwire_xds_workload::authorization::{ConnectionInfo, evaluate};
    use meshwire_xds_workload::pb::istio::security as sec;
    use meshwire_xds_workload::pb::istio::workload as wl;

    use super::*;
    use crate::desired::{RemoteReady, workload_views};
    use crate::workloads::tests::{EXAMPLE, settings};

    #[test]
    fn workloads_pass_the_checked_boundary_unchanged() {
        let c = Cluster::from_yaml(EXAMPLE).unwrap();
        let views = workload_views(
            &c,
            &settings("node-1"),
            &BTreeSet::from(["8d2f-1".to_owned()]),
            &RemoteReady::Ungated,
        );
        for v in &views {
            let w = workload(v);
            let wire = wl::Workload::from(&w);
            let checked = Workload::try_from(&wire).expect("valid workload");
            assert_eq!(checked, w);
            assert_eq!(checked.uid, v.uid);
            assert_eq!(checked.namespace, v.namespace);
            assert_eq!(checked.service_account, v.service_account);
            assert_eq!(checked.node, v.node);
            assert_eq!(checked.trust_domain, "cluster.local");
            assert_eq!(checked.addresses, v.addresses);
            assert_eq!(checked.workload_type, WorkloadType::Pod);
            assert_eq!(
                checked.protocol == TunnelProtocol::Hbone,
                v.hbone,
                "{}",
                v.uid
            );
        }
        let server = views.iter().find(|v| v.uid == "shop/server-1").unwrap();
        assert_eq!(wl::Workload::from(&workload(server)).addresses[1].len(), 16);
    }

    fn conn(src: &str, principal: Option<&str>, port: u16) -> ConnectionInfo {
        ConnectionInfo::new(
            src.parse::<IpAddr>().unwrap(),
            std::net::SocketAddr::new("10.10.2.2".parse().unwrap(), port),
            principal.map(|p| p.parse::<meshwire_xds_workload::Identity>().unwrap()),
        )
    }

    fn decide(policies: &[AuthorizationPolicy], c: &ConnectionInfo) -> bool {
        evaluate(policies.iter(), c).decision.is_allowed()
    }

    #[test]
    fn policies_keep_their_meaning_on_the_wire() {
        let c = Cluster::from_yaml(
            r#"
namespaces: [{name: shop}]
policies:
  - name: deny-intruder
    namespace: shop
    action: deny
    rules:
      - from:
          - principals: ["cluster.local/ns/shop/sa/intruder"]
  - name: allow-shop
    namespace: shop
    action: allow
    rules:
      - from:
          - principals: ["spiffe://cluster.local/ns/shop/*"]
          - ipBlocks: ["10.99.7.0/16"]
        to:
          - ports: [8080]
"#,
        )
        .unwrap();
        // Through the wire and back: what a proxy evaluates.
        let policies: Vec<AuthorizationPolicy> = c
            .policies
            .iter()
            .map(|p| {
                let wire = sec::Authorization::from(&policy(p));
                AuthorizationPolicy::try_from(&wire).expect("valid policy")
            })
            .collect();
        assert_eq!(policies[0].scope, XdsScope::Namespace);
        let id = |sa: &str| format!("spiffe://cluster.local/ns/shop/sa/{sa}");
        assert!(
            !decide(&policies, &conn("10.10.1.2", Some(&id("intruder")), 8080)),
            "denied SA"
        );
        assert!(
            decide(&policies, &conn("10.10.1.2", Some(&id("client")), 8080)),
            "allowed SA"
        );
        assert!(
            !decide(&policies, &conn("10.10.1.2", Some(&id("client")), 9090)),
            "wrong port"
        );
        assert!(
            !decide(&policies, &conn("10.10.1.2", None, 8080)),
            "plaintext, not in block"
        );
        assert!(
            decide(&policies, &conn("10.99.3.4", None, 8080)),
            "plaintext from allowed block (host bits of the block ignored)"
        );
    }

    #[test]
    fn scopes_and_service_accounts_convert() {
        let mut p = Policy {
            name: "only-web".into(),
            namespace: "shop".into(),
            scope: PolicyScope::Selector([("app".to_owned(), "web".to_owned())].into()),
            action: PolicyAction::Allow,
            rules: vec![crate::workloads::PolicyRule {
                from: vec![Source {
                    service_accounts: vec![("shop".into(), "client".into())],
                    ..Source::default()
                }],
                to: Vec::new(),
            }],
        };
        let a = policy(&p);
        assert_eq!(a.key(), "shop/only-web");
        assert_eq!(a.scope, XdsScope::WorkloadSelector);
        let id = |sa: &str| format!("spiffe://cluster.local/ns/shop/sa/{sa}");
        assert!(decide(
            std::slice::from_ref(&a),
            &conn("10.1.1.1", Some(&id("client")), 80)
        ));
        assert!(!decide(&[a], &conn("10.1.1.1", Some(&id("other")), 80)));
        p.scope = PolicyScope::Global;
        assert_eq!(policy(&p).scope, XdsScope::Global);
    }

    #[test]
    fn strict_label_publishes_the_strict_policy_of_enrolled_namespaces() {
        let c = Cluster::from_yaml(
            r#"
namespaces:
  - name: shop
    labels: { io.cilium/mtls-enabled: "true", io.cilium/mtls-mode: strict }
  - name: open
    labels: { io.cilium/mtls-enabled: "true", io.cilium/mtls-mode: permissive }
  - name: plain
    labels: { io.cilium/mtls-enabled: "true" }
  - name: outside
    labels: { io.cilium/mtls-mode: strict }
policies:
  - name: deny-intruder
    namespace: plain
    action: deny
    rules:
      - from:
          - principals: ["cluster.local/ns/shop/sa/intruder"]
"#,
        )
        .unwrap();
        let label = &settings("node-1").label_key;
        // Through the wire and back: what a proxy holds.
        let held: Vec<AuthorizationPolicy> = policies(&c, label)
            .iter()
            .map(|p| AuthorizationPolicy::try_from(&sec::Authorization::from(p)).unwrap())
            .collect();
        let keys: Vec<String> = held.iter().map(AuthorizationPolicy::key).collect();
        assert_eq!(
            keys,
            ["plain/deny-intruder", "shop/istio_converted_static_strict"],
            "only the enrolled namespace labelled strict"
        );
        let strict = &held[1];
        assert_eq!(strict.scope, XdsScope::Namespace);
        assert_eq!(strict.action, XdsAction::Deny);
        assert!(strict.requires_mtls());
        let id = "spiffe://cluster.local/ns/open/sa/client";
        assert!(
            !decide(&held[1..], &conn("10.10.1.2", None, 8080)),
            "plaintext"
        );
        assert!(
            decide(&held[1..], &conn("10.10.1.2", Some(id), 8080)),
            "mTLS"
        );
    }

    #[test]
    fn enrolled_pods_not_ready_are_published_pending() {
        let c = Cluster::from_yaml(EXAMPLE).unwrap();
        let ready = BTreeSet::from(["8d2f-1".to_owned()]);
        let remote = RemoteReady::Gated(Default::default());
        let views = workload_views(&c, &settings("node-1"), &ready, &remote);
        let held = |uid: &str| {
            let v = views.iter().find(|v| v.uid == uid).unwrap();
            Workload::try_from(&wl::Workload::from(&workload(v))).unwrap()
        };
        let client = held("8d2f-1");
        assert_eq!(client.protocol, TunnelProtocol::Hbone);
        assert!(!client.hbone_pending, "ready");
        let server = held("shop/server-1");
        assert_eq!(server.protocol, TunnelProtocol::None);
        assert!(
            server.hbone_pending,
            "enrolled, its node has not listed it yet"
        );
        let old = held("legacy/old-1");
        assert_eq!(old.protocol, TunnelProtocol::None);
        assert!(!old.hbone_pending, "namespace not enrolled");
    }
}
