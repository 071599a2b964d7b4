//! Strict mutual TLS as an L4 policy, in the shape istiod gives ztunnel for a
//! `PeerAuthentication` in mode `STRICT`: a `DENY` policy named
//! [`STRICT_POLICY_NAME`] whose one rule matches every connection without a peer identity
//! (`not_principals: [presence]`). Plaintext connections to the workloads it applies to are
//! denied; mutual-TLS ones pass it.
//!
//! [`AuthorizationPolicy::requires_mtls`] recognizes the shape (under any name), so a proxy
//! can also tell that a *source* workload must not send plain TCP
//! ([`WorkloadStore::requires_mtls`](crate::WorkloadStore::requires_mtls)).

use super::{
    AuthorizationPolicy, PolicyAction, PolicyClause, PolicyMatch, PolicyRule, PolicyScope,
    StringMatch,
};

/// Name istiod gives the policy converted from a `STRICT` `PeerAuthentication` (the `_`
/// cannot appear in a Kubernetes name, so it never clashes with a user's policy).
pub const STRICT_POLICY_NAME: &str = "istio_converted_static_strict";

/// The entry that matches connections without a peer identity.
fn no_identity() -> PolicyMatch {
    PolicyMatch {
        not_principals: vec![StringMatch::Presence],
        ..PolicyMatch::default()
    }
}

/// Whether `m` matches exactly the connections without a peer identity: only
/// `not_principals` or `not_namespaces` are populated, and each holds `presence`.
fn is_no_identity(m: &PolicyMatch) -> bool {
    let only_identity_negations = m.namespaces.is_empty()
        && m.principals.is_empty()
        && m.source_ips.is_empty()
        && m.not_source_ips.is_empty()
        && m.destination_ips.is_empty()
        && m.not_destination_ips.is_empty()
        && m.destination_ports.is_empty()
        && m.not_destination_ports.is_empty()
        && m.service_accounts.is_empty()
        && m.not_service_accounts.is_empty();
    let presence = |list: &[StringMatch]| list.contains(&StringMatch::Presence);
    only_identity_negations && (presence(&m.not_principals) || presence(&m.not_namespaces))
}

impl AuthorizationPolicy {
    /// The strict mutual-TLS policy of `namespace`: scope [`PolicyScope::Namespace`],
    /// [`PolicyAction::Deny`], one rule denying every connection without a peer identity.
    ///
    /// ```
    /// use meshwire_xds_workload::Identity;
    /// use meshwire_xds_workload::authorization::{AuthorizationPolicy, ConnectionInfo, evaluate};
    ///
    /// let strict = AuthorizationPolicy::strict_mtls("shop");
    /// assert_eq!(strict.key(), "shop/istio_converted_static_strict");
    /// let dst = "10.0.0.2:8080".parse().unwrap();
    /// let plaintext = ConnectionInfo::new("10.0.0.1".parse().unwrap(), dst, None);
    /// assert!(!evaluate([&strict], &plaintext).decision.is_allowed());
    /// let peer = Identity::new("cluster.local", "shop", "web");
    /// let mtls = ConnectionInfo::new("10.0.0.1".parse().unwrap(), dst, Some(peer));
    /// assert!(evaluate([&strict], &mtls).decision.is_allowed());
    /// ```
    pub fn strict_mtls(namespace: impl Into<String>) -> Self {
        let mut policy = Self::new(
            namespace,
            STRICT_POLICY_NAME,
            PolicyScope::Namespace,
            PolicyAction::Deny,
        );
        policy.rules = vec![PolicyRule::new(vec![PolicyClause::new(
            vec![no_identity()],
        )])];
        policy
    }

    /// Whether the policy denies every connection without a peer identity, whatever its
    /// name: an enforced (not dry-run) `DENY` with a rule whose every clause holds an entry
    /// that matches exactly the connections without identity (`not_principals` or
    /// `not_namespaces` holding `presence`, nothing else). [`strict_mtls`](Self::strict_mtls)
    /// builds one.
    pub fn requires_mtls(&self) -> bool {
        self.action == PolicyAction::Deny
            && !self.dry_run
            && self.rules.iter().any(|rule| {
                rule.clauses
                    .iter()
                    .all(|clause| clause.matches.iter().any(is_no_identity))
            })
    }
}
