//! `security.istio.io/v1` `AuthorizationPolicy` objects to the cluster model's L4
//! [`Policy`], as istiod converts them for ztunnel.
//!
//! * No selector (or an empty `matchLabels`): the policy's namespace; in the root namespace,
//!   the whole mesh. A selector: the pods of the namespace with those labels. Policies with
//!   `targetRef(s)` are for waypoints and are skipped, as are actions other than `ALLOW` and
//!   `DENY`.
//! * Each rule: one clause of its `to` operations (`ports`, `notPorts`), one of its `from`
//!   sources (`principals`, `namespaces`, `ipBlocks`, `serviceAccounts` and their `not`
//!   forms); both must match.
//! * Fields an L4 proxy cannot check (HTTP `hosts`/`methods`/`paths`, `requestPrincipals`,
//!   `remoteIpBlocks`, `when` conditions) and values that do not parse (a port that is not a
//!   number, an IP block that is not an address) make the result more restrictive, never
//!   less: an `ALLOW` rule holding one is dropped (it allows nothing); in a `DENY` rule the
//!   clause holding one is dropped (the rule denies more). A spec that cannot be read at all
//!   becomes an `ALLOW` without rules or a `DENY` of everything.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::workloads::{Destination, Policy, PolicyAction, PolicyRule, PolicyScope, Source};

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Spec {
    selector: Option<Selector>,
    target_ref: Option<Value>,
    target_refs: Option<Vec<Value>>,
    action: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Selector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Rule {
    from: Vec<From>,
    to: Vec<To>,
    when: Vec<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct From {
    source: RawSource,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct RawSource {
    principals: Vec<String>,
    not_principals: Vec<String>,
    namespaces: Vec<String>,
    not_namespaces: Vec<String>,
    ip_blocks: Vec<String>,
    not_ip_blocks: Vec<String>,
    service_accounts: Vec<String>,
    not_service_accounts: Vec<String>,
    request_principals: Vec<String>,
    not_request_principals: Vec<String>,
    remote_ip_blocks: Vec<String>,
    not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct To {
    operation: Operation,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Operation {
    ports: Vec<PortValue>,
    not_ports: Vec<PortValue>,
    hosts: Vec<String>,
    not_hosts: Vec<String>,
    methods: Vec<String>,
    not_methods: Vec<String>,
    paths: Vec<String>,
    not_paths: Vec<String>,
}

/// Ports are strings in the API; numbers are taken too.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortValue {
    Text(String),
    Number(i64),
}

impl PortValue {
    fn parse(&self) -> Option<u16> {
        match self {
            Self::Text(s) => s.trim().parse::<u16>().ok(),
            Self::Number(n) => u16::try_from(*n).ok(),
        }
        .filter(|p| *p != 0)
    }
}

/// What a converted policy comes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Converted {
    /// The policy, and what was dropped or could not be read (empty when nothing).
    Policy(Policy, Vec<String>),
    /// Not for this proxy (waypoint policy, unsupported action).
    Skipped(String),
}

/// Converts the `spec` of the policy `namespace/name`; `root_namespace` holds mesh-wide
/// policies.
pub(crate) fn convert(
    namespace: &str,
    name: &str,
    spec: &Value,
    root_namespace: &str,
) -> Converted {
    let parsed = Spec::deserialize(spec);
    let action_text = match &parsed {
        Ok(s) => s.action.clone(),
        Err(_) => spec
            .get("action")
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    let action = match action_text.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => PolicyAction::Allow,
        "DENY" => PolicyAction::Deny,
        other => return Converted::Skipped(format!("action {other} is not enforced at L4")),
    };
    let spec = match parsed {
        Ok(spec) => spec,
        Err(e) => {
            // Fail closed: an ALLOW that allows nothing, a DENY of everything, over the
            // whole namespace.
            let rules = match action {
                PolicyAction::Allow => Vec::new(),
                PolicyAction::Deny => vec![PolicyRule::default()],
            };
            let policy = Policy {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                scope: namespace_scope(namespace, root_namespace),
                action,
                rules,
            };
            return Converted::Policy(policy, vec![format!("spec cannot be read: {e}")]);
        }
    };
    if spec.target_ref.is_some() || spec.target_refs.as_ref().is_some_and(|t| !t.is_empty()) {
        return Converted::Skipped("it targets a waypoint (targetRef)".to_owned());
    }
    let scope = match spec.selector {
        Some(s) if !s.match_labels.is_empty() => PolicyScope::Selector(s.match_labels),
        _ => namespace_scope(namespace, root_namespace),
    };
    let mut notes = Vec::new();
    let mut rules = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let mut dropped = Vec::new();
        let converted = convert_rule(rule, namespace, &mut dropped);
        if dropped.is_empty() {
            rules.push(converted.into_rule());
            continue;
        }
        let dropped = dropped.join(", ");
        match action {
            PolicyAction::Allow => {
                notes.push(format!(
                    "rules[{i}] is dropped (it allows nothing at L4): {dropped}"
                ));
            }
            PolicyAction::Deny => {
                notes.push(format!(
                    "rules[{i}] is enforced without what L4 cannot check (it denies more): {dropped}"
                ));
                rules.push(converted.into_rule());
            }
        }
    }
    Converted::Policy(
        Policy {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            scope,
            action,
            rules,
        },
        notes,
    )
}

fn namespace_scope(namespace: &str, root_namespace: &str) -> PolicyScope {
    if namespace == root_namespace {
        PolicyScope::Global
    } else {
        PolicyScope::Namespace
    }
}

/// A rule's clauses; `None` for a clause that matches everything (it was absent, or one of
/// its entries had nothing L4 can check left).
struct Clauses {
    from: Option<Vec<Source>>,
    to: Option<Vec<Destination>>,
}

impl Clauses {
    fn into_rule(self) -> PolicyRule {
        PolicyRule {
            from: self.from.unwrap_or_default(),
            to: self.to.unwrap_or_default(),
        }
    }
}

/// Converts one rule, naming in `dropped` every field or value left out.
fn convert_rule(rule: &Rule, namespace: &str, dropped: &mut Vec<String>) -> Clauses {
    if !rule.when.is_empty() {
        dropped.push("when".to_owned());
    }
    let mut to = Some(Vec::new());
    for (j, entry) in rule.to.iter().enumerate() {
        let op = &entry.operation;
        for (field, values) in [
            ("hosts", &op.hosts),
            ("notHosts", &op.not_hosts),
            ("methods", &op.methods),
            ("notMethods", &op.not_methods),
            ("paths", &op.paths),
            ("notPaths", &op.not_paths),
        ] {
            if !values.is_empty() {
                dropped.push(format!("to[{j}].operation.{field}"));
            }
        }
        // A value that does not parse voids its whole field (the entry matches more).
        let mut ports = |field: &str, values: &[PortValue]| -> Vec<u16> {
            let parsed: Option<Vec<u16>> = values.iter().map(PortValue::parse).collect();
            parsed.unwrap_or_else(|| {
                dropped.push(format!("to[{j}].operation.{field} {values:?}"));
                Vec::new()
            })
        };
        let d = Destination {
            ports: ports("ports", &op.ports),
            not_ports: ports("notPorts", &op.not_ports),
        };
        if d.ports.is_empty() && d.not_ports.is_empty() {
            // Nothing left to check: this entry, and so the clause, matches everything.
            if !dropped.iter().any(|d| d.starts_with(&format!("to[{j}]"))) {
                dropped.push(format!("to[{j}] (empty)"));
            }
            to = None;
        } else if let Some(list) = &mut to {
            list.push(d);
        }
    }
    let mut from = Some(Vec::new());
    for (j, entry) in rule.from.iter().enumerate() {
        let s = &entry.source;
        for (field, values) in [
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ] {
            if !values.is_empty() {
                dropped.push(format!("from[{j}].source.{field}"));
            }
        }
        let mut blocks = |field: &str, values: &[String]| -> Vec<IpNet> {
            let parsed: Option<Vec<IpNet>> = values.iter().map(|v| parse_block(v)).collect();
            parsed.unwrap_or_else(|| {
                dropped.push(format!("from[{j}].source.{field} {values:?}"));
                Vec::new()
            })
        };
        let ip_blocks = blocks("ipBlocks", &s.ip_blocks);
        let not_ip_blocks = blocks("notIpBlocks", &s.not_ip_blocks);
        let accounts = |values: &[String]| -> Vec<(String, String)> {
            values
                .iter()
                .map(|v| match v.split_once('/') {
                    Some((ns, sa)) => (ns.to_owned(), sa.to_owned()),
                    None => (namespace.to_owned(), v.clone()),
                })
                .collect()
        };
        let source = Source {
            principals: s.principals.clone(),
            not_principals: s.not_principals.clone(),
            namespaces: s.namespaces.clone(),
            not_namespaces: s.not_namespaces.clone(),
            ip_blocks,
            not_ip_blocks,
            service_accounts: accounts(&s.service_accounts),
            not_service_accounts: accounts(&s.not_service_accounts),
        };
        if source == Source::default() {
            if !dropped.iter().any(|d| d.starts_with(&format!("from[{j}]"))) {
                dropped.push(format!("from[{j}] (empty)"));
            }
            from = None;
        } else if let Some(list) = &mut from {
            list.push(source);
        }
    }
    Clauses { from, to }
}

/// An IP block: a CIDR or a single address.
fn parse_block(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests;
