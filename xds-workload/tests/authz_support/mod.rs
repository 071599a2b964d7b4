//! Builders of `istio.security` messages and the connections the authorization tests
//! evaluate.
#![allow(dead_code)]

use std::net::IpAddr;

use meshwire_xds_workload::Identity;
use meshwire_xds_workload::authorization::{AuthorizationPolicy, ConnectionInfo};
use meshwire_xds_workload::pb::istio::security as spb;

use spb::string_match::MatchType;

pub(crate) fn exact(s: &str) -> spb::StringMatch {
    spb::StringMatch {
        match_type: Some(MatchType::Exact(s.into())),
    }
}
pub(crate) fn prefix(s: &str) -> spb::StringMatch {
    spb::StringMatch {
        match_type: Some(MatchType::Prefix(s.into())),
    }
}
pub(crate) fn suffix(s: &str) -> spb::StringMatch {
    spb::StringMatch {
        match_type: Some(MatchType::Suffix(s.into())),
    }
}
pub(crate) fn presence() -> spb::StringMatch {
    spb::StringMatch {
        match_type: Some(MatchType::Presence(())),
    }
}
pub(crate) fn unset() -> spb::StringMatch {
    spb::StringMatch { match_type: None }
}
pub(crate) fn net(s: &str) -> spb::Address {
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
pub(crate) fn sa(ns: &str, name: &str) -> spb::ServiceAccountMatch {
    spb::ServiceAccountMatch {
        namespace: ns.into(),
        service_account: name.into(),
    }
}

/// The connection used by the match table: from 10.1.2.3 as
/// spiffe://cluster.local/ns/frontend/sa/web to 10.9.0.5:8080.
pub(crate) fn conn() -> ConnectionInfo {
    ConnectionInfo::new(
        "10.1.2.3".parse().unwrap(),
        "10.9.0.5:8080".parse().unwrap(),
        Some(Identity::new("cluster.local", "frontend", "web")),
    )
}

pub(crate) fn plaintext() -> ConnectionInfo {
    let mut c = conn();
    c.peer = None;
    c
}

pub(crate) fn policy_with(action: spb::Action, rules: Vec<spb::Rule>) -> AuthorizationPolicy {
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

pub(crate) fn one_match(m: spb::Match) -> Vec<spb::Rule> {
    vec![spb::Rule {
        clauses: vec![spb::Clause { matches: vec![m] }],
    }]
}

pub(crate) fn matches(m: spb::Match, conn: &ConnectionInfo) -> bool {
    policy_with(spb::Action::Allow, one_match(m)).matches(conn)
}
