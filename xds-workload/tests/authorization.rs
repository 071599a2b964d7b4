//! L4 authorization semantics, table-driven.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};

use meshwire_xds_workload::Identity;
use meshwire_xds_workload::authorization::{
    AuthorizationPolicy, ConnectionInfo, Decision, DenyReason, DryRunMatch, PolicyAction, evaluate,
};
use meshwire_xds_workload::pb::istio::security as spb;

use spb::string_match::MatchType;

fn exact(s: &str) -> spb::StringMatch {
    spb::StringMatch {
        match_type: Some(MatchType::Exact(s.into())),
    }
}
fn prefix(s: &str) -> spb::StringMatch {
    spb::StringMatch {
        match_type: Some(MatchType::Prefix(s.into())),
    }
}
fn suffix(s: &str) -> spb::StringMatch {
    spb::StringMatch {
        match_type: Some(MatchType::Suffix(s.into())),
    }
}
fn presence() -> spb::StringMatch {
    spb::StringMatch {
        match_type: Some(MatchType::Presence(())),
    }
}
fn unset() -> spb::StringMatch {
    spb::StringMatch { match_type: None }
}
fn net(s: &str) -> spb::Address {
    let (ip, len) = s.split_once('/').unwrap();
    let bytes = match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    spb::Address {
        address: bytes.into(),
        length: len.parse().unwrap(),
    }
}
fn sa(ns: &str, name: &str) -> spb::ServiceAccountMatch {
    spb::ServiceAccountMatch {
        namespace: ns.into(),
        service_account: name.into(),
    }
}

/// The connection used by the match table: from 10.1.2.3 as
/// spiffe://cluster.local/ns/frontend/sa/web to 10.9.0.5:8080.
fn conn() -> ConnectionInfo {
    ConnectionInfo::new(
        "10.1.2.3".parse().unwrap(),
        "10.9.0.5:8080".parse().unwrap(),
        Some(Identity::new("cluster.local", "frontend", "web")),
    )
}

fn plaintext() -> ConnectionInfo {
    let mut c = conn();
    c.peer = None;
    c
}

fn policy_with(action: spb::Action, rules: Vec<spb::Rule>) -> AuthorizationPolicy {
    AuthorizationPolicy::try_from(&spb::Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        scope: spb::Scope::Namespace as i32,
        action: action as i32,
        rules,
        ..Default::default()
    })
    .unwrap()
}

fn one_match(m: spb::Match) -> Vec<spb::Rule> {
    vec![spb::Rule {
        clauses: vec![spb::Clause { matches: vec![m] }],
    }]
}

fn matches(m: spb::Match, conn: &ConnectionInfo) -> bool {
    policy_with(spb::Action::Allow, one_match(m)).matches(conn)
}

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

fn port_match(port: u32) -> spb::Match {
    spb::Match {
        destination_ports: vec![port],
        ..Default::default()
    }
}

fn clause(ports: &[u32]) -> spb::Clause {
    spb::Clause {
        matches: ports.iter().map(|p| port_match(*p)).collect(),
    }
}

#[test]
fn rule_and_clause_structure() {
    let c = conn(); // port 8080
    let allow = |rules| policy_with(spb::Action::Allow, rules).matches(&c);
    // A policy with no rules never matches.
    assert!(!allow(vec![]));
    // A rule with no clauses matches everything.
    assert!(allow(vec![spb::Rule { clauses: vec![] }]));
    // A clause with no matches never matches.
    assert!(!allow(vec![spb::Rule {
        clauses: vec![spb::Clause { matches: vec![] }]
    }]));
    // Matches in a clause are OR-ed.
    assert!(allow(vec![spb::Rule {
        clauses: vec![clause(&[80, 8080])]
    }]));
    assert!(!allow(vec![spb::Rule {
        clauses: vec![clause(&[80, 443])]
    }]));
    // Clauses in a rule are AND-ed.
    assert!(allow(vec![spb::Rule {
        clauses: vec![clause(&[8080]), clause(&[80, 8080])]
    }]));
    assert!(!allow(vec![spb::Rule {
        clauses: vec![clause(&[8080]), clause(&[80])]
    }]));
    // Rules are OR-ed.
    assert!(allow(vec![
        spb::Rule {
            clauses: vec![clause(&[80])]
        },
        spb::Rule {
            clauses: vec![clause(&[8080])]
        },
    ]));
    assert!(!allow(vec![
        spb::Rule {
            clauses: vec![clause(&[80])]
        },
        spb::Rule {
            clauses: vec![clause(&[443])]
        },
    ]));
}

fn named(name: &str, action: spb::Action, dry_run: bool, port: Option<u32>) -> AuthorizationPolicy {
    let rules = match port {
        Some(p) => one_match(port_match(p)),
        None => vec![],
    };
    AuthorizationPolicy::try_from(&spb::Authorization {
        name: name.into(),
        namespace: "ns".into(),
        action: action as i32,
        dry_run,
        rules,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn evaluation_order_and_dry_run() {
    use spb::Action::{Allow, Deny};
    let c = conn(); // port 8080
    let deny = |key: &str| Decision::Deny(DenyReason::ExplicitDeny { policy: key.into() });
    let none_allowed = Decision::Deny(DenyReason::NoAllowMatched);
    type Case = (
        &'static str,
        Vec<AuthorizationPolicy>,
        Decision,
        Vec<&'static str>,
    );
    let cases: Vec<Case> = vec![
        ("no policies", vec![], Decision::Allow, vec![]),
        (
            "deny not matching",
            vec![named("d", Deny, false, Some(80))],
            Decision::Allow,
            vec![],
        ),
        (
            "deny matching",
            vec![named("d", Deny, false, Some(8080))],
            deny("ns/d"),
            vec![],
        ),
        (
            "deny without rules",
            vec![named("d", Deny, false, None)],
            Decision::Allow,
            vec![],
        ),
        (
            "allow matching",
            vec![named("a", Allow, false, Some(8080))],
            Decision::Allow,
            vec![],
        ),
        (
            "allow not matching",
            vec![named("a", Allow, false, Some(80))],
            none_allowed.clone(),
            vec![],
        ),
        (
            "allow without rules",
            vec![named("a", Allow, false, None)],
            none_allowed.clone(),
            vec![],
        ),
        (
            "one of several allows",
            vec![
                named("a1", Allow, false, Some(80)),
                named("a2", Allow, false, Some(8080)),
            ],
            Decision::Allow,
            vec![],
        ),
        (
            "deny before allow (allow listed first)",
            vec![
                named("a", Allow, false, Some(8080)),
                named("d", Deny, false, Some(8080)),
            ],
            deny("ns/d"),
            vec![],
        ),
        (
            "deny before allow (deny listed first)",
            vec![
                named("d", Deny, false, Some(8080)),
                named("a", Allow, false, Some(8080)),
            ],
            deny("ns/d"),
            vec![],
        ),
        (
            "non-matching deny then matching allow",
            vec![
                named("d", Deny, false, Some(80)),
                named("a", Allow, false, Some(8080)),
            ],
            Decision::Allow,
            vec![],
        ),
        (
            "dry-run deny matching",
            vec![named("d", Deny, true, Some(8080))],
            Decision::Allow,
            vec!["ns/d"],
        ),
        (
            "dry-run deny not matching",
            vec![named("d", Deny, true, Some(80))],
            Decision::Allow,
            vec![],
        ),
        (
            "dry-run allow does not make allow policies exist",
            vec![named("a", Allow, true, Some(80))],
            Decision::Allow,
            vec![],
        ),
        (
            "dry-run allow does not allow",
            vec![
                named("a", Allow, false, Some(80)),
                named("dry", Allow, true, Some(8080)),
            ],
            none_allowed.clone(),
            vec!["ns/dry"],
        ),
        (
            "dry-run deny does not override allow",
            vec![
                named("a", Allow, false, Some(8080)),
                named("dry", Deny, true, Some(8080)),
            ],
            Decision::Allow,
            vec!["ns/dry"],
        ),
    ];
    for (name, policies, expected, dry) in cases {
        let result = evaluate(&policies, &c);
        assert_eq!(result.decision, expected, "case: {name}");
        let reported: Vec<&str> = result
            .dry_run_matches
            .iter()
            .map(|m| m.policy.as_str())
            .collect();
        assert_eq!(reported, dry, "case: {name}");
    }
    // The reported dry-run match carries the action it would have taken.
    let result = evaluate(&[named("dry", Deny, true, Some(8080))], &c);
    assert!(matches!(
        result.dry_run_matches.as_slice(),
        [DryRunMatch {
            action: PolicyAction::Deny,
            ..
        }]
    ));
}

#[test]
fn deny_reasons_read_well() {
    assert_eq!(
        DenyReason::ExplicitDeny {
            policy: "ns/p".into()
        }
        .to_string(),
        "explicitly denied by: ns/p"
    );
    assert_eq!(
        DenyReason::NoAllowMatched.to_string(),
        "allow policies exist, but none allowed"
    );
}

#[test]
fn ipv6_connections() {
    let c = ConnectionInfo::new(
        "fd00::1".parse().unwrap(),
        SocketAddr::new("fd00::9".parse().unwrap(), 443),
        Some(Identity::new("td", "ns", "sa")),
    );
    assert!(matches(
        spb::Match {
            source_ips: vec![net("fd00::/64")],
            destination_ips: vec![net("fd00::9/128")],
            ..Default::default()
        },
        &c
    ));
    assert!(!matches(
        spb::Match {
            source_ips: vec![net("0.0.0.0/0")],
            ..Default::default()
        },
        &c
    ));
}
