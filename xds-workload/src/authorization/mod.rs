//! L4 authorization: checked [`AuthorizationPolicy`] domain types and their evaluation
//! ([`evaluate`]; deny first, then allow).
//!
//! Policies are built from the generated [`pb::istio::security::Authorization`] at one
//! [`TryFrom`] boundary that fails with an [`AuthorizationError`], and convert back with
//! [`From`] (`From<&AuthorizationPolicy> for pb::istio::security::Authorization`).
//!
//! Strict mutual TLS (a `PeerAuthentication` in mode `STRICT`) is an ordinary `DENY` policy
//! in the shape istiod sends ztunnel, [`AuthorizationPolicy::strict_mtls`]; it denies every
//! plaintext connection, and [`AuthorizationPolicy::requires_mtls`] recognizes it.
//!
//! ```
//! use meshwire_xds_workload::authorization::{
//!     AuthorizationPolicy, ConnectionInfo, PolicyAction, PolicyClause, PolicyMatch,
//!     PolicyRule, PolicyScope, StringMatch, evaluate,
//! };
//! use meshwire_xds_workload::Identity;
//!
//! // Deny everything from namespace "untrusted".
//! let mut from_untrusted = PolicyMatch::default();
//! from_untrusted.namespaces = vec![StringMatch::Exact("untrusted".into())];
//! let mut policy =
//!     AuthorizationPolicy::new("shop", "no-untrusted", PolicyScope::Namespace, PolicyAction::Deny);
//! policy.rules = vec![PolicyRule::new(vec![PolicyClause::new(vec![from_untrusted])])];
//!
//! let peer = Identity::new("cluster.local", "untrusted", "default");
//! let conn = ConnectionInfo::new(
//!     "10.0.0.1".parse().unwrap(),
//!     "10.0.0.2:8080".parse().unwrap(),
//!     Some(peer),
//! );
//! assert!(!evaluate([&policy], &conn).decision.is_allowed());
//! ```
//!
//! [`pb::istio::security::Authorization`]: crate::pb::istio::security::Authorization

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::workload::Identity;

mod convert;
mod strict;

pub use strict::STRICT_POLICY_NAME;

/// Why an `istio.security.Authorization` resource was rejected at the [`TryFrom`] boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizationError {
    /// An enum field held a number this schema does not define.
    #[error("{field}: unknown enum value {value}")]
    UnknownEnumValue {
        /// The proto field.
        field: &'static str,
        /// The number found.
        value: i32,
    },
}

/// Which workloads a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PolicyScope {
    /// Every workload in the mesh.
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// Only workloads that list the policy in `authorization_policies`.
    WorkloadSelector,
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PolicyAction {
    /// Allow the connection.
    Allow,
    /// Deny the connection.
    Deny,
}

/// A string matcher.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StringMatch {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Any non-empty value.
    Presence,
}

impl StringMatch {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            Self::Presence => !value.is_empty(),
        }
    }
}

/// A (namespace, service account) pair; the trust domain is not compared.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ServiceAccountMatch {
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

impl ServiceAccountMatch {
    /// A (namespace, service account) pair.
    pub fn new(namespace: impl Into<String>, service_account: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }
}

/// One set of conditions; see [`evaluate`] for how the fields combine.
///
/// Entries of the wire message that cannot be used (a `StringMatch` without a value, an
/// address with a bad length or prefix) are dropped at conversion.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PolicyMatch {
    /// Peer namespace is one of.
    pub namespaces: Vec<StringMatch>,
    /// Peer namespace is none of.
    pub not_namespaces: Vec<StringMatch>,
    /// Peer principal (`<td>/ns/<ns>/sa/<sa>`) is one of.
    pub principals: Vec<StringMatch>,
    /// Peer principal is none of.
    pub not_principals: Vec<StringMatch>,
    /// Source IP is in one of.
    pub source_ips: Vec<IpNet>,
    /// Source IP is in none of.
    pub not_source_ips: Vec<IpNet>,
    /// Destination IP is in one of.
    pub destination_ips: Vec<IpNet>,
    /// Destination IP is in none of.
    pub not_destination_ips: Vec<IpNet>,
    /// Destination port is one of.
    pub destination_ports: Vec<u32>,
    /// Destination port is none of.
    pub not_destination_ports: Vec<u32>,
    /// Peer (namespace, service account) is one of.
    pub service_accounts: Vec<ServiceAccountMatch>,
    /// Peer (namespace, service account) is none of.
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

/// Checks one field family: `None` when both lists are empty (the family is not
/// populated), otherwise whether it passes.
fn family<T>(positive: &[T], negative: &[T], hit: impl Fn(&T) -> bool) -> Option<bool> {
    if positive.is_empty() && negative.is_empty() {
        return None;
    }
    let pos = positive.is_empty() || positive.iter().any(&hit);
    let neg = !negative.iter().any(&hit);
    Some(pos && neg)
}

impl PolicyMatch {
    /// Whether this entry matches `conn`. An entry with no populated field never matches.
    pub fn matches(&self, conn: &ConnectionInfo) -> bool {
        let id = conn.peer.as_ref();
        let principal = id.map(Identity::principal);
        let families = [
            family(&self.namespaces, &self.not_namespaces, |m| {
                id.is_some_and(|id| m.matches(&id.namespace))
            }),
            family(&self.principals, &self.not_principals, |m| {
                principal.as_deref().is_some_and(|p| m.matches(p))
            }),
            family(&self.source_ips, &self.not_source_ips, |net| {
                net.contains(&conn.source_ip)
            }),
            family(&self.destination_ips, &self.not_destination_ips, |net| {
                net.contains(&conn.destination.ip())
            }),
            family(
                &self.destination_ports,
                &self.not_destination_ports,
                |port| *port == u32::from(conn.destination.port()),
            ),
            family(&self.service_accounts, &self.not_service_accounts, |sa| {
                id.is_some_and(|id| {
                    id.namespace == sa.namespace && id.service_account == sa.service_account
                })
            }),
        ];
        let mut populated = false;
        for result in families.into_iter().flatten() {
            if !result {
                return false;
            }
            populated = true;
        }
        populated
    }
}

/// A clause: matches when any of its entries matches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PolicyClause {
    /// Entries, OR-ed.
    pub matches: Vec<PolicyMatch>,
}

impl PolicyClause {
    /// A clause of these entries.
    pub fn new(matches: Vec<PolicyMatch>) -> Self {
        Self { matches }
    }
}

/// A rule: matches when all of its clauses match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PolicyRule {
    /// Clauses, AND-ed.
    pub clauses: Vec<PolicyClause>,
}

impl PolicyRule {
    /// A rule of these clauses.
    pub fn new(clauses: Vec<PolicyClause>) -> Self {
        Self { clauses }
    }

    /// Whether the rule matches `conn`.
    pub fn matches(&self, conn: &ConnectionInfo) -> bool {
        self.clauses
            .iter()
            .all(|clause| clause.matches.iter().any(|m| m.matches(conn)))
    }
}

/// An L4 authorization policy, built from the generated
/// [`Authorization`](crate::pb::istio::security::Authorization) with [`TryFrom`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthorizationPolicy {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Scope.
    pub scope: PolicyScope,
    /// Action.
    pub action: PolicyAction,
    /// Rules, OR-ed.
    pub rules: Vec<PolicyRule>,
    /// Evaluated for reporting only; never changes a decision.
    pub dry_run: bool,
}

impl AuthorizationPolicy {
    /// A policy `namespace/name` without rules (so it matches nothing until rules are
    /// added), not in dry-run.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        scope: PolicyScope,
        action: PolicyAction,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            scope,
            action,
            rules: Vec::new(),
            dry_run: false,
        }
    }

    /// The policy's key, `namespace/name`, as used in `Workload.authorization_policies`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the policy matches `conn`: any rule matches. A policy without rules never
    /// matches.
    pub fn matches(&self, conn: &ConnectionInfo) -> bool {
        self.rules.iter().any(|rule| rule.matches(conn))
    }
}

/// The attributes of a connection that authorization looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// Source IP of the connection.
    pub source_ip: IpAddr,
    /// Destination address; the port is the resolved target port on the workload.
    pub destination: SocketAddr,
    /// The peer's verified identity; `None` for plaintext connections.
    pub peer: Option<Identity>,
}

impl ConnectionInfo {
    /// Connection attributes.
    pub fn new(source_ip: IpAddr, destination: SocketAddr, peer: Option<Identity>) -> Self {
        Self {
            source_ip,
            destination,
            peer,
        }
    }
}

/// Why a connection was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DenyReason {
    /// A DENY policy matched.
    ExplicitDeny {
        /// Key (`namespace/name`) of the policy.
        policy: String,
    },
    /// ALLOW policies exist but none matched.
    NoAllowMatched,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ExplicitDeny { policy } => write!(f, "explicitly denied by: {policy}"),
            Self::NoAllowMatched => f.write_str("allow policies exist, but none allowed"),
        }
    }
}

/// The decision for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The connection may proceed.
    Allow,
    /// The connection must be refused.
    Deny(DenyReason),
}

impl Decision {
    /// Whether the decision is [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow)
    }
}

/// A dry-run policy that matched a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DryRunMatch {
    /// Key (`namespace/name`) of the policy.
    pub policy: String,
    /// What the policy would have done.
    pub action: PolicyAction,
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthorizationResult {
    /// The decision.
    pub decision: Decision,
    /// Dry-run policies that matched (for logging; they do not affect the decision).
    pub dry_run_matches: Vec<DryRunMatch>,
}

/// Evaluates `policies` for `conn`: deny first, then allow.
///
/// # Semantics
///
/// For a connection to a destination workload, the applicable policies are evaluated in
/// this order:
///
/// 1. any matching DENY policy (not dry-run) denies the connection;
/// 2. otherwise, if there is no ALLOW policy (not dry-run), the connection is allowed;
/// 3. otherwise any matching ALLOW policy allows it;
/// 4. otherwise it is denied.
///
/// Dry-run policies never change the decision; the ones that match are reported in
/// [`AuthorizationResult::dry_run_matches`].
///
/// A policy matches when **any** of its rules matches (zero rules: never). A rule matches
/// when **all** of its clauses match (zero clauses: always). A clause matches when **any**
/// of its [`PolicyMatch`] entries matches (zero entries: never). An entry with no populated
/// field never matches; otherwise every populated field family must pass: a positive list
/// passes when any element matches, a negative list passes when no element matches.
///
/// Identity attributes come from the peer's SPIFFE identity: the principal is the SPIFFE ID
/// without `spiffe://`, the namespace is its namespace part, and a service-account match
/// compares namespace and service account but ignores the trust domain. Without a peer
/// identity, no identity attribute matches anything (so positive identity lists fail and
/// negative ones pass).
pub fn evaluate<'a>(
    policies: impl IntoIterator<Item = &'a AuthorizationPolicy>,
    conn: &ConnectionInfo,
) -> AuthorizationResult {
    let mut dry_run_matches = Vec::new();
    let mut allows = Vec::new();
    let mut denied_by = None;
    for policy in policies {
        if policy.dry_run {
            if policy.matches(conn) {
                dry_run_matches.push(DryRunMatch {
                    policy: policy.key(),
                    action: policy.action,
                });
            }
            continue;
        }
        match policy.action {
            PolicyAction::Deny => {
                if denied_by.is_none() && policy.matches(conn) {
                    denied_by = Some(policy.key());
                }
            }
            PolicyAction::Allow => allows.push(policy),
        }
    }
    let decision = if let Some(policy) = denied_by {
        Decision::Deny(DenyReason::ExplicitDeny { policy })
    } else if allows.is_empty() || allows.iter().any(|p| p.matches(conn)) {
        Decision::Allow
    } else {
        Decision::Deny(DenyReason::NoAllowMatched)
    };
    for m in &dry_run_matches {
        tracing::debug!(policy = %m.policy, action = ?m.action, "dry-run authorization policy matched");
    }
    AuthorizationResult {
        decision,
        dry_run_matches,
    }
}
