//! The cluster-wide workloads file: namespaces with labels, pods, authorization policies.
//!
//! The file is parsed into raw serde types, then checked as a whole into a [`Cluster`]; every
//! problem found is reported at once, each naming the entry it is about.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

/// A validated workloads file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Cluster {
    /// Namespaces by name.
    pub(crate) namespaces: BTreeMap<String, Namespace>,
    /// Pods, sorted by uid.
    pub(crate) pods: Vec<Pod>,
    /// Authorization policies, sorted by (namespace, name).
    pub(crate) policies: Vec<Policy>,
}

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Namespace {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pod {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) service_account: String,
    /// Kubernetes pod uid (ZDS uid and xDS resource name).
    pub(crate) uid: String,
    pub(crate) ips: Vec<IpAddr>,
    pub(crate) node: String,
    /// Network namespace path, needed only on the pod's own node.
    pub(crate) netns: Option<PathBuf>,
}

/// An L4 authorization policy scoped to one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) action: PolicyAction,
    pub(crate) rules: Vec<PolicyRule>,
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PolicyAction {
    Allow,
    Deny,
}

/// One rule: matches when any `from` entry matches and any `to` entry matches (an empty list
/// matches everything).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct PolicyRule {
    pub(crate) from: Vec<Source>,
    pub(crate) to: Vec<Destination>,
}

/// Source conditions of a rule; every populated field must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Source {
    pub(crate) principals: Vec<String>,
    pub(crate) not_principals: Vec<String>,
    pub(crate) namespaces: Vec<String>,
    pub(crate) not_namespaces: Vec<String>,
    pub(crate) ip_blocks: Vec<IpNet>,
    pub(crate) not_ip_blocks: Vec<IpNet>,
}

/// Destination conditions of a rule; every populated field must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Destination {
    pub(crate) ports: Vec<u16>,
    pub(crate) not_ports: Vec<u16>,
}

impl Cluster {
    /// Whether `namespace` carries `label_key: "true"`.
    pub(crate) fn namespace_enrolled(&self, namespace: &str, label_key: &str) -> bool {
        self.namespaces
            .get(namespace)
            .and_then(|ns| ns.labels.get(label_key))
            .is_some_and(|v| v == "true")
    }

    /// Parses and validates the YAML text of a workloads file.
    pub(crate) fn from_yaml(text: &str) -> Result<Self, WorkloadsError> {
        let raw: RawFile =
            serde_saphyr::from_str(text).map_err(|e| WorkloadsError::Parse(e.to_string()))?;
        raw.validate()
    }
}

/// Why a workloads file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkloadsError {
    /// The text is not YAML of the expected shape.
    Parse(String),
    /// The content is inconsistent; one entry per problem.
    Invalid(Vec<String>),
}

impl fmt::Display for WorkloadsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parse(e) => write!(f, "the workloads file is not valid: {e}"),
            Self::Invalid(problems) => {
                write!(f, "the workloads file has {} problem(s): ", problems.len())?;
                for (i, p) in problems.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    f.write_str(p)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for WorkloadsError {}

// ---- raw serde model -------------------------------------------------------------------------

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
                action: p.action,
                rules,
            });
        }
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        if problems.is_empty() {
            Ok(Cluster {
                namespaces,
                pods,
                policies,
            })
        } else {
            Err(WorkloadsError::Invalid(problems))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
namespaces:
  - name: shop
    labels: { io.cilium/mtls-enabled: "true" }
  - name: legacy
    labels: {}
pods:
  - name: client-1
    namespace: shop
    serviceAccount: client
    uid: 8d2f-1
    ip: 10.10.1.2
    node: node-1
    netns: /var/run/netns/mw-p1
  - name: server-1
    namespace: shop
    ips: [10.10.2.2, "fd00::2:2"]
    node: node-2
    netns: /var/run/netns/mw-p2
  - name: old-1
    namespace: legacy
    ip: 10.10.1.3
    node: node-1
    netns: /var/run/netns/mw-p3
policies:
  - name: deny-intruder
    namespace: shop
    action: deny
    rules:
      - from:
          - principals: ["cluster.local/ns/shop/sa/intruder"]
"#;

    fn problems(text: &str) -> Vec<String> {
        match Cluster::from_yaml(text) {
            Err(WorkloadsError::Invalid(p)) => p,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_contract_example() {
        let c = Cluster::from_yaml(EXAMPLE).unwrap();
        assert_eq!(c.namespaces.len(), 2);
        assert!(c.namespace_enrolled("shop", "io.cilium/mtls-enabled"));
        assert!(!c.namespace_enrolled("legacy", "io.cilium/mtls-enabled"));
        assert!(!c.namespace_enrolled("missing", "io.cilium/mtls-enabled"));
        assert!(!c.namespace_enrolled("shop", "other-key"));

        // sorted by uid
        let uids: Vec<_> = c.pods.iter().map(|p| p.uid.as_str()).collect();
        assert_eq!(uids, ["8d2f-1", "legacy/old-1", "shop/server-1"]);
        let client = &c.pods[0];
        assert_eq!(client.name, "client-1");
        assert_eq!(client.service_account, "client");
        assert_eq!(client.ips, vec!["10.10.1.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            client.netns.as_deref(),
            Some(std::path::Path::new("/var/run/netns/mw-p1"))
        );
        let server = &c.pods[2];
        assert_eq!(server.service_account, "default", "default service account");
        assert_eq!(server.uid, "shop/server-1", "default uid is namespace/name");
        assert_eq!(server.ips.len(), 2);
        assert!(server.ips[1].is_ipv6());

        assert_eq!(c.policies.len(), 1);
        let p = &c.policies[0];
        assert_eq!(p.action, PolicyAction::Deny);
        assert_eq!(
            p.rules[0].from[0].principals,
            vec!["cluster.local/ns/shop/sa/intruder"]
        );
        assert!(p.rules[0].to.is_empty());
    }

    #[test]
    fn empty_and_minimal_files() {
        assert_eq!(Cluster::from_yaml("{}").unwrap(), Cluster::default());
        let c = Cluster::from_yaml("namespaces: [{name: a}]\n").unwrap();
        assert!(c.namespaces["a"].labels.is_empty());
    }

    #[test]
    fn unquoted_label_values_are_text() {
        let c = Cluster::from_yaml(
            "namespaces:\n  - name: a\n    labels: { io.cilium/mtls-enabled: true, n: 3 }\n",
        )
        .unwrap();
        assert!(c.namespace_enrolled("a", "io.cilium/mtls-enabled"));
        assert_eq!(c.namespaces["a"].labels["n"], "3");
        let c = Cluster::from_yaml(
            "namespaces:\n  - name: a\n    labels: { io.cilium/mtls-enabled: \"True\" }\n",
        )
        .unwrap();
        assert!(
            !c.namespace_enrolled("a", "io.cilium/mtls-enabled"),
            "value must be exactly \"true\""
        );
    }

    #[test]
    fn full_policy_shape() {
        let c = Cluster::from_yaml(
            r#"
namespaces: [{name: shop}]
policies:
  - name: allow-some
    namespace: shop
    action: allow
    rules:
      - from:
          - principals: ["cluster.local/ns/shop/sa/*"]
            notPrincipals: ["cluster.local/ns/shop/sa/intruder"]
          - namespaces: [shop]
            notNamespaces: [legacy]
            ipBlocks: ["10.0.0.0/8", "10.1.2.3"]
            notIpBlocks: ["10.9.0.0/16"]
        to:
          - ports: [8080]
            notPorts: [9090]
"#,
        )
        .unwrap();
        let r = &c.policies[0].rules[0];
        assert_eq!(r.from.len(), 2);
        assert_eq!(
            r.from[1].ip_blocks[1],
            "10.1.2.3/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(r.to[0].ports, vec![8080]);
        assert_eq!(r.to[0].not_ports, vec![9090]);
    }

    #[test]
    fn syntax_errors_and_unknown_fields_are_parse_errors() {
        for bad in [
            "namespaces: [",
            "pods: 3",
            "pods:\n  - name: a\n    namespace: b\n    node: n\n    ip: 10.0.0.1\n    serviceaccount: x\n",
            "unknown: 1",
            "policies:\n  - {name: a, namespace: b, action: maybe}\n",
            "pods:\n  - {namespace: b, node: n, ip: 10.0.0.1}\n",
        ] {
            match Cluster::from_yaml(bad) {
                Err(WorkloadsError::Parse(msg)) => assert!(!msg.is_empty()),
                other => panic!("{bad:?}: expected a parse error, got {other:?}"),
            }
        }
        let msg = Cluster::from_yaml("unknown: 1").unwrap_err().to_string();
        assert!(msg.contains("unknown"), "{msg}");
    }

    #[test]
    fn semantic_errors_name_the_entry() {
        let p = problems(
            r#"
namespaces: [{name: shop}, {name: shop}, {name: "bad/ns"}]
pods:
  - {name: a, namespace: nowhere, node: n1, ip: 10.0.0.1}
  - {name: b, namespace: shop, node: n1, ip: not-an-ip}
  - {name: c, namespace: shop, node: n1}
  - {name: d, namespace: shop, node: n1, ip: 10.0.0.4, ips: [10.0.0.5]}
  - {name: e, namespace: shop, node: n1, ip: 10.0.0.6, netns: relative/path}
  - {name: f, namespace: shop, node: n1, ip: 10.0.0.7, uid: same}
  - {name: g, namespace: shop, node: n1, ip: 10.0.0.8, uid: same}
  - {name: h, namespace: shop, node: n1, ip: 10.0.0.7}
  - {name: f, namespace: shop, node: n1, ip: 10.0.0.9}
  - {name: i, namespace: shop, node: "", ip: 10.0.0.10, serviceAccount: "a/b"}
"#,
        );
        let expect = [
            "namespaces[1]: namespace \"shop\" is declared twice",
            "namespaces[2]: name \"bad/ns\" contains '/'",
            "pods[0] (nowhere/a): namespace \"nowhere\" is not declared",
            "pods[1] (shop/b): \"not-an-ip\" is not an IP address",
            "pods[2] (shop/c): has no address",
            "pods[3] (shop/d): give either `ip` or `ips`, not both",
            "pods[4] (shop/e): netns path relative/path is not absolute",
            "pods[6] (shop/g): uid \"same\" is used by another pod",
            "pods[7] (shop/h): address 10.0.0.7 is also used by pod shop/f",
            "pods[8] (shop/f): another pod has the same namespace and name",
            "pods[9] (shop/i): node is empty",
            "pods[9] (shop/i): serviceAccount \"a/b\" contains '/'",
        ];
        for e in expect {
            assert!(
                p.iter().any(|m| m.starts_with(e)),
                "missing {e:?} in {p:#?}"
            );
        }
        assert_eq!(p.len(), expect.len(), "{p:#?}");
    }

    #[test]
    fn policy_errors() {
        let p = problems(
            r#"
namespaces: [{name: shop}]
policies:
  - {name: a, namespace: other, action: allow}
  - name: b
    namespace: shop
    action: deny
    rules:
      - from: [{}]
        to: [{}]
      - from: [{ipBlocks: ["10.0.0.0/33"], principals: ["a*b"]}]
        to: [{ports: [0]}]
  - {name: c, namespace: shop, action: allow}
  - {name: c, namespace: shop, action: deny}
"#,
        );
        let expect = [
            "policies[0] (other/a): namespace \"other\" is not declared",
            "policies[1] (shop/b): rules[0].from[0]: is empty",
            "policies[1] (shop/b): rules[0].to[0]: is empty",
            "policies[1] (shop/b): rules[1].from[0]: \"10.0.0.0/33\" is neither",
            "policies[1] (shop/b): rules[1].from[0]: \"a*b\" may use '*' only",
            "policies[1] (shop/b): rules[1].to[0]: port 0",
            "policies[3] (shop/c): another policy has the same namespace and name",
        ];
        for e in expect {
            assert!(
                p.iter().any(|m| m.starts_with(e)),
                "missing {e:?} in {p:#?}"
            );
        }
        assert_eq!(p.len(), expect.len(), "{p:#?}");
    }

    #[test]
    fn error_display_lists_every_problem() {
        let e = WorkloadsError::Invalid(vec!["one".into(), "two".into()]);
        assert_eq!(
            e.to_string(),
            "the workloads file has 2 problem(s): one; two"
        );
    }
}
