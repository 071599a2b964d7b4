//! L4 authorization: rules and clauses, evaluation order, dry-run, deny reasons and IPv6.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod authz_support;

use std::net::SocketAddr;

use meshwire_xds_workload::Identity;
use meshwire_xds_workload::authorization::{
    AuthorizationPolicy, ConnectionInfo, Decision, DenyReason, DryRunMatch, PolicyAction, evaluate,
};
use meshwire_xds_workload::pb::istio::security as spb;

use authz_support::{conn, matches, net, one_match, policy_with};

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
