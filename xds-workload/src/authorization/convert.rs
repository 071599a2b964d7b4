//! Generated `istio.security` messages to checked policies ([`TryFrom`]) and back
//! ([`From`]).
//!
//! Entries of a match that cannot be used (a `StringMatch` without a value, an address
//! with a bad length or prefix) are dropped on the way in; everything a policy holds is
//! written on the way out, so converting back gives an equal policy.

use ipnet::IpNet;

use super::{
    AuthorizationError, AuthorizationPolicy, PolicyAction, PolicyClause, PolicyMatch, PolicyRule,
    PolicyScope, ServiceAccountMatch, StringMatch,
};
use crate::pb::istio::security as pb;
use crate::workload::{ip_from_bytes, ip_to_bytes};

fn string_matches(values: &[pb::StringMatch]) -> Vec<StringMatch> {
    values
        .iter()
        .filter_map(|m| match &m.match_type {
            Some(pb::string_match::MatchType::Exact(s)) => Some(StringMatch::Exact(s.clone())),
            Some(pb::string_match::MatchType::Prefix(s)) => Some(StringMatch::Prefix(s.clone())),
            Some(pb::string_match::MatchType::Suffix(s)) => Some(StringMatch::Suffix(s.clone())),
            Some(pb::string_match::MatchType::Presence(_)) => Some(StringMatch::Presence),
            None => None,
        })
        .collect()
}

fn prefixes(values: &[pb::Address]) -> Vec<IpNet> {
    values
        .iter()
        .filter_map(|a| {
            let ip = ip_from_bytes("address", &a.address).ok()?;
            let len = u8::try_from(a.length).ok()?;
            IpNet::new(ip, len).ok()
        })
        .collect()
}

fn service_accounts(values: &[pb::ServiceAccountMatch]) -> Vec<ServiceAccountMatch> {
    values
        .iter()
        .map(|m| ServiceAccountMatch::new(&m.namespace, &m.service_account))
        .collect()
}

impl From<&pb::Match> for PolicyMatch {
    fn from(m: &pb::Match) -> Self {
        Self {
            namespaces: string_matches(&m.namespaces),
            not_namespaces: string_matches(&m.not_namespaces),
            principals: string_matches(&m.principals),
            not_principals: string_matches(&m.not_principals),
            source_ips: prefixes(&m.source_ips),
            not_source_ips: prefixes(&m.not_source_ips),
            destination_ips: prefixes(&m.destination_ips),
            not_destination_ips: prefixes(&m.not_destination_ips),
            destination_ports: m.destination_ports.clone(),
            not_destination_ports: m.not_destination_ports.clone(),
            service_accounts: service_accounts(&m.service_accounts),
            not_service_accounts: service_accounts(&m.not_service_accounts),
        }
    }
}

impl TryFrom<&pb::Authorization> for AuthorizationPolicy {
    type Error = AuthorizationError;

    fn try_from(a: &pb::Authorization) -> Result<Self, Self::Error> {
        let scope = match pb::Scope::try_from(a.scope) {
            Ok(pb::Scope::Global) => PolicyScope::Global,
            Ok(pb::Scope::Namespace) => PolicyScope::Namespace,
            Ok(pb::Scope::WorkloadSelector) => PolicyScope::WorkloadSelector,
            Err(_) => {
                return Err(AuthorizationError::UnknownEnumValue {
                    field: "scope",
                    value: a.scope,
                });
            }
        };
        let action = match pb::Action::try_from(a.action) {
            Ok(pb::Action::Allow) => PolicyAction::Allow,
            Ok(pb::Action::Deny) => PolicyAction::Deny,
            Err(_) => {
                return Err(AuthorizationError::UnknownEnumValue {
                    field: "action",
                    value: a.action,
                });
            }
        };
        let rules = a
            .rules
            .iter()
            .map(|r| PolicyRule {
                clauses: r
                    .clauses
                    .iter()
                    .map(|c| PolicyClause {
                        matches: c.matches.iter().map(PolicyMatch::from).collect(),
                    })
                    .collect(),
            })
            .collect();
        Ok(Self {
            name: a.name.clone(),
            namespace: a.namespace.clone(),
            scope,
            action,
            rules,
            dry_run: a.dry_run,
        })
    }
}

impl TryFrom<pb::Authorization> for AuthorizationPolicy {
    type Error = AuthorizationError;

    fn try_from(a: pb::Authorization) -> Result<Self, Self::Error> {
        Self::try_from(&a)
    }
}

fn string_matches_to_pb(values: &[StringMatch]) -> Vec<pb::StringMatch> {
    use pb::string_match::MatchType;
    values
        .iter()
        .map(|m| pb::StringMatch {
            match_type: Some(match m {
                StringMatch::Exact(s) => MatchType::Exact(s.clone()),
                StringMatch::Prefix(s) => MatchType::Prefix(s.clone()),
                StringMatch::Suffix(s) => MatchType::Suffix(s.clone()),
                StringMatch::Presence => MatchType::Presence(()),
            }),
        })
        .collect()
}

fn prefixes_to_pb(values: &[IpNet]) -> Vec<pb::Address> {
    values
        .iter()
        .map(|net| pb::Address {
            // The address as held (host bits included), so it reads back the same.
            address: ip_to_bytes(net.addr()),
            length: u32::from(net.prefix_len()),
        })
        .collect()
}

fn service_accounts_to_pb(values: &[ServiceAccountMatch]) -> Vec<pb::ServiceAccountMatch> {
    values
        .iter()
        .map(|m| pb::ServiceAccountMatch {
            namespace: m.namespace.clone(),
            service_account: m.service_account.clone(),
        })
        .collect()
}

impl From<&PolicyMatch> for pb::Match {
    fn from(m: &PolicyMatch) -> Self {
        Self {
            namespaces: string_matches_to_pb(&m.namespaces),
            not_namespaces: string_matches_to_pb(&m.not_namespaces),
            principals: string_matches_to_pb(&m.principals),
            not_principals: string_matches_to_pb(&m.not_principals),
            source_ips: prefixes_to_pb(&m.source_ips),
            not_source_ips: prefixes_to_pb(&m.not_source_ips),
            destination_ips: prefixes_to_pb(&m.destination_ips),
            not_destination_ips: prefixes_to_pb(&m.not_destination_ips),
            destination_ports: m.destination_ports.clone(),
            not_destination_ports: m.not_destination_ports.clone(),
            service_accounts: service_accounts_to_pb(&m.service_accounts),
            not_service_accounts: service_accounts_to_pb(&m.not_service_accounts),
            extensions: Vec::new(),
        }
    }
}

impl From<&AuthorizationPolicy> for pb::Authorization {
    fn from(p: &AuthorizationPolicy) -> Self {
        Self {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            scope: match p.scope {
                PolicyScope::Global => pb::Scope::Global,
                PolicyScope::Namespace => pb::Scope::Namespace,
                PolicyScope::WorkloadSelector => pb::Scope::WorkloadSelector,
            } as i32,
            action: match p.action {
                PolicyAction::Allow => pb::Action::Allow,
                PolicyAction::Deny => pb::Action::Deny,
            } as i32,
            rules: p
                .rules
                .iter()
                .map(|r| pb::Rule {
                    clauses: r
                        .clauses
                        .iter()
                        .map(|c| pb::Clause {
                            matches: c.matches.iter().map(pb::Match::from).collect(),
                        })
                        .collect(),
                })
                .collect(),
            dry_run: p.dry_run,
            extensions: Vec::new(),
        }
    }
}
