//! The workloads file as serde reads it, and the check of the whole file that turns it into
//! a [`Cluster`], collecting every problem.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

use super::{
    Cluster, Destination, Namespace, Pod, Policy, PolicyAction, PolicyRule, PolicyScope, Source,
    WorkloadsError,
};

/// Parses and validates the YAML text of a workloads file.
pub(super) fn parse(text: &str) -> Result<Cluster, WorkloadsError> {
    let raw: RawFile =
        serde_saphyr::from_str(text).map_err(|e| WorkloadsError::Parse(e.to_string()))?;
    raw.validate()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    namespaces: Vec<RawNamespace>,
    #[serde(default)]
    pods: Vec<RawPod>,
    #[serde(default)]
    policies: Vec<RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamespace {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, LabelValue>,
}

/// Label values are strings in Kubernetes; unquoted YAML scalars (`true`, `3`) are taken as
/// their text.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LabelValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl LabelValue {
    fn into_string(self) -> String {
        match self {
            Self::Bool(b) => b.to_string(),
            Self::Int(i) => i.to_string(),
            Self::Float(x) => x.to_string(),
            Self::Str(s) => s,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPod {
    name: String,
    namespace: String,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    ips: Option<Vec<String>>,
    node: String,
    #[serde(default)]
    netns: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    namespace: String,
    action: PolicyAction,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    from: Vec<RawSource>,
    #[serde(default)]
    to: Vec<RawDestination>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSource {
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    not_principals: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    not_namespaces: Vec<String>,
    #[serde(default)]
    ip_blocks: Vec<String>,
    #[serde(default)]
    not_ip_blocks: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDestination {
    #[serde(default)]
    ports: Vec<u16>,
    #[serde(default)]
    not_ports: Vec<u16>,
}

/// A name usable as a Kubernetes object name and as a SPIFFE path segment.
fn check_name(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > 253 {
        return Err(format!("{what} {value:?} is longer than 253 characters"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!(
            "{what} {value:?} contains {c:?} (allowed: letters, digits, '-', '.', '_')"
        ));
    }
    if value == "." || value == ".." {
        return Err(format!("{what} {value:?} is not a valid name"));
    }
    Ok(())
}

fn parse_block(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is neither an IP address nor a CIDR block"))
}

impl RawFile {
    fn validate(self) -> Result<Cluster, WorkloadsError> {
        let mut problems = Vec::new();
        let mut namespaces = BTreeMap::new();

        for (i, ns) in self.namespaces.into_iter().enumerate() {
            let at = format!("namespaces[{i}]");
            if let Err(e) = check_name("name", &ns.name) {
                problems.push(format!("{at}: {e}"));
                continue;
            }
            let mut labels = BTreeMap::new();
            for (k, v) in ns.labels {
                if k.is_empty() {
                    problems.push(format!("{at} ({}): a label key is empty", ns.name));
                }
                labels.insert(k, v.into_string());
            }
            if namespaces.contains_key(&ns.name) {
                problems.push(format!("{at}: namespace {:?} is declared twice", ns.name));
                continue;
            }
            namespaces.insert(
                ns.name.clone(),
                Namespace {
                    name: ns.name,
                    labels,
                },
            );
        }

        let mut pods: Vec<Pod> = Vec::new();
        let mut uids = BTreeSet::new();
        let mut names = BTreeSet::new();
        let mut ip_owner: BTreeMap<IpAddr, String> = BTreeMap::new();
        for (i, p) in self.pods.into_iter().enumerate() {
            let at = format!("pods[{i}] ({}/{})", p.namespace, p.name);
            let before = problems.len();
            for (what, value) in [
                ("name", &p.name),
                ("namespace", &p.namespace),
                ("node", &p.node),
            ] {
                if let Err(e) = check_name(what, value) {
                    problems.push(format!("{at}: {e}"));
                }
            }
            let service_account = p.service_account.unwrap_or_else(|| "default".to_owned());
            if let Err(e) = check_name("serviceAccount", &service_account) {
                problems.push(format!("{at}: {e}"));
            }
            if !p.namespace.is_empty() && !namespaces.contains_key(&p.namespace) {
                problems.push(format!(
                    "{at}: namespace {:?} is not declared under `namespaces`",
                    p.namespace
                ));
            }
            let uid = p
                .uid
                .unwrap_or_else(|| format!("{}/{}", p.namespace, p.name));
            if uid.is_empty()
                || uid.len() > 128
                || uid.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                problems.push(format!(
                    "{at}: uid {uid:?} must be 1 to 128 visible characters"
                ));
            }
            let raw_ips = match (p.ip, p.ips) {
                (Some(_), Some(_)) => {
                    problems.push(format!("{at}: give either `ip` or `ips`, not both"));
                    Vec::new()
                }
                (Some(ip), None) => vec![ip],
                (None, Some(ips)) => ips,
                (None, None) => Vec::new(),
            };
            let mut ips = Vec::new();
            for raw in raw_ips {
                match raw.trim().parse::<IpAddr>() {
                    Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                    Ok(ip) => problems.push(format!("{at}: address {ip} is listed twice")),
                    Err(_) => problems.push(format!("{at}: {raw:?} is not an IP address")),
                }
            }
            if ips.is_empty() && problems.len() == before {
                problems.push(format!("{at}: has no address (set `ip` or `ips`)"));
            }
            if let Some(netns) = &p.netns
                && !netns.is_absolute()
            {
                problems.push(format!(
                    "{at}: netns path {} is not absolute",
                    netns.display()
                ));
            }
            if problems.len() != before {
                continue;
            }
            if !uids.insert(uid.clone()) {
                problems.push(format!("{at}: uid {uid:?} is used by another pod"));
                continue;
            }
            if !names.insert((p.namespace.clone(), p.name.clone())) {
                problems.push(format!("{at}: another pod has the same namespace and name"));
                continue;
            }
            for ip in &ips {
                let me = format!("{}/{}", p.namespace, p.name);
                if let Some(other) = ip_owner.insert(*ip, me) {
                    problems.push(format!("{at}: address {ip} is also used by pod {other}"));
                }
            }
            pods.push(Pod {
                name: p.name,
                namespace: p.namespace,
                service_account,
                uid,
                ips,
                node: p.node,
                netns: p.netns,
                labels: BTreeMap::new(),
                services: BTreeMap::new(),
            });
        }
        pods.sort_by(|a, b| a.uid.cmp(&b.uid));

        let mut policies = Vec::new();
        let mut policy_keys = BTreeSet::new();
        for (i, p) in self.policies.into_iter().enumerate() {
            let at = format!("policies[{i}] ({}/{})", p.namespace, p.name);
            let before = problems.len();
            for (what, value) in [("name", &p.name), ("namespace", &p.namespace)] {
                if let Err(e) = check_name(what, value) {
                    problems.push(format!("{at}: {e}"));
                }
            }
            if !p.namespace.is_empty() && !namespaces.contains_key(&p.namespace) {
                problems.push(format!(
                    "{at}: namespace {:?} is not declared under `namespaces`",
                    p.namespace
                ));
            }
            let mut rules = Vec::new();
            for (r, rule) in p.rules.into_iter().enumerate() {
                let mut from = Vec::new();
                for (s, src) in rule.from.into_iter().enumerate() {
                    let here = format!("{at}: rules[{r}].from[{s}]");
                    let mut blocks = |list: Vec<String>| -> Vec<IpNet> {
                        list.iter()
                            .filter_map(|b| match parse_block(b) {
                                Ok(n) => Some(n),
                                Err(e) => {
                                    problems.push(format!("{here}: {e}"));
                                    None
                                }
                            })
                            .collect()
                    };
                    let source = Source {
                        ip_blocks: blocks(src.ip_blocks),
                        not_ip_blocks: blocks(src.not_ip_blocks),
                        principals: src.principals,
                        not_principals: src.not_principals,
                        namespaces: src.namespaces,
                        not_namespaces: src.not_namespaces,
                        ..Source::default()
                    };
                    if source == Source::default() {
                        problems.push(format!("{here}: is empty (an empty source never matches)"));
                    }
                    for v in source
                        .principals
                        .iter()
                        .chain(&source.not_principals)
                        .chain(&source.namespaces)
                        .chain(&source.not_namespaces)
                    {
                        if v.is_empty() {
                            problems.push(format!("{here}: contains an empty string"));
                        } else if v.len() > 1 && v[1..v.len() - 1].contains('*') {
                            problems.push(format!(
                                "{here}: {v:?} may use '*' only as its first or last character"
                            ));
                        }
                    }
                    from.push(source);
                }
                let mut to = Vec::new();
                for (d, dst) in rule.to.into_iter().enumerate() {
                    let here = format!("{at}: rules[{r}].to[{d}]");
                    if dst.ports.is_empty() && dst.not_ports.is_empty() {
                        problems.push(format!(
                            "{here}: is empty (an empty destination never matches)"
                        ));
                    }
                    if dst.ports.iter().chain(&dst.not_ports).any(|p| *p == 0) {
                        problems.push(format!("{here}: port 0 is not a valid port"));
                    }
                    to.push(Destination {
                        ports: dst.ports,
                        not_ports: dst.not_ports,
                    });
                }
                rules.push(PolicyRule { from, to });
            }
            if problems.len() != before {
                continue;
            }
            if !policy_keys.insert((p.namespace.clone(), p.name.clone())) {
                problems.push(format!(
                    "{at}: another policy has the same namespace and name"
                ));
                continue;
            }
            policies.push(Policy {
                name: p.name,
                namespace: p.namespace,
                scope: PolicyScope::Namespace,
                action: p.action,
                rules,
            });
        }
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        if problems.is_empty() {
            // The file has no ServiceAccount objects: its pods' accounts stand for them.
            let service_accounts = pods
                .iter()
                .map(|p| (p.namespace.clone(), p.service_account.clone()))
                .collect();
            Ok(Cluster {
                namespaces,
                pods,
                policies,
                services: Vec::new(),
                service_accounts,
            })
        } else {
            Err(WorkloadsError::Invalid(problems))
        }
    }
}
