//! Domain types to protobuf and back: every field survives, defaults are written out, and
//! whatever the `TryFrom` boundary accepts converts back to an equal value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use prost::Message;

use meshwire_xds_workload::authorization::{
    AuthorizationPolicy, PolicyAction, PolicyClause, PolicyMatch, PolicyRule, PolicyScope,
    ServiceAccountMatch, StringMatch,
};
use meshwire_xds_workload::pb::istio::security as spb;
use meshwire_xds_workload::pb::istio::workload as pb;
use meshwire_xds_workload::resource::{address_from_bytes, authorization_from_bytes};
use meshwire_xds_workload::workload::{
    AppProtocol, ApplicationTunnel, ApplicationTunnelProtocol, GatewayAddress, GatewayDestination,
    HealthPolicy, HealthStatus, IpFamilies, LoadBalancing, LoadBalancingMode, LoadBalancingScope,
    Locality, NamespacedHostname, NetworkMode, Port, ServiceVip, TunnelProtocol, Visibility,
    WeightedWaypoint, WorkloadType,
};
use meshwire_xds_workload::{Address, NetworkAddress, Service, Workload};

/// A workload with every field away from its default.
fn full_workload() -> Workload {
    let mut w = Workload::new("cluster1//Pod/shop/web-0", "web-0", "shop");
    w.addresses = vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()];
    w.hostname = "web-0.example".into();
    w.network = "net-a".into();
    w.protocol = TunnelProtocol::Hbone;
    w.trust_domain = "example.org".into();
    w.service_account = "web".into();
    w.waypoint = Some(GatewayAddress::new(
        GatewayDestination::Hostname(NamespacedHostname::new("shop", "waypoint.shop.svc")),
        15008,
    ));
    w.network_gateway = Some(GatewayAddress::new(
        GatewayDestination::Address(NetworkAddress::new("net-b", "192.0.2.1".parse().unwrap())),
        15009,
    ));
    w.node = "node-a".into();
    w.canonical_name = "web".into();
    w.canonical_revision = "v2".into();
    w.workload_type = WorkloadType::CronJob;
    w.workload_name = "web-job".into();
    w.native_tunnel = true;
    w.application_tunnel = Some(ApplicationTunnel::new(
        ApplicationTunnelProtocol::Proxy,
        15088,
    ));
    let mut tls = Port::new(443, 8443);
    tls.app_protocol = AppProtocol::Tls;
    w.services = BTreeMap::from([
        (
            NamespacedHostname::new("shop", "web.shop.svc.cluster.local"),
            vec![Port::new(80, 8080), tls],
        ),
        (
            NamespacedHostname::new("other", "web.other.svc.cluster.local"),
            vec![Port::new(80, 0)],
        ),
    ]);
    w.authorization_policies = vec!["shop/allow-web".into()];
    w.status = HealthStatus::Unhealthy;
    w.cluster_id = "cluster1".into();
    let mut locality = Locality::default();
    locality.region = "r".into();
    locality.zone = "z".into();
    locality.subzone = "s".into();
    w.locality = locality;
    w.network_mode = NetworkMode::HostNetwork;
    w.capacity = 3;
    w
}

/// A service with every field away from its default.
fn full_service() -> Service {
    let mut s = Service::new("web", "shop", "web.shop.svc.cluster.local");
    s.vips = vec![
        ServiceVip::host("", "10.96.0.10".parse().unwrap()),
        ServiceVip::host("net-a", "fd00:96::10".parse().unwrap()),
        ServiceVip::new("", "10.100.0.0/16".parse().unwrap()),
    ];
    let mut grpc = Port::new(9090, 0);
    grpc.app_protocol = AppProtocol::Grpc;
    s.ports = vec![Port::new(80, 8080), grpc];
    s.subject_alt_names = vec!["spiffe://example.org/ns/shop/sa/web".into()];
    s.waypoint = Some(GatewayAddress::new(
        GatewayDestination::Address(NetworkAddress::new("", "10.0.0.99".parse().unwrap())),
        15008,
    ));
    let mut lb = LoadBalancing::default();
    lb.routing_preference = vec![
        LoadBalancingScope::Network,
        LoadBalancingScope::Zone,
        LoadBalancingScope::Node,
    ];
    lb.mode = LoadBalancingMode::Failover;
    lb.health_policy = HealthPolicy::AllowAll;
    s.load_balancing = Some(lb);
    s.ip_families = IpFamilies::Dual;
    s.canonical = true;
    s.ingress_use_waypoint = true;
    s.weighted_waypoints = vec![WeightedWaypoint::new(
        GatewayAddress::new(
            GatewayDestination::Hostname(NamespacedHostname::new("shop", "wp.shop.svc")),
            15008,
        ),
        7,
    )];
    s.visibility = Visibility::Namespace;
    s
}

/// A policy that uses every kind of match.
fn full_policy() -> AuthorizationPolicy {
    let mut from = PolicyMatch::default();
    from.namespaces = vec![StringMatch::Exact("shop".into())];
    from.not_namespaces = vec![StringMatch::Prefix("kube-".into())];
    from.principals = vec![StringMatch::Suffix("/sa/web".into())];
    from.not_principals = vec![StringMatch::Presence];
    from.source_ips = vec!["10.0.0.0/8".parse().unwrap()];
    // Host bits are kept as given.
    from.not_source_ips = vec!["10.1.2.3/16".parse().unwrap()];
    from.service_accounts = vec![ServiceAccountMatch::new("shop", "web")];
    from.not_service_accounts = vec![ServiceAccountMatch::new("shop", "batch")];
    let mut to = PolicyMatch::default();
    to.destination_ips = vec!["fd00::/64".parse().unwrap()];
    to.not_destination_ips = vec!["192.0.2.7/32".parse().unwrap()];
    to.destination_ports = vec![8080, 8443];
    to.not_destination_ports = vec![9090];
    let mut policy = AuthorizationPolicy::new(
        "shop",
        "allow-web",
        PolicyScope::WorkloadSelector,
        PolicyAction::Deny,
    );
    policy.rules = vec![
        PolicyRule::new(vec![
            PolicyClause::new(vec![from]),
            PolicyClause::new(vec![to]),
        ]),
        PolicyRule::new(Vec::new()),
    ];
    policy.dry_run = true;
    policy
}

#[test]
fn workload_round_trips_with_every_field() {
    let w = full_workload();
    let wire = pb::Workload::from(&w);
    assert_eq!(wire.tunnel_protocol, pb::TunnelProtocol::Hbone as i32);
    assert_eq!(wire.addresses[0].as_ref(), [10, 0, 0, 7]);
    assert_eq!(wire.addresses[1].len(), 16);
    assert_eq!(
        wire.services["shop/web.shop.svc.cluster.local"].ports.len(),
        2
    );
    assert_eq!(wire.capacity, Some(3));
    assert_eq!(Workload::try_from(&wire), Ok(w));
}

#[test]
fn new_workload_writes_its_defaults_and_reads_back_equal() {
    let w = Workload::new("u", "n", "ns");
    let wire = pb::Workload::from(&w);
    assert_eq!(wire.trust_domain, "cluster.local");
    assert_eq!(wire.service_account, "default");
    assert_eq!(wire.cluster_id, "Kubernetes");
    assert_eq!(wire.capacity, Some(1));
    assert_eq!(wire.locality, None);
    // What a control plane that leaves every default unset sends reads as the same.
    let sparse = pb::Workload {
        uid: "u".into(),
        name: "n".into(),
        namespace: "ns".into(),
        ..Default::default()
    };
    assert_eq!(Workload::try_from(&sparse), Ok(w.clone()));
    assert_eq!(Workload::try_from(&wire), Ok(w));
}

#[test]
fn service_round_trips_with_every_field() {
    let s = full_service();
    let wire = pb::Service::from(&s);
    // Host VIPs leave the length out; ranges carry it.
    assert_eq!(wire.addresses[0].length, None);
    assert_eq!(wire.addresses[2].length, Some(16));
    assert_eq!(Service::try_from(&wire), Ok(s));
}

#[test]
fn policy_round_trips_with_every_field() {
    let p = full_policy();
    let wire = spb::Authorization::from(&p);
    assert_eq!(wire.scope, spb::Scope::WorkloadSelector as i32);
    assert_eq!(wire.action, spb::Action::Deny as i32);
    let not_source = &wire.rules[0].clauses[0].matches[0].not_source_ips[0];
    assert_eq!(not_source.address.as_ref(), [10, 1, 2, 3]);
    assert_eq!(not_source.length, 16);
    assert_eq!(AuthorizationPolicy::try_from(&wire), Ok(p.clone()));
    // Through the bytes, as a client receives it.
    assert_eq!(authorization_from_bytes(&wire.encode_to_vec()), Ok(p));
}

#[test]
fn addresses_round_trip_through_the_wire() {
    for address in [
        Address::Workload(Arc::new(full_workload())),
        Address::Service(Arc::new(full_service())),
    ] {
        let bytes = pb::Address::from(&address).encode_to_vec();
        assert_eq!(address_from_bytes(&bytes), Ok(address.clone()));
    }
    let w = Address::Workload(Arc::new(full_workload()));
    assert_eq!(w.name(), "cluster1//Pod/shop/web-0");
    let s = Address::Service(Arc::new(full_service()));
    assert_eq!(s.name(), "shop/web.shop.svc.cluster.local");
}

#[test]
fn hand_built_fixture_matches_the_domain_conversion() {
    // The fixture the other tests build by hand, and the same workload built as a domain
    // type, read the same.
    let from_fixture = Workload::try_from(&common::workload(3)).unwrap();
    let wire = pb::Workload::from(&from_fixture);
    assert_eq!(Workload::try_from(&wire).unwrap(), from_fixture);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever a mutated encoding decodes to, converting it back and reading it again
    /// gives the same value.
    #[test]
    fn accepted_addresses_round_trip(
        pick in 0usize..3,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
    ) {
        let address = match pick {
            0 => Address::Workload(Arc::new(full_workload())),
            1 => Address::Service(Arc::new(full_service())),
            _ => Address::try_from(pb::Address {
                r#type: Some(pb::address::Type::Workload(common::workload(7))),
            }).unwrap(),
        };
        let mut bytes = pb::Address::from(&address).encode_to_vec();
        for (at, value) in flips {
            let n = bytes.len();
            bytes[at % n] = value;
        }
        if let Ok(decoded) = address_from_bytes(&bytes) {
            let again = pb::Address::from(&decoded).encode_to_vec();
            prop_assert_eq!(address_from_bytes(&again), Ok(decoded));
        }
    }

    #[test]
    fn accepted_policies_round_trip(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
    ) {
        let mut bytes = spb::Authorization::from(&full_policy()).encode_to_vec();
        for (at, value) in flips {
            let n = bytes.len();
            bytes[at % n] = value;
        }
        if let Ok(decoded) = authorization_from_bytes(&bytes) {
            let again = spb::Authorization::from(&decoded).encode_to_vec();
            prop_assert_eq!(authorization_from_bytes(&again), Ok(decoded));
        }
    }
}
