//! Strict mutual TLS: the istiod-shaped `DENY` policy, its evaluation, how it is recognized
//! for a workload, and the `hbone_pending` workload marker on the wire.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use meshwire_xds_workload::authorization::{
    AuthorizationPolicy, ConnectionInfo, Decision, DenyReason, PolicyAction, PolicyScope,
    STRICT_POLICY_NAME, StringMatch, evaluate,
};
use meshwire_xds_workload::pb::istio::security as spb;
use meshwire_xds_workload::pb::istio::workload as wpb;
use meshwire_xds_workload::workload::HBONE_PENDING_EXTENSION;
use meshwire_xds_workload::{Address, Identity, Workload, WorkloadStore};

fn dst() -> SocketAddr {
    "10.0.0.2:8080".parse().unwrap()
}

fn plaintext() -> ConnectionInfo {
    ConnectionInfo::new("10.0.0.1".parse().unwrap(), dst(), None)
}

fn mtls() -> ConnectionInfo {
    let peer = Identity::new("cluster.local", "other", "client");
    ConnectionInfo::new("10.0.0.1".parse().unwrap(), dst(), Some(peer))
}

/// The message istiod sends ztunnel for `PeerAuthentication` STRICT in `namespace`.
fn upstream_shape(namespace: &str) -> spb::Authorization {
    spb::Authorization {
        name: STRICT_POLICY_NAME.into(),
        namespace: namespace.into(),
        scope: spb::Scope::Namespace as i32,
        action: spb::Action::Deny as i32,
        rules: vec![spb::Rule {
            clauses: vec![spb::Clause {
                matches: vec![spb::Match {
                    not_principals: vec![spb::StringMatch {
                        match_type: Some(spb::string_match::MatchType::Presence(())),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    }
}

#[test]
fn strict_policy_denies_plaintext_and_allows_mtls() {
    let strict = AuthorizationPolicy::strict_mtls("shop");
    let denied = evaluate([&strict], &plaintext()).decision;
    assert_eq!(
        denied,
        Decision::Deny(DenyReason::ExplicitDeny {
            policy: "shop/istio_converted_static_strict".into()
        })
    );
    assert!(evaluate([&strict], &mtls()).decision.is_allowed());
}

#[test]
fn strict_policy_has_the_upstream_wire_shape() {
    let strict = AuthorizationPolicy::strict_mtls("shop");
    assert_eq!(spb::Authorization::from(&strict), upstream_shape("shop"));
    let decoded = AuthorizationPolicy::try_from(&upstream_shape("shop")).unwrap();
    assert_eq!(decoded, strict);
    assert_eq!(decoded.scope, PolicyScope::Namespace);
    assert!(decoded.requires_mtls());
}

#[test]
fn requires_mtls_recognizes_only_a_deny_of_every_plaintext_connection() {
    assert!(AuthorizationPolicy::strict_mtls("shop").requires_mtls());

    // The same rule under another name, with `not_namespaces` instead: still strict.
    let mut other = AuthorizationPolicy::strict_mtls("shop");
    other.name = "custom".into();
    let m = &mut other.rules[0].clauses[0].matches[0];
    m.not_namespaces = std::mem::take(&mut m.not_principals);
    assert!(other.requires_mtls());

    let mut allow = AuthorizationPolicy::strict_mtls("shop");
    allow.action = PolicyAction::Allow;
    assert!(!allow.requires_mtls(), "an ALLOW");

    let mut dry = AuthorizationPolicy::strict_mtls("shop");
    dry.dry_run = true;
    assert!(!dry.requires_mtls(), "dry-run never enforces");

    let mut narrower = AuthorizationPolicy::strict_mtls("shop");
    narrower.rules[0].clauses[0].matches[0].destination_ports = vec![8080];
    assert!(!narrower.requires_mtls(), "only some ports");

    let mut exact = AuthorizationPolicy::strict_mtls("shop");
    exact.rules[0].clauses[0].matches[0].not_principals =
        vec![StringMatch::Exact("cluster.local/ns/a/sa/b".into())];
    assert!(!exact.requires_mtls(), "not a presence match");

    let mut empty = AuthorizationPolicy::strict_mtls("shop");
    empty.rules.clear();
    assert!(!empty.requires_mtls(), "no rule");
}

#[test]
fn store_tells_which_workloads_are_strict() {
    let store = WorkloadStore::new();
    let shop = Workload::new("shop-1", "web-0", "shop");
    let legacy = Workload::new("legacy-1", "old-0", "legacy");
    assert!(!store.requires_mtls(&shop), "permissive without a policy");

    store.insert_policy(
        "shop/istio_converted_static_strict",
        AuthorizationPolicy::strict_mtls("shop"),
    );
    assert!(store.requires_mtls(&shop));
    assert!(!store.requires_mtls(&legacy), "other namespace");
    assert!(!store.authorize(&plaintext(), &shop).decision.is_allowed());
    assert!(store.authorize(&plaintext(), &legacy).decision.is_allowed());
    assert!(store.authorize(&mtls(), &shop).decision.is_allowed());

    // Workload scope: only the workload that names it.
    let mut selected = AuthorizationPolicy::strict_mtls("legacy");
    selected.name = "strict-old".into();
    selected.scope = PolicyScope::WorkloadSelector;
    store.insert_policy("legacy/strict-old", selected);
    assert!(!store.requires_mtls(&legacy));
    let mut named = legacy.clone();
    named.authorization_policies = vec!["legacy/strict-old".into()];
    assert!(store.requires_mtls(&named));
}

#[test]
fn hbone_pending_travels_as_an_extension() {
    let mut w = Workload::new("shop-1", "web-0", "shop");
    assert!(!w.hbone_pending);
    assert!(wpb::Workload::from(&w).extensions.is_empty());

    w.hbone_pending = true;
    let wire = wpb::Workload::from(&w);
    assert_eq!(wire.extensions.len(), 1);
    assert_eq!(wire.extensions[0].name, HBONE_PENDING_EXTENSION);
    assert_eq!(Workload::try_from(&wire), Ok(w.clone()));

    // Other extensions are ignored.
    let mut other = wire.clone();
    other.extensions[0].name = "example.com/something".into();
    assert!(!Workload::try_from(&other).unwrap().hbone_pending);

    // Through the store as an address.
    let store = WorkloadStore::new();
    store.insert_address("shop-1", Address::Workload(Arc::new(w)));
    assert!(store.workloads()[0].hbone_pending);
}
