//! Resolving where a connection goes: service VIPs to endpoints with port mapping, workload
//! addresses, and host-name authorities on the receiving endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meshwire_xds_workload::pb::istio::workload as pb;
use meshwire_xds_workload::store::{ServiceHostTarget, Upstream};
use meshwire_xds_workload::workload::NamespacedHostname;
use meshwire_xds_workload::{Address, Service, Workload, WorkloadStore};

const WEB: &str = "shop/web.shop.svc.cluster.local";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn port(service_port: u32, target_port: u32) -> pb::Port {
    pb::Port {
        service_port,
        target_port,
        app_protocol: 0,
    }
}

/// A healthy HBONE pod `name` in `shop` with `addresses`, endpoint of the services in
/// `services` with those port lists.
fn pod(name: &str, addresses: &[&str], services: &[(&str, Vec<pb::Port>)]) -> pb::Workload {
    pb::Workload {
        uid: format!("Kubernetes//Pod/shop/{name}"),
        name: name.into(),
        namespace: "shop".into(),
        service_account: "web".into(),
        addresses: addresses
            .iter()
            .map(|a| match a.parse::<std::net::IpAddr>().unwrap() {
                std::net::IpAddr::V4(v4) => v4.octets().to_vec().into(),
                std::net::IpAddr::V6(v6) => v6.octets().to_vec().into(),
            })
            .collect(),
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        node: "node-1".into(),
        services: services
            .iter()
            .map(|(k, ports)| {
                (
                    (*k).to_string(),
                    pb::PortList {
                        ports: ports.clone(),
                    },
                )
            })
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

fn put(store: &WorkloadStore, w: pb::Workload) -> Arc<Workload> {
    let w = Arc::new(Workload::try_from(w).unwrap());
    store.insert_address(w.uid.clone(), Address::Workload(w.clone()));
    w
}

/// Service `web` in `shop` on the VIPs `vips` (default network) with `ports`.
fn web_service(vips: &[&str], ports: Vec<pb::Port>) -> pb::Service {
    pb::Service {
        name: "web".into(),
        namespace: "shop".into(),
        hostname: "web.shop.svc.cluster.local".into(),
        addresses: vips
            .iter()
            .map(|a| pb::NetworkAddress {
                network: String::new(),
                address: match a.parse::<std::net::IpAddr>().unwrap() {
                    std::net::IpAddr::V4(v4) => v4.octets().to_vec().into(),
                    std::net::IpAddr::V6(v6) => v6.octets().to_vec().into(),
                },
                length: None,
            })
            .collect(),
        ports,
        subject_alt_names: vec!["spiffe://cluster.local/ns/shop/sa/web-svc".into()],
        ..Default::default()
    }
}

fn put_service(store: &WorkloadStore, s: pb::Service) -> Arc<Service> {
    let s = Arc::new(Service::try_from(s).unwrap());
    store.insert_address(s.key().to_string(), Address::Service(s.clone()));
    s
}

/// The uid and address of the endpoint chosen for `dst`; panics unless it is a service
/// endpoint.
fn endpoint(store: &WorkloadStore, dst: &str) -> (String, SocketAddr) {
    match store.resolve_upstream("", sa(dst)) {
        Upstream::ServiceEndpoint {
            workload, address, ..
        } => (workload.uid.clone(), address),
        other => panic!("expected a service endpoint for {dst}, got {other:?}"),
    }
}

#[test]
fn vips_resolve_to_healthy_endpoints_with_target_ports() {
    let store = WorkloadStore::new();
    // Port 80: no target in the service, the endpoints map it to 8080.
    let eps = || vec![port(80, 8080)];
    let ready = put(&store, pod("web-0", &["10.0.0.5"], &[(WEB, eps())]));
    let mut sick = pod("web-1", &["10.0.0.6"], &[(WEB, eps())]);
    sick.status = pb::WorkloadStatus::Unhealthy as i32;
    put(&store, sick);
    let service = put_service(
        &store,
        web_service(&["10.96.0.10"], vec![port(80, 0), port(443, 8443)]),
    );

    // Only the healthy endpoint is ever chosen.
    for _ in 0..4 {
        let up = store.resolve_upstream("", sa("10.96.0.10:80"));
        assert!(matches!(&up, Upstream::ServiceEndpoint { .. }), "{up:?}");
        assert!(Arc::ptr_eq(up.service().unwrap(), &service));
        assert!(Arc::ptr_eq(up.workload().unwrap(), &ready));
        assert_eq!(up.address(), Some(sa("10.0.0.5:8080")));
    }
    // Port 443: the endpoint does not map it, the service's own target port applies.
    assert_eq!(
        endpoint(&store, "10.96.0.10:443"),
        (ready.uid.clone(), sa("10.0.0.5:8443"))
    );

    // A pod address directly: the workload, port unchanged.
    let up = store.resolve_upstream("", sa("10.0.0.5:9000"));
    assert!(matches!(
        &up,
        Upstream::Workload { workload, address, .. }
            if Arc::ptr_eq(workload, &ready) && *address == sa("10.0.0.5:9000")
    ));
    assert!(up.service().is_none());
    // An unhealthy pod is still reachable by its own address.
    assert!(matches!(
        store.resolve_upstream("", sa("10.0.0.6:80")),
        Upstream::Workload { .. }
    ));

    // Unknown address; the VIP seen from another network.
    assert_eq!(
        store.resolve_upstream("", sa("192.0.2.1:80")),
        Upstream::Unknown
    );
    assert_eq!(
        store.resolve_upstream("other", sa("10.96.0.10:80")),
        Upstream::Unknown
    );
    let unknown = Upstream::Unknown;
    assert!(unknown.workload().is_none() && unknown.address().is_none());

    // No healthy endpoint left.
    store.remove_address(&ready.uid);
    let up = store.resolve_upstream("", sa("10.96.0.10:80"));
    assert!(matches!(&up, Upstream::NoEndpoint { .. }), "{up:?}");
    assert!(up.workload().is_none() && up.address().is_none());
    assert!(Arc::ptr_eq(up.service().unwrap(), &service));
}

#[test]
fn the_endpoint_mapping_wins_and_unmapped_ports_have_no_endpoint() {
    let store = WorkloadStore::new();
    // The endpoint maps 80 itself (a named port), and says 0 for 443 (no mapping).
    put(
        &store,
        pod(
            "web-0",
            &["10.0.0.5"],
            &[(WEB, vec![port(80, 8081), port(443, 0)])],
        ),
    );
    let service = put_service(
        &store,
        web_service(
            &["10.96.0.10"],
            vec![port(80, 8080), port(443, 8443), port(9000, 0)],
        ),
    );
    assert_eq!(endpoint(&store, "10.96.0.10:80").1, sa("10.0.0.5:8081"));
    assert_eq!(endpoint(&store, "10.96.0.10:443").1, sa("10.0.0.5:8443"));
    // 9000: the service names no target and the endpoint no mapping; 1234: not a port of
    // the service at all.
    for dst in ["10.96.0.10:9000", "10.96.0.10:1234"] {
        let up = store.resolve_upstream("", sa(dst));
        assert!(matches!(&up, Upstream::NoEndpoint { .. }), "{dst}: {up:?}");
        assert!(Arc::ptr_eq(up.service().unwrap(), &service));
    }
}

#[test]
fn endpoints_are_taken_in_turn_in_uid_order() {
    let store = WorkloadStore::new();
    // Inserted out of uid order.
    for (name, ip) in [
        ("web-2", "10.0.0.7"),
        ("web-0", "10.0.0.5"),
        ("web-1", "10.0.0.6"),
    ] {
        put(&store, pod(name, &[ip], &[(WEB, vec![port(80, 8080)])]));
    }
    put_service(&store, web_service(&["10.96.0.10"], vec![port(80, 0)]));
    let picks: Vec<String> = (0..9)
        .map(|_| endpoint(&store, "10.96.0.10:80").0)
        .collect();
    let first = picks
        .iter()
        .position(|p| p == "Kubernetes//Pod/shop/web-0")
        .unwrap();
    // Whatever the starting point, the next ones follow in uid order, each equally often.
    for (i, uid) in picks.iter().enumerate().skip(first) {
        let expected = ["web-0", "web-1", "web-2"][(i - first) % 3];
        assert_eq!(uid, &format!("Kubernetes//Pod/shop/{expected}"));
    }
    for name in ["web-0", "web-1", "web-2"] {
        let uid = format!("Kubernetes//Pod/shop/{name}");
        assert_eq!(picks.iter().filter(|p| **p == uid).count(), 3, "{name}");
    }
}

#[test]
fn load_balancing_health_policy_and_passthrough() {
    let store = WorkloadStore::new();
    let mut sick = pod("web-0", &["10.0.0.5"], &[(WEB, vec![port(80, 8080)])]);
    sick.status = pb::WorkloadStatus::Unhealthy as i32;
    put(&store, sick);

    let mut allow_all = web_service(&["10.96.0.10"], vec![port(80, 0)]);
    allow_all.load_balancing = Some(pb::LoadBalancing {
        health_policy: pb::load_balancing::HealthPolicy::AllowAll as i32,
        ..Default::default()
    });
    put_service(&store, allow_all.clone());
    assert_eq!(endpoint(&store, "10.96.0.10:80").1, sa("10.0.0.5:8080"));

    let mut only_healthy = allow_all.clone();
    only_healthy.load_balancing = Some(pb::LoadBalancing::default());
    put_service(&store, only_healthy);
    assert!(matches!(
        store.resolve_upstream("", sa("10.96.0.10:80")),
        Upstream::NoEndpoint { .. }
    ));

    let mut passthrough = allow_all;
    passthrough.load_balancing = Some(pb::LoadBalancing {
        mode: pb::load_balancing::Mode::Passthrough as i32,
        ..Default::default()
    });
    let s = put_service(&store, passthrough);
    let up = store.resolve_upstream("", sa("10.96.0.10:80"));
    assert!(matches!(&up, Upstream::ServicePassthrough { .. }), "{up:?}");
    assert!(up.address().is_none());
    assert!(Arc::ptr_eq(up.service().unwrap(), &s));
}

#[test]
fn endpoint_address_follows_the_destination_family() {
    let store = WorkloadStore::new();
    let ports = || vec![port(80, 8080)];
    put(
        &store,
        pod("dual", &["10.0.0.5", "fd00::5"], &[(WEB, ports())]),
    );
    put(&store, pod("v6-only", &["fd00::6"], &[(WEB, ports())]));
    // A hostname-only endpoint (no address) is never chosen.
    put(&store, pod("no-address", &[], &[(WEB, ports())]));
    put_service(
        &store,
        web_service(&["10.96.0.10", "fd00:96::10"], vec![port(80, 0)]),
    );
    let v4: Vec<_> = (0..4).map(|_| endpoint(&store, "10.96.0.10:80")).collect();
    let v6: Vec<_> = (0..4)
        .map(|_| endpoint(&store, "[fd00:96::10]:80"))
        .collect();
    let addr_of = |picks: &[(String, SocketAddr)], name: &str| {
        picks
            .iter()
            .find(|(uid, _)| uid.ends_with(name))
            .map(|(_, a)| *a)
    };
    // The dual-stack endpoint answers in the destination's family; the IPv6-only one with
    // what it has.
    assert_eq!(addr_of(&v4, "/dual"), Some(sa("10.0.0.5:8080")));
    assert_eq!(addr_of(&v6, "/dual"), Some(sa("[fd00::5]:8080")));
    assert_eq!(addr_of(&v4, "/v6-only"), Some(sa("[fd00::6]:8080")));
    assert!(addr_of(&v4, "/no-address").is_none());
    assert!(addr_of(&v6, "/no-address").is_none());
}

#[test]
fn host_names_resolve_to_the_endpoint_port() {
    let store = WorkloadStore::new();
    // Port 80 is mapped by the endpoint (and the service: the endpoint wins); 443 by the
    // service; 9000 by nobody.
    let web = put(
        &store,
        pod(
            "web-0",
            &["10.0.0.5"],
            &[
                (WEB, vec![port(80, 8080), port(443, 0)]),
                (
                    "other/web.shop.svc.cluster.local",
                    vec![port(80, 7070), port(81, 8181)],
                ),
                ("shop/api.shop.svc.cluster.local", vec![port(80, 9090)]),
            ],
        ),
    );
    put_service(
        &store,
        web_service(
            &["10.96.0.10"],
            vec![
                port(80, 18080),
                port(443, 8443),
                port(9000, 0),
                port(15008, 15008),
            ],
        ),
    );
    let target = |host: &str, port: u16| {
        store
            .resolve_service_host(&web, host, port)
            .map(|t: ServiceHostTarget| (t.service, t.port))
    };
    let web_key = NamespacedHostname::parse(WEB).unwrap();
    let found = |service: &NamespacedHostname, port: u16| Some((service.clone(), port));
    // The service of the endpoint's own namespace is preferred over a same-named one
    // elsewhere; the host name is compared without regard to case.
    assert_eq!(
        target("web.shop.svc.cluster.local", 80),
        found(&web_key, 8080)
    );
    assert_eq!(
        target("WEB.shop.svc.Cluster.Local", 443),
        found(&web_key, 8443)
    );
    // Neither the endpoint nor the service names a port: none.
    assert_eq!(target("web.shop.svc.cluster.local", 9000), None);
    // A proxy port is mapped like any other; refusing it is the caller's concern.
    assert_eq!(
        target("web.shop.svc.cluster.local", 15008),
        found(&web_key, 15008)
    );
    // A port only the other namespace's service maps is not taken from it.
    assert_eq!(target("web.shop.svc.cluster.local", 81), None);
    // A service the store does not hold: the endpoint's own mapping still applies.
    let api = NamespacedHostname::new("shop", "api.shop.svc.cluster.local");
    assert_eq!(target("api.shop.svc.cluster.local", 80), found(&api, 9090));
    assert_eq!(target("api.shop.svc.cluster.local", 443), None);
    // A service this workload is not an endpoint of.
    assert_eq!(target("db.shop.svc.cluster.local", 80), None);
}
