//! L4 authorization: every match field, with and without a peer identity, table-driven.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod authz_support;

use meshwire_xds_workload::pb::istio::security as spb;

use authz_support::{conn, exact, matches, net, plaintext, prefix, presence, sa, suffix, unset};

#[test]
fn every_match_field() {
    type Case = (&'static str, spb::Match, bool);
    let m = spb::Match::default;
    let cases: Vec<Case> = vec![
        // namespaces / not_namespaces (namespace of the peer identity)
        (
            "ns exact hit",
            spb::Match {
                namespaces: vec![exact("frontend")],
                ..m()
            },
            true,
        ),
        (
            "ns exact miss",
            spb::Match {
                namespaces: vec![exact("backend")],
                ..m()
            },
            false,
        ),
        (
            "ns any of",
            spb::Match {
                namespaces: vec![exact("a"), prefix("front")],
                ..m()
            },
            true,
        ),
        (
            "ns suffix",
            spb::Match {
                namespaces: vec![suffix("end")],
                ..m()
            },
            true,
        ),
        (
            "ns presence",
            spb::Match {
                namespaces: vec![presence()],
                ..m()
            },
            true,
        ),
        (
            "not ns hit",
            spb::Match {
                not_namespaces: vec![exact("frontend")],
                ..m()
            },
            false,
        ),
        (
            "not ns miss",
            spb::Match {
                not_namespaces: vec![exact("backend")],
                ..m()
            },
            true,
        ),
        (
            "not ns one of",
            spb::Match {
                not_namespaces: vec![exact("x"), prefix("fr")],
                ..m()
            },
            false,
        ),
        (
            "ns and not ns",
            spb::Match {
                namespaces: vec![prefix("f")],
                not_namespaces: vec![exact("frontend")],
                ..m()
            },
            false,
        ),
        // principals / not_principals (SPIFFE ID without spiffe://)
        (
            "principal exact",
            spb::Match {
                principals: vec![exact("cluster.local/ns/frontend/sa/web")],
                ..m()
            },
            true,
        ),
        (
            "principal with scheme never matches",
            spb::Match {
                principals: vec![exact("spiffe://cluster.local/ns/frontend/sa/web")],
                ..m()
            },
            false,
        ),
        (
            "principal prefix",
            spb::Match {
                principals: vec![prefix("cluster.local/ns/frontend/")],
                ..m()
            },
            true,
        ),
        (
            "principal suffix",
            spb::Match {
                principals: vec![suffix("/sa/web")],
                ..m()
            },
            true,
        ),
        (
            "principal suffix miss",
            spb::Match {
                principals: vec![suffix("/sa/api")],
                ..m()
            },
            false,
        ),
        (
            "principal presence",
            spb::Match {
                principals: vec![presence()],
                ..m()
            },
            true,
        ),
        (
            "not principal hit",
            spb::Match {
                not_principals: vec![suffix("/sa/web")],
                ..m()
            },
            false,
        ),
        (
            "not principal miss",
            spb::Match {
                not_principals: vec![suffix("/sa/api")],
                ..m()
            },
            true,
        ),
        // source_ips / not_source_ips
        (
            "src in",
            spb::Match {
                source_ips: vec![net("10.1.0.0/16")],
                ..m()
            },
            true,
        ),
        (
            "src exact",
            spb::Match {
                source_ips: vec![net("10.1.2.3/32")],
                ..m()
            },
            true,
        ),
        (
            "src out",
            spb::Match {
                source_ips: vec![net("10.2.0.0/16")],
                ..m()
            },
            false,
        ),
        (
            "src any of",
            spb::Match {
                source_ips: vec![net("10.2.0.0/16"), net("0.0.0.0/0")],
                ..m()
            },
            true,
        ),
        (
            "src v6 never matches v4",
            spb::Match {
                source_ips: vec![net("::/0")],
                ..m()
            },
            false,
        ),
        (
            "not src in",
            spb::Match {
                not_source_ips: vec![net("10.1.2.0/24")],
                ..m()
            },
            false,
        ),
        (
            "not src out",
            spb::Match {
                not_source_ips: vec![net("10.2.0.0/16")],
                ..m()
            },
            true,
        ),
        // destination_ips / not_destination_ips
        (
            "dst in",
            spb::Match {
                destination_ips: vec![net("10.9.0.0/24")],
                ..m()
            },
            true,
        ),
        (
            "dst out",
            spb::Match {
                destination_ips: vec![net("10.1.2.3/32")],
                ..m()
            },
            false,
        ),
        (
            "not dst in",
            spb::Match {
                not_destination_ips: vec![net("10.9.0.5/32")],
                ..m()
            },
            false,
        ),
        (
            "not dst out",
            spb::Match {
                not_destination_ips: vec![net("10.1.2.3/32")],
                ..m()
            },
            true,
        ),
        // destination_ports / not_destination_ports
        (
            "port hit",
            spb::Match {
                destination_ports: vec![80, 8080],
                ..m()
            },
            true,
        ),
        (
            "port miss",
            spb::Match {
                destination_ports: vec![80],
                ..m()
            },
            false,
        ),
        (
            "not port hit",
            spb::Match {
                not_destination_ports: vec![8080],
                ..m()
            },
            false,
        ),
        (
            "not port miss",
            spb::Match {
                not_destination_ports: vec![80, 443],
                ..m()
            },
            true,
        ),
        // service_accounts / not_service_accounts (trust domain ignored)
        (
            "sa hit",
            spb::Match {
                service_accounts: vec![sa("frontend", "web")],
                ..m()
            },
            true,
        ),
        (
            "sa wrong ns",
            spb::Match {
                service_accounts: vec![sa("backend", "web")],
                ..m()
            },
            false,
        ),
        (
            "sa wrong name",
            spb::Match {
                service_accounts: vec![sa("frontend", "api")],
                ..m()
            },
            false,
        ),
        (
            "sa any of",
            spb::Match {
                service_accounts: vec![sa("x", "y"), sa("frontend", "web")],
                ..m()
            },
            true,
        ),
        (
            "not sa hit",
            spb::Match {
                not_service_accounts: vec![sa("frontend", "web")],
                ..m()
            },
            false,
        ),
        (
            "not sa miss",
            spb::Match {
                not_service_accounts: vec![sa("frontend", "api")],
                ..m()
            },
            true,
        ),
        // families are AND-ed
        (
            "all families pass",
            spb::Match {
                namespaces: vec![exact("frontend")],
                principals: vec![suffix("/sa/web")],
                source_ips: vec![net("10.0.0.0/8")],
                destination_ips: vec![net("10.9.0.0/16")],
                destination_ports: vec![8080],
                service_accounts: vec![sa("frontend", "web")],
                not_namespaces: vec![exact("kube-system")],
                not_principals: vec![prefix("other/")],
                not_source_ips: vec![net("192.168.0.0/16")],
                not_destination_ips: vec![net("10.9.1.0/24")],
                not_destination_ports: vec![22],
                not_service_accounts: vec![sa("frontend", "admin")],
                ..m()
            },
            true,
        ),
        (
            "one family fails",
            spb::Match {
                namespaces: vec![exact("frontend")],
                destination_ports: vec![9090],
                ..m()
            },
            false,
        ),
        // empty and emptied matches never match
        ("empty match", m(), false),
        (
            "only unusable string matches",
            spb::Match {
                principals: vec![unset()],
                ..m()
            },
            false,
        ),
        (
            "only unusable addresses",
            spb::Match {
                source_ips: vec![net("10.0.0.0/40")],
                ..m()
            },
            false,
        ),
        (
            "unusable entries dropped, rest applies",
            spb::Match {
                namespaces: vec![unset(), exact("frontend")],
                ..m()
            },
            true,
        ),
    ];
    let c = conn();
    for (name, m, expected) in cases {
        assert_eq!(matches(m, &c), expected, "case: {name}");
    }
}

#[test]
fn without_peer_identity() {
    let c = plaintext();
    let m = spb::Match::default;
    let cases: Vec<(&str, spb::Match, bool)> = vec![
        (
            "ns presence fails",
            spb::Match {
                namespaces: vec![presence()],
                ..m()
            },
            false,
        ),
        (
            "principal presence fails",
            spb::Match {
                principals: vec![presence()],
                ..m()
            },
            false,
        ),
        (
            "principal prefix empty fails",
            spb::Match {
                principals: vec![prefix("")],
                ..m()
            },
            false,
        ),
        (
            "sa fails",
            spb::Match {
                service_accounts: vec![sa("frontend", "web")],
                ..m()
            },
            false,
        ),
        (
            "not ns passes",
            spb::Match {
                not_namespaces: vec![exact("frontend")],
                ..m()
            },
            true,
        ),
        (
            "not principal passes",
            spb::Match {
                not_principals: vec![presence()],
                ..m()
            },
            true,
        ),
        (
            "not sa passes",
            spb::Match {
                not_service_accounts: vec![sa("frontend", "web")],
                ..m()
            },
            true,
        ),
        (
            "ip still matches",
            spb::Match {
                source_ips: vec![net("10.1.2.3/32")],
                ..m()
            },
            true,
        ),
        (
            "port still matches",
            spb::Match {
                destination_ports: vec![8080],
                ..m()
            },
            true,
        ),
    ];
    for (name, m, expected) in cases {
        assert_eq!(matches(m, &c), expected, "case: {name}");
    }
}
