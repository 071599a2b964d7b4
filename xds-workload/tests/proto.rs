//! Wire-level checks of the generated types: field numbers as in the specification, and
//! clean decoding of fields this schema does not know.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};

use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint};

use meshwire_xds_workload::pb::envoy::service::discovery::v3 as xds;
use meshwire_xds_workload::pb::google::rpc;
use meshwire_xds_workload::pb::istio::security as spb;
use meshwire_xds_workload::pb::istio::workload as pb;

/// Top-level field numbers present in an encoded message.
fn tags(mut bytes: &[u8]) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    while bytes.has_remaining() {
        let (tag, wire) = decode_key(&mut bytes).unwrap();
        out.insert(tag);
        match wire {
            WireType::Varint => {
                decode_varint(&mut bytes).unwrap();
            }
            WireType::SixtyFourBit => bytes.advance(8),
            WireType::ThirtyTwoBit => bytes.advance(4),
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut bytes).unwrap()).unwrap();
                bytes.advance(len);
            }
            other => panic!("unexpected wire type {other:?}"),
        }
    }
    out
}

fn set(tags: &[u32]) -> BTreeSet<u32> {
    tags.iter().copied().collect()
}

fn gateway() -> pb::GatewayAddress {
    pb::GatewayAddress {
        destination: Some(pb::gateway_address::Destination::Hostname(
            pb::NamespacedHostname {
                namespace: "ns".into(),
                hostname: "wp".into(),
            },
        )),
        hbone_mtls_port: 15008,
    }
}

fn extension() -> pb::Extension {
    pb::Extension {
        name: "x".into(),
        config: Some(prost_types::Any::default()),
    }
}

fn full_workload() -> pb::Workload {
    let mut services = HashMap::new();
    services.insert(
        "ns/svc".to_owned(),
        pb::PortList {
            ports: vec![pb::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: pb::AppProtocol::Http2 as i32,
            }],
        },
    );
    pb::Workload {
        uid: "u".into(),
        name: "n".into(),
        namespace: "ns".into(),
        addresses: vec![vec![10, 0, 0, 1].into()],
        hostname: "h".into(),
        network: "net".into(),
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        trust_domain: "td".into(),
        service_account: "sa".into(),
        waypoint: Some(gateway()),
        network_gateway: Some(gateway()),
        node: "node".into(),
        canonical_name: "cn".into(),
        canonical_revision: "cr".into(),
        workload_type: pb::WorkloadType::Pod as i32,
        workload_name: "wn".into(),
        native_tunnel: true,
        application_tunnel: Some(pb::ApplicationTunnel {
            protocol: pb::application_tunnel::Protocol::Proxy as i32,
            port: 9,
        }),
        services,
        authorization_policies: vec!["ns/p".into()],
        status: pb::WorkloadStatus::Unhealthy as i32,
        cluster_id: "c".into(),
        locality: Some(pb::Locality {
            region: "r".into(),
            zone: "z".into(),
            subzone: "s".into(),
        }),
        network_mode: pb::NetworkMode::HostNetwork as i32,
        extensions: vec![extension()],
        capacity: Some(3),
    }
}

#[test]
fn workload_field_numbers() {
    let expected = set(&[
        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26,
        27,
    ]);
    assert_eq!(tags(&full_workload().encode_to_vec()), expected);
    let port = pb::Port {
        service_port: 1,
        target_port: 2,
        app_protocol: 3,
    };
    assert_eq!(tags(&port.encode_to_vec()), set(&[1, 2, 3]));
    let tunnel = pb::ApplicationTunnel {
        protocol: 1,
        port: 2,
    };
    assert_eq!(tags(&tunnel.encode_to_vec()), set(&[1, 2]));
    let locality = pb::Locality {
        region: "r".into(),
        zone: "z".into(),
        subzone: "s".into(),
    };
    assert_eq!(tags(&locality.encode_to_vec()), set(&[1, 2, 3]));
    assert_eq!(tags(&extension().encode_to_vec()), set(&[1, 2]));
}

#[test]
fn service_and_gateway_field_numbers() {
    let service = pb::Service {
        name: "n".into(),
        namespace: "ns".into(),
        hostname: "h".into(),
        addresses: vec![pb::NetworkAddress {
            network: "net".into(),
            address: vec![10, 0, 0, 1].into(),
            length: Some(24),
        }],
        ports: vec![pb::Port::default()],
        subject_alt_names: vec!["spiffe://td/ns/a/sa/b".into()],
        waypoint: Some(gateway()),
        load_balancing: Some(pb::LoadBalancing {
            routing_preference: vec![pb::load_balancing::Scope::Zone as i32],
            mode: pb::load_balancing::Mode::Failover as i32,
            health_policy: pb::load_balancing::HealthPolicy::AllowAll as i32,
        }),
        ip_families: pb::IpFamilies::Dual as i32,
        extensions: vec![extension()],
        canonical: true,
        ingress_use_waypoint: true,
        weighted_waypoints: vec![pb::WeightedWaypoint {
            destination: Some(gateway()),
            weight: 5,
        }],
        visibility: pb::service::Visibility::Namespace as i32,
    };
    assert_eq!(
        tags(&service.encode_to_vec()),
        set(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
    );
    let lb = service.load_balancing.clone().unwrap();
    assert_eq!(tags(&lb.encode_to_vec()), set(&[1, 2, 3]));
    let address = service.addresses[0].clone();
    assert_eq!(tags(&address.encode_to_vec()), set(&[1, 2, 3]));
    // `length` has explicit presence: zero is still sent.
    let zero = pb::NetworkAddress {
        length: Some(0),
        ..Default::default()
    };
    assert_eq!(tags(&zero.encode_to_vec()), set(&[3]));
    assert_eq!(tags(&gateway().encode_to_vec()), set(&[1, 3]));
    let by_address = pb::GatewayAddress {
        destination: Some(pb::gateway_address::Destination::Address(address)),
        hbone_mtls_port: 0,
    };
    assert_eq!(tags(&by_address.encode_to_vec()), set(&[2]));
    let weighted = service.weighted_waypoints[0].clone();
    assert_eq!(tags(&weighted.encode_to_vec()), set(&[1, 2]));
    let nh = pb::NamespacedHostname {
        namespace: "a".into(),
        hostname: "b".into(),
    };
    assert_eq!(tags(&nh.encode_to_vec()), set(&[1, 2]));

    let workload = pb::Address {
        r#type: Some(pb::address::Type::Workload(pb::Workload::default())),
    };
    assert_eq!(tags(&workload.encode_to_vec()), set(&[1]));
    let svc = pb::Address {
        r#type: Some(pb::address::Type::Service(pb::Service::default())),
    };
    assert_eq!(tags(&svc.encode_to_vec()), set(&[2]));
}

#[test]
fn enum_numbers() {
    assert_eq!(pb::TunnelProtocol::LegacyIstioMtls as i32, 2);
    assert_eq!(pb::load_balancing::Scope::Network as i32, 6);
    assert_eq!(pb::load_balancing::Mode::Passthrough as i32, 3);
    assert_eq!(pb::AppProtocol::Tls as i32, 5);
    assert_eq!(pb::WorkloadType::Job as i32, 3);
    assert_eq!(pb::IpFamilies::Dual as i32, 3);
    assert_eq!(spb::Scope::WorkloadSelector as i32, 2);
    assert_eq!(spb::Action::Deny as i32, 1);
}

#[test]
fn authorization_field_numbers() {
    let sm = |s: &str| spb::StringMatch {
        match_type: Some(spb::string_match::MatchType::Exact(s.into())),
    };
    let addr = spb::Address {
        address: vec![10, 0, 0, 0].into(),
        length: 8,
    };
    let sa = spb::ServiceAccountMatch {
        namespace: "ns".into(),
        service_account: "sa".into(),
    };
    let m = spb::Match {
        namespaces: vec![sm("a")],
        not_namespaces: vec![sm("b")],
        principals: vec![sm("c")],
        not_principals: vec![sm("d")],
        source_ips: vec![addr.clone()],
        not_source_ips: vec![addr.clone()],
        destination_ips: vec![addr.clone()],
        not_destination_ips: vec![addr.clone()],
        destination_ports: vec![80],
        not_destination_ports: vec![81],
        service_accounts: vec![sa.clone()],
        not_service_accounts: vec![sa.clone()],
        extensions: vec![extension()],
    };
    assert_eq!(tags(&m.encode_to_vec()), (1..=13).collect());
    let clause = spb::Clause {
        matches: vec![m.clone()],
    };
    assert_eq!(tags(&clause.encode_to_vec()), set(&[2]));
    let rule = spb::Rule {
        clauses: vec![clause],
    };
    assert_eq!(tags(&rule.encode_to_vec()), set(&[1]));
    let policy = spb::Authorization {
        name: "n".into(),
        namespace: "ns".into(),
        scope: spb::Scope::Namespace as i32,
        action: spb::Action::Deny as i32,
        rules: vec![rule],
        dry_run: true,
        extensions: vec![extension()],
    };
    assert_eq!(tags(&policy.encode_to_vec()), (1..=7).collect());
    assert_eq!(tags(&addr.encode_to_vec()), set(&[1, 2]));
    assert_eq!(tags(&sa.encode_to_vec()), set(&[1, 2]));
    for (value, tag) in [
        (spb::string_match::MatchType::Exact("x".into()), 1),
        (spb::string_match::MatchType::Prefix("x".into()), 2),
        (spb::string_match::MatchType::Suffix("x".into()), 3),
        (spb::string_match::MatchType::Presence(()), 4),
    ] {
        let m = spb::StringMatch {
            match_type: Some(value),
        };
        assert_eq!(tags(&m.encode_to_vec()), set(&[tag]));
    }
}

#[test]
fn discovery_field_numbers() {
    let node = xds::Node {
        id: "id".into(),
        cluster: "c".into(),
        metadata: Some(prost_types::Struct::default()),
        build_version: "b".into(),
    };
    assert_eq!(tags(&node.encode_to_vec()), set(&[1, 2, 3, 5]));
    let mut versions = HashMap::new();
    versions.insert("a".to_owned(), "1".to_owned());
    let request = xds::DeltaDiscoveryRequest {
        node: Some(node),
        type_url: "t".into(),
        resource_names_subscribe: vec!["a".into()],
        resource_names_unsubscribe: vec!["b".into()],
        initial_resource_versions: versions,
        response_nonce: "n".into(),
        error_detail: Some(rpc::Status {
            code: 3,
            message: "m".into(),
            details: vec![prost_types::Any::default()],
        }),
    };
    assert_eq!(tags(&request.encode_to_vec()), (1..=7).collect());
    assert_eq!(
        tags(&request.error_detail.clone().unwrap().encode_to_vec()),
        set(&[1, 2, 3])
    );
    let resource = xds::Resource {
        version: "v".into(),
        resource: Some(prost_types::Any::default()),
        name: "n".into(),
        aliases: vec!["a".into()],
        ttl: Some(prost_types::Duration::default()),
        cache_control: Some(xds::resource::CacheControl { do_not_cache: true }),
    };
    assert_eq!(tags(&resource.encode_to_vec()), set(&[1, 2, 3, 4, 6, 7]));
    let response = xds::DeltaDiscoveryResponse {
        system_version_info: "v".into(),
        resources: vec![resource],
        type_url: "t".into(),
        nonce: "n".into(),
        removed_resources: vec!["r".into()],
    };
    assert_eq!(tags(&response.encode_to_vec()), set(&[1, 2, 4, 5, 6]));
}

#[test]
fn type_names_are_the_xds_type_urls() {
    use prost::Name;
    assert_eq!(
        pb::Address::type_url(),
        meshwire_xds_workload::resource::ADDRESS_TYPE_URL
    );
    assert_eq!(
        spb::Authorization::type_url(),
        meshwire_xds_workload::resource::AUTHORIZATION_TYPE_URL
    );
    let any = prost_types::Any::from_msg(&spb::Authorization::default()).unwrap();
    assert_eq!(
        any.type_url,
        meshwire_xds_workload::resource::AUTHORIZATION_TYPE_URL
    );
}

/// Appends unknown fields of every wire type.
fn append_unknown(buf: &mut Vec<u8>, tags: &[u32]) {
    for &tag in tags {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(300, buf);
        encode_key(tag + 1000, WireType::LengthDelimited, buf);
        encode_varint(5, buf);
        buf.put_slice(b"hello");
        encode_key(tag + 2000, WireType::SixtyFourBit, buf);
        buf.put_u64_le(7);
        encode_key(tag + 3000, WireType::ThirtyTwoBit, buf);
        buf.put_u32_le(9);
    }
}

/// Encodes `inner` as field `tag` of an outer message, with unknown fields inside it.
fn nested_with_unknown(tag: u32, inner: &impl Message, unknown: &[u32], out: &mut Vec<u8>) {
    let mut body = inner.encode_to_vec();
    append_unknown(&mut body, unknown);
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(body.len() as u64, out);
    out.extend_from_slice(&body);
}

#[test]
fn unknown_fields_decode_cleanly() {
    let workload = full_workload();

    // Unknown fields at the top level of a Workload (including reserved tag 15), before
    // and after the known ones.
    let mut bytes = Vec::new();
    append_unknown(&mut bytes, &[15, 99, 536_860_000]);
    bytes.extend(workload.encode_to_vec());
    append_unknown(&mut bytes, &[28, 100]);
    assert_eq!(pb::Workload::decode(Bytes::from(bytes)).unwrap(), workload);

    // Unknown fields inside nested messages: a newer gateway and a newer locality.
    let mut base = workload.clone();
    base.waypoint = None;
    base.locality = None;
    let mut bytes = base.encode_to_vec();
    nested_with_unknown(8, &gateway(), &[4, 5, 77], &mut bytes);
    nested_with_unknown(24, workload.locality.as_ref().unwrap(), &[4], &mut bytes);
    let mut expected = base;
    expected.waypoint = Some(gateway());
    expected.locality = workload.locality.clone();
    assert_eq!(pb::Workload::decode(Bytes::from(bytes)).unwrap(), expected);

    // An Address wrapping a Workload with unknown fields, and an unknown oneof member.
    let mut bytes = Vec::new();
    nested_with_unknown(1, &workload, &[50, 51], &mut bytes);
    append_unknown(&mut bytes, &[3]);
    let address = pb::Address::decode(Bytes::from(bytes.clone())).unwrap();
    assert_eq!(
        address.r#type,
        Some(pb::address::Type::Workload(workload.clone()))
    );
    // ... and the domain conversion accepts it.
    let domain = meshwire_xds_workload::resource::address_from_bytes(&bytes).unwrap();
    assert!(matches!(domain, meshwire_xds_workload::Address::Workload(w) if w.uid == "u"));

    // A discovery response with the unused tag 3 and newer fields.
    let response = xds::DeltaDiscoveryResponse {
        system_version_info: "1".into(),
        type_url: meshwire_xds_workload::resource::ADDRESS_TYPE_URL.into(),
        nonce: "n".into(),
        resources: vec![xds::Resource {
            name: "u".into(),
            version: "v".into(),
            resource: Some(prost_types::Any {
                type_url: meshwire_xds_workload::resource::ADDRESS_TYPE_URL.into(),
                value: bytes,
            }),
            ..Default::default()
        }],
        removed_resources: vec![],
    };
    let mut encoded = response.encode_to_vec();
    append_unknown(&mut encoded, &[3, 7, 8]);
    assert_eq!(
        xds::DeltaDiscoveryResponse::decode(Bytes::from(encoded)).unwrap(),
        response
    );

    // A policy with newer fields at every level.
    let policy = spb::Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        rules: vec![spb::Rule {
            clauses: vec![spb::Clause {
                matches: vec![spb::Match {
                    destination_ports: vec![80],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    let mut bytes = policy.encode_to_vec();
    append_unknown(&mut bytes, &[8, 9, 20]);
    let decoded = meshwire_xds_workload::resource::authorization_from_bytes(&bytes).unwrap();
    assert_eq!(decoded.rules.len(), 1);
    assert_eq!(
        decoded.rules[0].clauses[0].matches[0].destination_ports,
        vec![80]
    );
}

#[test]
fn unknown_enum_numbers_are_preserved_as_numbers() {
    let mut bytes = Vec::new();
    encode_key(14, WireType::Varint, &mut bytes); // Service.visibility
    encode_varint(9, &mut bytes);
    let service = pb::Service::decode(Bytes::from(bytes)).unwrap();
    assert_eq!(service.visibility, 9);
}
