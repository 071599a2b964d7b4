//! The workload store: insert, update and remove by resource name, and every lookup.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use meshwire_xds_workload::authorization::{
    AuthorizationPolicy, ConnectionInfo, Decision, DenyReason,
};
use meshwire_xds_workload::pb::istio::security as spb;
use meshwire_xds_workload::pb::istio::workload as pb;
use meshwire_xds_workload::store::StoreBatch;
use meshwire_xds_workload::workload::NamespacedHostname;
use meshwire_xds_workload::{Address, Identity, NetworkAddress, Service, Workload, WorkloadStore};

fn workload(p: &pb::Workload) -> Address {
    Address::Workload(Arc::new(Workload::try_from(p).unwrap()))
}

fn service(namespace: &str, host: &str, vips: &[(&str, [u8; 4], Option<u32>)]) -> Address {
    let p = pb::Service {
        name: host.split('.').next().unwrap().into(),
        namespace: namespace.into(),
        hostname: host.into(),
        addresses: vips
            .iter()
            .map(|(net, ip, len)| pb::NetworkAddress {
                network: (*net).into(),
                address: ip.to_vec().into(),
                length: *len,
            })
            .collect(),
        ..Default::default()
    };
    Address::Service(Arc::new(Service::try_from(&p).unwrap()))
}

fn at(ip: [u8; 4]) -> NetworkAddress {
    NetworkAddress::new("", IpAddr::from(ip))
}

fn wip(i: usize) -> NetworkAddress {
    NetworkAddress::new("", IpAddr::V4(common::workload_ip(i)))
}

#[test]
fn insert_lookup_update_remove_workload() {
    let store = WorkloadStore::new();
    let p = common::workload(1);
    store.insert_address(p.uid.clone(), workload(&p));

    let by_uid = store.workload_by_uid(&p.uid).unwrap();
    assert_eq!(by_uid.name, "pod-1");
    assert!(Arc::ptr_eq(
        &by_uid,
        &store.workload_by_address(&wip(1)).unwrap()
    ));
    assert_eq!(store.workloads_on_node("node-1").len(), 1);
    let svc = NamespacedHostname::new("ns-1", "svc-1.ns-1.svc.cluster.local");
    assert_eq!(store.endpoints(&svc).len(), 1);
    assert!(matches!(
        store.lookup_address(&wip(1)),
        Some(Address::Workload(_))
    ));
    // Network is part of the key.
    assert!(
        store
            .workload_by_address(&NetworkAddress::new(
                "other",
                IpAddr::V4(common::workload_ip(1))
            ))
            .is_none()
    );

    // Update under the same name: new address, node and service; old indexes are gone.
    let mut moved = p.clone();
    moved.addresses = vec![vec![192, 168, 0, 1].into()];
    moved.node = "node-x".into();
    moved.services.clear();
    store.insert_address(p.uid.clone(), workload(&moved));
    assert!(store.workload_by_address(&wip(1)).is_none());
    assert_eq!(
        store
            .workload_by_address(&at([192, 168, 0, 1]))
            .unwrap()
            .node,
        "node-x"
    );
    assert!(store.workloads_on_node("node-1").is_empty());
    assert_eq!(store.workloads_on_node("node-x").len(), 1);
    assert!(store.endpoints(&svc).is_empty());
    assert_eq!(store.workload_count(), 1);

    assert!(store.remove_address(&p.uid));
    assert!(!store.remove_address(&p.uid));
    assert_eq!(store.workload_count(), 0);
    assert!(store.workload_by_address(&at([192, 168, 0, 1])).is_none());
    assert!(store.workloads_on_node("node-x").is_empty());
}

#[test]
fn resource_names_differing_from_keys() {
    let store = WorkloadStore::new();
    let p = common::workload(2);
    store.insert_address("name-a", workload(&p));
    assert!(store.workload_by_uid(&p.uid).is_some());
    // The same uid under another name replaces the first resource.
    store.insert_address("name-b", workload(&p));
    assert_eq!(store.workload_count(), 1);
    assert_eq!(store.workloads_on_node("node-2").len(), 1);
    assert!(!store.remove_address("name-a"));
    assert!(store.remove_address("name-b"));
    assert_eq!(store.workload_count(), 0);

    // A removal for a name the store never saw is read as a uid, then as ns/hostname.
    store.insert_address("opaque-1", workload(&p));
    assert!(store.remove_address(&p.uid));
    assert_eq!(store.workload_count(), 0);
    store.insert_address(
        "opaque-2",
        service("ns", "a.ns.svc", &[("", [172, 16, 0, 1], None)]),
    );
    assert!(!store.remove_address("ns/a.ns.svc/extra"));
    assert!(store.remove_address("ns/a.ns.svc"));
    assert_eq!(store.service_count(), 0);
    assert!(store.service_by_vip(&at([172, 16, 0, 1])).is_none());
}

#[test]
fn address_reuse_keeps_the_newest() {
    let store = WorkloadStore::new();
    let old = common::workload(5);
    let mut new = common::workload(6);
    new.addresses = old.addresses.clone();
    store.insert_address(old.uid.clone(), workload(&old));
    store.insert_address(new.uid.clone(), workload(&new));
    assert_eq!(store.workload_by_address(&wip(5)).unwrap().uid, new.uid);
    // Removing the old record leaves the new one reachable.
    assert!(store.remove_address(&old.uid));
    assert_eq!(store.workload_by_address(&wip(5)).unwrap().uid, new.uid);
    // Re-adding the old one makes it the newest; removing it falls back.
    store.insert_address(old.uid.clone(), workload(&old));
    assert_eq!(store.workload_by_address(&wip(5)).unwrap().uid, old.uid);
    store.remove_address(&old.uid);
    assert_eq!(store.workload_by_address(&wip(5)).unwrap().uid, new.uid);
}

#[test]
fn host_network_workloads_are_not_indexed_by_address() {
    let store = WorkloadStore::new();
    let mut p = common::workload(7);
    p.network_mode = pb::NetworkMode::HostNetwork as i32;
    store.insert_address(p.uid.clone(), workload(&p));
    assert!(store.workload_by_address(&wip(7)).is_none());
    assert!(store.workload_by_uid(&p.uid).is_some());
    assert_eq!(store.workloads_on_node("node-7").len(), 1);
}

#[test]
fn services_by_vip_and_hostname() {
    let store = WorkloadStore::new();
    store.insert_address(
        "ns/web.ns.svc.cluster.local",
        service(
            "ns",
            "web.ns.svc.cluster.local",
            &[
                ("", [172, 16, 0, 10], None),
                ("net2", [172, 16, 0, 10], Some(32)),
            ],
        ),
    );
    store.insert_address(
        "ns/wide.ns.svc.cluster.local",
        service(
            "ns",
            "wide.ns.svc.cluster.local",
            &[("", [10, 96, 0, 0], Some(12))],
        ),
    );
    store.insert_address(
        "ns/narrow.ns.svc.cluster.local",
        service(
            "ns",
            "narrow.ns.svc.cluster.local",
            &[("", [10, 100, 0, 0], Some(16))],
        ),
    );

    let web = store
        .service_by_hostname("ns", "web.ns.svc.cluster.local")
        .unwrap();
    assert_eq!(web.name, "web");
    assert!(Arc::ptr_eq(
        &web,
        &store.service_by_vip(&at([172, 16, 0, 10])).unwrap()
    ));
    let net2 = NetworkAddress::new("net2", IpAddr::V4(Ipv4Addr::new(172, 16, 0, 10)));
    assert_eq!(store.service_by_vip(&net2).unwrap().name, "web");
    // Range VIPs: longest prefix wins; other networks do not match.
    assert_eq!(
        store.service_by_vip(&at([10, 100, 3, 4])).unwrap().name,
        "narrow"
    );
    assert_eq!(
        store.service_by_vip(&at([10, 97, 3, 4])).unwrap().name,
        "wide"
    );
    assert!(store.service_by_vip(&at([10, 200, 0, 1])).is_none());
    assert!(
        store
            .service_by_vip(&NetworkAddress::new("net2", IpAddr::from([10, 100, 3, 4])))
            .is_none()
    );
    assert!(matches!(
        store.lookup_address(&at([172, 16, 0, 10])),
        Some(Address::Service(_))
    ));
    assert!(
        store
            .service_by_hostname("other", "web.ns.svc.cluster.local")
            .is_none()
    );

    assert!(store.remove_address("ns/narrow.ns.svc.cluster.local"));
    assert_eq!(
        store.service_by_vip(&at([10, 100, 3, 4])).unwrap().name,
        "wide"
    );
    assert_eq!(store.service_count(), 2);
}

#[test]
fn canonical_service_wins_a_shared_vip() {
    let store = WorkloadStore::new();
    let mut canonical = pb::Service {
        name: "a".into(),
        namespace: "ns".into(),
        hostname: "a.example".into(),
        canonical: true,
        addresses: vec![pb::NetworkAddress {
            address: vec![172, 16, 1, 1].into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    store.insert_address(
        "ns/a.example",
        Address::Service(Arc::new(Service::try_from(&canonical).unwrap())),
    );
    canonical.hostname = "b.example".into();
    canonical.canonical = false;
    store.insert_address(
        "ns/b.example",
        Address::Service(Arc::new(Service::try_from(&canonical).unwrap())),
    );
    assert_eq!(
        store.service_by_vip(&at([172, 16, 1, 1])).unwrap().hostname,
        "a.example"
    );
}

#[test]
fn endpoints_and_nodes() {
    let store = WorkloadStore::new();
    let mut batch = StoreBatch::new();
    for i in 0..200 {
        let p = common::workload(i);
        batch.upsert_address(p.uid.clone(), workload(&p));
    }
    store.apply(batch);
    assert_eq!(store.workloads_on_node("node-0").len(), 10);
    let svc = NamespacedHostname::new("ns-0", "svc-0.ns-0.svc.cluster.local");
    let eps = store.endpoints(&svc);
    assert_eq!(eps.len(), 2); // workloads 0 and 100
    assert!(eps.windows(2).all(|w| w[0].uid < w[1].uid));
}

#[test]
fn batch_equals_one_by_one_and_bumps_generation_once() {
    let one = WorkloadStore::new();
    let batched = WorkloadStore::new();
    let mut gen_rx = batched.subscribe();
    let mut batch = StoreBatch::with_capacity(300);
    for i in 0..300 {
        let p = common::workload(i);
        one.insert_address(p.uid.clone(), workload(&p));
        batch.upsert_address(p.uid.clone(), workload(&p));
    }
    for i in (0..300).step_by(3) {
        one.remove_address(&common::workload_uid(i));
        batch.remove_address(common::workload_uid(i));
    }
    assert_eq!(batch.len(), 400);
    batched.apply(batch);
    assert!(gen_rx.has_changed().unwrap());
    assert_eq!(*gen_rx.borrow_and_update(), 1);

    assert_eq!(one.workload_count(), 200);
    assert_eq!(batched.workload_count(), 200);
    for i in 0..300 {
        assert_eq!(
            one.workload_by_address(&wip(i)).map(|w| w.uid.clone()),
            batched.workload_by_address(&wip(i)).map(|w| w.uid.clone())
        );
    }
    for n in 0..20 {
        let node = format!("node-{n}");
        assert_eq!(
            one.workloads_on_node(&node).len(),
            batched.workloads_on_node(&node).len()
        );
    }
    // An empty batch changes nothing.
    batched.apply(StoreBatch::new());
    assert!(!gen_rx.has_changed().unwrap());
}

fn policy(
    name: &str,
    namespace: &str,
    scope: spb::Scope,
    action: spb::Action,
) -> AuthorizationPolicy {
    AuthorizationPolicy::try_from(&spb::Authorization {
        name: name.into(),
        namespace: namespace.into(),
        scope: scope as i32,
        action: action as i32,
        rules: vec![spb::Rule {
            clauses: vec![spb::Clause {
                matches: vec![spb::Match {
                    namespaces: vec![spb::StringMatch {
                        match_type: Some(spb::string_match::MatchType::Exact("bad".into())),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    })
    .unwrap()
}

/// Inserts a [`policy`] for each `(key, name, namespace, scope, action)`.
fn insert_policies(
    store: &WorkloadStore,
    policies: &[(&str, &str, &str, spb::Scope, spb::Action)],
) {
    for &(key, name, namespace, scope, action) in policies {
        store.insert_policy(key, policy(name, namespace, scope, action));
    }
}

#[test]
fn applicable_policies_and_authorize() {
    let store = WorkloadStore::new();
    let mut p = common::workload(1); // namespace ns-1
    p.authorization_policies = vec!["ns-9/selected".into(), "ns-9/unknown".into()];
    let w = Workload::try_from(&p).unwrap();

    let deny = spb::Action::Deny;
    insert_policies(
        &store,
        &[
            ("root/global", "global", "root", spb::Scope::Global, deny),
            ("ns-1/local", "local", "ns-1", spb::Scope::Namespace, deny),
            ("ns-2/other", "other", "ns-2", spb::Scope::Namespace, deny),
            (
                "ns-9/selected",
                "selected",
                "ns-9",
                spb::Scope::WorkloadSelector,
                deny,
            ),
            (
                "ns-1/unselected",
                "unselected",
                "ns-1",
                spb::Scope::WorkloadSelector,
                deny,
            ),
        ],
    );
    assert_eq!(store.policy_count(), 5);

    let keys: Vec<String> = store.policies_for(&w).iter().map(|p| p.key()).collect();
    assert_eq!(keys, vec!["ns-1/local", "ns-9/selected", "root/global"]);

    let dst = "10.0.0.1:8080".parse().unwrap();
    let src = "10.9.9.9".parse().unwrap();
    let bad = ConnectionInfo::new(src, dst, Some(Identity::new("cluster.local", "bad", "x")));
    let good = ConnectionInfo::new(src, dst, Some(Identity::new("cluster.local", "good", "x")));
    assert_eq!(
        store.authorize(&bad, &w).decision,
        Decision::Deny(DenyReason::ExplicitDeny {
            policy: "ns-1/local".into()
        })
    );
    assert_eq!(store.authorize(&good, &w).decision, Decision::Allow);

    // Removal by name, and by key when the name is unknown.
    assert!(store.remove_policy("ns-1/local"));
    assert!(store.remove_policy("root/global"));
    assert!(store.remove_policy("ns-9/selected"));
    assert!(!store.remove_policy("ns-9/selected"));
    assert!(store.policies_for(&w).is_empty());
    assert_eq!(store.authorize(&bad, &w).decision, Decision::Allow);

    // An update that changes scope moves the policy between indexes.
    store.insert_policy(
        "p",
        policy("moving", "ns-1", spb::Scope::Namespace, spb::Action::Deny),
    );
    assert_eq!(store.policies_for(&w).len(), 1);
    store.insert_policy(
        "p",
        policy(
            "moving",
            "ns-1",
            spb::Scope::WorkloadSelector,
            spb::Action::Deny,
        ),
    );
    assert!(store.policies_for(&w).is_empty());
    assert!(store.policy("ns-1/moving").is_some());
}

#[test]
fn listing_everything_in_key_order() {
    let store = WorkloadStore::new();
    assert!(store.workloads().is_empty());
    let empty = store.snapshot();
    assert!(empty.workloads.is_empty() && empty.services.is_empty() && empty.policies.is_empty());

    let mut batch = StoreBatch::new();
    // Inserted out of order, across nodes and namespaces, one host-network workload (not
    // indexed by address, still listed).
    for i in [7, 3, 12, 0, 25] {
        let mut p = common::workload(i);
        if i == 12 {
            p.network_mode = pb::NetworkMode::HostNetwork as i32;
        }
        batch.upsert_address(p.uid.clone(), workload(&p));
    }
    batch.upsert_address(
        "z",
        service("ns-b", "b.ns-b.svc", &[("", [172, 16, 0, 2], None)]),
    );
    batch.upsert_address(
        "a",
        service("ns-a", "z.ns-a.svc", &[("", [172, 16, 0, 1], None)]),
    );
    batch.upsert_address(
        "r",
        service("ns-a", "range.ns-a.svc", &[("", [172, 17, 0, 0], Some(16))]),
    );
    store.apply(batch);
    insert_policies(
        &store,
        &[
            (
                "second",
                "p2",
                "ns-b",
                spb::Scope::Namespace,
                spb::Action::Deny,
            ),
            ("first", "p1", "ns-z", spb::Scope::Global, spb::Action::Deny),
            (
                "third",
                "p0",
                "ns-b",
                spb::Scope::WorkloadSelector,
                spb::Action::Allow,
            ),
        ],
    );

    let mut uids: Vec<String> = [7, 3, 12, 0, 25].map(common::workload_uid).into();
    uids.sort();
    let listed: Vec<String> = store.workloads().iter().map(|w| w.uid.clone()).collect();
    assert_eq!(listed, uids);
    let services: Vec<String> = store
        .services()
        .iter()
        .map(|s| s.key().to_string())
        .collect();
    assert_eq!(
        services,
        ["ns-a/range.ns-a.svc", "ns-a/z.ns-a.svc", "ns-b/b.ns-b.svc"]
    );
    let policies: Vec<String> = store.policies().iter().map(|p| p.key()).collect();
    assert_eq!(policies, ["ns-b/p0", "ns-b/p2", "ns-z/p1"]);

    // The listed values are the store's own.
    let by_uid = store.workload_by_uid(&uids[0]).unwrap();
    assert!(Arc::ptr_eq(&by_uid, &store.workloads()[0]));

    // A snapshot holds the same lists and does not follow later changes.
    let snap = store.snapshot();
    assert_eq!(
        snap.workloads
            .iter()
            .map(|w| w.uid.clone())
            .collect::<Vec<_>>(),
        uids
    );
    assert_eq!(snap.services.len(), 3);
    assert_eq!(snap.policies.len(), 3);
    assert!(store.remove_address(&uids[0]));
    assert!(store.remove_address("a"));
    assert!(store.remove_policy("first"));
    assert_eq!(snap.workloads.len(), 5);
    assert_eq!(store.workloads().len(), 4);
    assert!(store.workloads().iter().all(|w| w.uid != uids[0]));
    assert_eq!(
        store
            .services()
            .iter()
            .map(|s| s.key().to_string())
            .collect::<Vec<_>>(),
        ["ns-a/range.ns-a.svc", "ns-b/b.ns-b.svc"]
    );
    assert_eq!(store.policies().len(), 2);
    let now = store.snapshot();
    assert_eq!(
        (now.workloads.len(), now.services.len(), now.policies.len()),
        (
            store.workload_count(),
            store.service_count(),
            store.policy_count()
        )
    );
}
