//! The TryFrom boundary: defaults, per-resource errors, and lenient fields.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;

use proptest::prelude::*;
use prost::Message;

use meshwire_xds_workload::authorization::{
    AuthorizationError, AuthorizationPolicy, PolicyAction, PolicyScope, StringMatch,
};
use meshwire_xds_workload::pb::envoy::service::discovery::v3::Resource;
use meshwire_xds_workload::pb::istio::security as spb;
use meshwire_xds_workload::pb::istio::workload as pb;
use meshwire_xds_workload::resource::{ResourceError, decode_address};
use meshwire_xds_workload::workload::{
    AddressError, AppProtocol, GatewayDestination, HealthStatus, IpFamilies, LoadBalancingMode,
    LoadBalancingScope, NamespacedHostname, NetworkMode, TunnelProtocol, Visibility, WorkloadType,
};
use meshwire_xds_workload::{Address, Service, Workload};

fn workload_err(edit: impl FnOnce(&mut pb::Workload)) -> AddressError {
    let mut w = common::workload(1);
    edit(&mut w);
    Workload::try_from(&w).unwrap_err()
}

fn service() -> pb::Service {
    pb::Service {
        name: "web".into(),
        namespace: "ns".into(),
        hostname: "web.ns.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: vec![172, 16, 0, 1].into(),
            length: None,
        }],
        ports: vec![pb::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0,
        }],
        ..Default::default()
    }
}

fn service_err(edit: impl FnOnce(&mut pb::Service)) -> AddressError {
    let mut s = service();
    edit(&mut s);
    Service::try_from(&s).unwrap_err()
}

fn gateway(destination: Option<pb::gateway_address::Destination>) -> pb::GatewayAddress {
    pb::GatewayAddress {
        destination,
        hbone_mtls_port: 15008,
    }
}

#[test]
fn workload_defaults() {
    let w = Workload::try_from(&pb::Workload {
        uid: "u".into(),
        namespace: "ns".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(w.service_account, "default");
    assert_eq!(w.cluster_id, "Kubernetes");
    assert_eq!(w.capacity, 1);
    assert_eq!(w.protocol, TunnelProtocol::None);
    assert_eq!(w.status, HealthStatus::Healthy);
    assert_eq!(w.network_mode, NetworkMode::Standard);
    assert_eq!(
        w.identity().to_string(),
        "spiffe://cluster.local/ns/ns/sa/default"
    );
    assert!(w.addresses.is_empty());
    assert!(w.waypoint.is_none());
}

#[test]
fn workload_fields_carry_over() {
    let mut p = common::workload(3);
    p.trust_domain = "example.org".into();
    p.capacity = Some(0);
    p.addresses.push(
        "fd00::3"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec()
            .into(),
    );
    p.waypoint = Some(gateway(Some(pb::gateway_address::Destination::Address(
        pb::NetworkAddress {
            network: "n1".into(),
            address: vec![10, 9, 9, 9].into(),
            length: None,
        },
    ))));
    p.application_tunnel = Some(pb::ApplicationTunnel {
        protocol: pb::application_tunnel::Protocol::Proxy as i32,
        port: 0,
    });
    p.workload_type = pb::WorkloadType::Cronjob as i32;
    let w = Workload::try_from(&p).unwrap();
    assert_eq!(w.uid, common::workload_uid(3));
    assert_eq!(w.trust_domain, "example.org");
    assert_eq!(w.service_account, "sa-3");
    assert_eq!(w.capacity, 0);
    assert_eq!(w.protocol, TunnelProtocol::Hbone);
    assert_eq!(
        w.addresses,
        vec![
            IpAddr::V4(common::workload_ip(3)),
            "fd00::3".parse::<IpAddr>().unwrap()
        ]
    );
    assert_eq!(w.workload_type, WorkloadType::CronJob);
    assert_eq!(w.workload_type.as_str(), "cronjob");
    let wp = w.waypoint.unwrap();
    assert_eq!(wp.hbone_mtls_port, 15008);
    assert!(
        matches!(wp.destination, GatewayDestination::Address(a) if a.network == "n1" && a.address == IpAddr::from([10, 9, 9, 9]))
    );
    assert_eq!(w.application_tunnel.unwrap().port, 0);
    let key = NamespacedHostname::new("ns-3", "svc-3.ns-3.svc.cluster.local");
    assert_eq!(w.services[&key][0].target_port, 8080);
}

#[test]
fn workload_errors() {
    assert_eq!(
        workload_err(|w| w.addresses = vec![vec![1, 2, 3, 4, 5].into()]),
        AddressError::InvalidIpLength {
            field: "addresses",
            len: 5
        }
    );
    assert_eq!(
        workload_err(|w| w.addresses = vec![vec![].into()]),
        AddressError::InvalidIpLength {
            field: "addresses",
            len: 0
        }
    );
    assert_eq!(
        workload_err(|w| w.tunnel_protocol = pb::TunnelProtocol::LegacyIstioMtls as i32),
        AddressError::LegacyIstioMtls
    );
    assert_eq!(
        workload_err(|w| w.tunnel_protocol = 7),
        AddressError::UnknownEnumValue {
            field: "tunnel_protocol",
            value: 7
        }
    );
    assert_eq!(
        workload_err(|w| w.status = 2),
        AddressError::UnknownEnumValue {
            field: "status",
            value: 2
        }
    );
    assert_eq!(
        workload_err(|w| w.network_mode = -1),
        AddressError::UnknownEnumValue {
            field: "network_mode",
            value: -1
        }
    );
    assert_eq!(
        workload_err(|w| w.waypoint = Some(gateway(None))),
        AddressError::MissingGatewayDestination { field: "waypoint" }
    );
    assert_eq!(
        workload_err(|w| w.network_gateway = Some(gateway(None))),
        AddressError::MissingGatewayDestination {
            field: "network_gateway"
        }
    );
    assert_eq!(
        workload_err(|w| {
            w.network_gateway = Some(gateway(Some(pb::gateway_address::Destination::Address(
                pb::NetworkAddress {
                    address: vec![1, 2, 3].into(),
                    ..Default::default()
                },
            ))))
        }),
        AddressError::InvalidIpLength {
            field: "network_gateway",
            len: 3
        }
    );
    assert_eq!(
        workload_err(|w| {
            w.services
                .insert("no-slash".into(), pb::PortList::default());
        }),
        AddressError::InvalidServiceKey {
            key: "no-slash".into()
        }
    );
    assert_eq!(
        workload_err(|w| {
            w.application_tunnel = Some(pb::ApplicationTunnel {
                protocol: 5,
                port: 0,
            })
        }),
        AddressError::UnknownEnumValue {
            field: "application_tunnel.protocol",
            value: 5
        }
    );
    assert_eq!(
        workload_err(|w| {
            w.application_tunnel = Some(pb::ApplicationTunnel {
                protocol: 0,
                port: 70_000,
            })
        }),
        AddressError::InvalidPort {
            field: "application_tunnel.port",
            value: 70_000
        }
    );
    // Errors name the field in their text (this text is what a NACK carries).
    assert_eq!(
        AddressError::LegacyIstioMtls.to_string(),
        "tunnel_protocol: LEGACY_ISTIO_MTLS is not supported"
    );
}

#[test]
fn workload_lenient_fields() {
    let mut p = common::workload(1);
    p.workload_type = 42;
    p.services
        .values_mut()
        .for_each(|l| l.ports[0].app_protocol = 99);
    let w = Workload::try_from(&p).unwrap();
    assert_eq!(w.workload_type, WorkloadType::Deployment);
    assert!(
        w.services
            .values()
            .all(|ports| ports[0].app_protocol == AppProtocol::Unknown)
    );
}

#[test]
fn service_conversion() {
    let mut p = service();
    p.addresses.push(pb::NetworkAddress {
        network: "n2".into(),
        address: vec![10, 96, 0, 0].into(),
        length: Some(12),
    });
    p.addresses.push(pb::NetworkAddress {
        network: String::new(),
        address: vec![10, 1, 1, 1].into(),
        length: Some(32),
    });
    p.load_balancing = Some(pb::LoadBalancing {
        routing_preference: vec![
            pb::load_balancing::Scope::Network as i32,
            pb::load_balancing::Scope::Zone as i32,
        ],
        mode: pb::load_balancing::Mode::Strict as i32,
        health_policy: 0,
    });
    p.visibility = 17; // unknown: falls back to PUBLIC
    p.ip_families = pb::IpFamilies::Ipv4Only as i32;
    let s = Service::try_from(&p).unwrap();
    assert_eq!(s.key().to_string(), "ns/web.ns.svc.cluster.local");
    assert_eq!(s.vips.len(), 3);
    assert!(s.vips[0].is_host());
    assert!(!s.vips[1].is_host());
    assert_eq!(s.vips[1].prefix.to_string(), "10.96.0.0/12");
    assert!(s.vips[2].is_host());
    assert_eq!(s.visibility, Visibility::Public);
    assert_eq!(s.ip_families, IpFamilies::Ipv4Only);
    let lb = s.load_balancing.unwrap();
    assert_eq!(lb.mode, LoadBalancingMode::Strict);
    assert_eq!(
        lb.routing_preference,
        vec![LoadBalancingScope::Network, LoadBalancingScope::Zone]
    );
}

#[test]
fn service_errors() {
    assert_eq!(
        service_err(|s| s.addresses[0].address = vec![1].into()),
        AddressError::InvalidIpLength {
            field: "addresses",
            len: 1
        }
    );
    assert_eq!(
        service_err(|s| s.addresses[0].length = Some(33)),
        AddressError::InvalidPrefixLength {
            field: "addresses.length",
            addr: IpAddr::from([172, 16, 0, 1]),
            len: 33
        }
    );
    assert_eq!(
        service_err(|s| {
            s.load_balancing = Some(pb::LoadBalancing {
                routing_preference: vec![0],
                ..Default::default()
            })
        }),
        AddressError::UnspecifiedRoutingPreference
    );
    assert_eq!(
        service_err(|s| {
            s.load_balancing = Some(pb::LoadBalancing {
                mode: 9,
                ..Default::default()
            })
        }),
        AddressError::UnknownEnumValue {
            field: "load_balancing.mode",
            value: 9
        }
    );
    assert_eq!(
        service_err(|s| {
            s.load_balancing = Some(pb::LoadBalancing {
                health_policy: 9,
                ..Default::default()
            })
        }),
        AddressError::UnknownEnumValue {
            field: "load_balancing.health_policy",
            value: 9
        }
    );
    assert_eq!(
        service_err(|s| s.ip_families = 4),
        AddressError::UnknownEnumValue {
            field: "ip_families",
            value: 4
        }
    );
    assert_eq!(
        service_err(|s| s.ports[0].service_port = 65_536),
        AddressError::InvalidPort {
            field: "ports",
            value: 65_536
        }
    );
    assert_eq!(
        service_err(|s| {
            s.weighted_waypoints = vec![pb::WeightedWaypoint {
                destination: None,
                weight: 1,
            }]
        }),
        AddressError::MissingGatewayDestination {
            field: "weighted_waypoints"
        }
    );
    assert_eq!(
        service_err(|s| s.waypoint = Some(gateway(None))),
        AddressError::MissingGatewayDestination { field: "waypoint" }
    );
}

#[test]
fn address_and_resource_errors() {
    assert_eq!(
        Address::try_from(&pb::Address { r#type: None }).unwrap_err(),
        AddressError::MissingType
    );
    assert_eq!(
        AddressError::MissingType.to_string(),
        "unknown address type"
    );

    let empty = Resource {
        name: "x".into(),
        ..Default::default()
    };
    let err = decode_address(&empty).unwrap_err();
    assert_eq!(err, ResourceError::MissingPayload);
    assert_eq!(err.to_string(), "XDS payload without resource");

    let garbage = Resource {
        name: "x".into(),
        resource: Some(prost_types::Any {
            type_url: String::new(),
            value: vec![0x0a, 0x05, 0x01],
        }),
        ..Default::default()
    };
    assert!(matches!(
        decode_address(&garbage),
        Err(ResourceError::Decode(_))
    ));

    // The payload is decoded as the response type whatever the Any says.
    let ok = Resource {
        name: "x".into(),
        resource: Some(prost_types::Any {
            type_url: "type.googleapis.com/something.Else".into(),
            value: pb::Address {
                r#type: Some(pb::address::Type::Workload(common::workload(4))),
            }
            .encode_to_vec(),
        }),
        ..Default::default()
    };
    assert!(matches!(decode_address(&ok), Ok(Address::Workload(_))));
}

#[test]
fn authorization_conversion() {
    let addr = |b: Vec<u8>, len| spb::Address {
        address: b.into(),
        length: len,
    };
    let p = spb::Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        scope: spb::Scope::WorkloadSelector as i32,
        action: spb::Action::Deny as i32,
        dry_run: true,
        rules: vec![spb::Rule {
            clauses: vec![spb::Clause {
                matches: vec![spb::Match {
                    principals: vec![
                        spb::StringMatch { match_type: None },
                        spb::StringMatch {
                            match_type: Some(spb::string_match::MatchType::Suffix("/sa/x".into())),
                        },
                    ],
                    source_ips: vec![
                        addr(vec![10, 0, 0, 0], 8),
                        addr(vec![10, 0, 0], 8),     // bad length: dropped
                        addr(vec![10, 0, 0, 0], 33), // bad prefix: dropped
                        addr(vec![10, 0, 0, 0], 256 + 8), // does not fit: dropped
                        addr(vec![0; 16], 0),
                    ],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    let policy = AuthorizationPolicy::try_from(&p).unwrap();
    assert_eq!(policy.key(), "ns/p");
    assert_eq!(policy.scope, PolicyScope::WorkloadSelector);
    assert_eq!(policy.action, PolicyAction::Deny);
    assert!(policy.dry_run);
    let m = &policy.rules[0].clauses[0].matches[0];
    assert_eq!(m.principals, vec![StringMatch::Suffix("/sa/x".into())]);
    let ips: Vec<String> = m.source_ips.iter().map(ToString::to_string).collect();
    assert_eq!(ips, vec!["10.0.0.0/8", "::/0"]);

    let mut bad = p.clone();
    bad.scope = 3;
    assert_eq!(
        AuthorizationPolicy::try_from(&bad).unwrap_err(),
        AuthorizationError::UnknownEnumValue {
            field: "scope",
            value: 3
        }
    );
    let mut bad = p;
    bad.action = 2;
    assert_eq!(
        AuthorizationPolicy::try_from(&bad).unwrap_err(),
        AuthorizationError::UnknownEnumValue {
            field: "action",
            value: 2
        }
    );
}

#[test]
fn identity_parsing() {
    let id: meshwire_xds_workload::Identity = "spiffe://td/ns/a/sa/b".parse().unwrap();
    assert_eq!(id.principal(), "td/ns/a/sa/b");
    assert_eq!(id.to_string(), "spiffe://td/ns/a/sa/b");
    for bad in [
        "td/ns/a/sa/b",
        "spiffe://td/ns/a/sa",
        "spiffe://td/ns/a/sa/b/c",
        "spiffe://td/x/a/sa/b",
        "spiffe:///ns/a/sa/b",
    ] {
        assert!(
            bad.parse::<meshwire_xds_workload::Identity>().is_err(),
            "{bad}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = meshwire_xds_workload::resource::address_from_bytes(&bytes);
        let _ = meshwire_xds_workload::resource::authorization_from_bytes(&bytes);
    }

    #[test]
    fn mutated_encodings_never_panic(
        i in 0usize..1000,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = pb::Address {
            r#type: Some(pb::address::Type::Workload(common::workload(i))),
        }
        .encode_to_vec();
        for (at, value) in flips {
            let n = bytes.len();
            bytes[at % n] = value;
        }
        let _ = meshwire_xds_workload::resource::address_from_bytes(&bytes);
        let _ = meshwire_xds_workload::resource::authorization_from_bytes(&bytes);
    }
}
