//! The cluster model every workload source fills: namespaces with labels, pods, services and
//! authorization policies.
//!
//! The YAML workloads file is parsed into raw serde types, then checked as a whole into a
//! [`Cluster`]; every problem found is reported at once, each naming the entry it is about.
//! The Kubernetes source (`crate::kube`) builds the same [`Cluster`] from the API server.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use meshwire_xds_workload::workload::{NamespacedHostname, Port, Service};
use serde::Deserialize;

/// The cluster as a workload source sees it (a validated workloads file, or the API server's
/// objects).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Cluster {
    /// Namespaces by name.
    pub(crate) namespaces: BTreeMap<String, Namespace>,
    /// Pods, sorted by uid.
    pub(crate) pods: Vec<Pod>,
    /// Authorization policies, sorted by (namespace, name).
    pub(crate) policies: Vec<Policy>,
    /// Services, published over xDS as they are, sorted by (namespace, hostname); the file
    /// source has none.
    pub(crate) services: Vec<Arc<Service>>,
    /// Service accounts as `(namespace, name)`: the Kubernetes source's ServiceAccount
    /// objects (watched only for the SPIRE registrar, else none), the file source's pods'
    /// service accounts.
    pub(crate) service_accounts: BTreeSet<(String, String)>,
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
    /// Labels (policies with a selector match them); the file source has none.
    pub(crate) labels: BTreeMap<String, String>,
    /// The services this pod is an endpoint of, with its ports for each.
    pub(crate) services: BTreeMap<NamespacedHostname, Vec<Port>>,
}

/// An L4 authorization policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) scope: PolicyScope,
    pub(crate) action: PolicyAction,
    pub(crate) rules: Vec<PolicyRule>,
}

/// Which pods a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PolicyScope {
    /// Every pod of the policy's namespace (the only scope of the workloads file).
    Namespace,
    /// Every pod of the mesh (a Kubernetes policy without selector in the root namespace).
    Global,
    /// The pods of the policy's namespace that carry all these labels.
    Selector(BTreeMap<String, String>),
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
    /// `(namespace, service account)` pairs (Kubernetes `serviceAccounts`).
    pub(crate) service_accounts: Vec<(String, String)>,
    pub(crate) not_service_accounts: Vec<(String, String)>,
}

/// Destination conditions of a rule; every populated field must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Destination {
    pub(crate) ports: Vec<u16>,
    pub(crate) not_ports: Vec<u16>,
}

/// Namespace label that selects the mutual-TLS mode of an enrolled namespace: `strict`
/// publishes the namespace's strict policy (plaintext into its pods is refused, and its pods
/// never send plain TCP to an enrolled pod that is not ready yet); absent or any other value
/// is permissive.
pub(crate) const MTLS_MODE_LABEL: &str = "io.cilium/mtls-mode";

/// The [`MTLS_MODE_LABEL`] value of strict mode.
pub(crate) const MTLS_MODE_STRICT: &str = "strict";

impl Cluster {
    /// Whether `namespace` carries `label_key: "true"`.
    pub(crate) fn namespace_enrolled(&self, namespace: &str, label_key: &str) -> bool {
        self.namespaces
            .get(namespace)
            .and_then(|ns| ns.labels.get(label_key))
            .is_some_and(|v| v == "true")
    }

    /// The enrolled namespaces (`label_key: "true"`) in strict mutual-TLS mode
    /// ([`MTLS_MODE_LABEL`]` = `[`MTLS_MODE_STRICT`]), sorted.
    pub(crate) fn strict_namespaces(&self, label_key: &str) -> Vec<&str> {
        self.namespaces
            .values()
            .filter(|ns| self.namespace_enrolled(&ns.name, label_key))
            .filter(|ns| {
                ns.labels
                    .get(MTLS_MODE_LABEL)
                    .is_some_and(|v| v == MTLS_MODE_STRICT)
            })
            .map(|ns| ns.name.as_str())
            .collect()
    }

    /// The keys (`namespace/name`) of the policies with a selector that `pod` matches.
    pub(crate) fn selected_policies(&self, pod: &Pod) -> Vec<String> {
        self.policies
            .iter()
            .filter(|p| p.namespace == pod.namespace)
            .filter(|p| match &p.scope {
                PolicyScope::Selector(labels) => labels
                    .iter()
                    .all(|(k, v)| pod.labels.get(k).is_some_and(|have| have == v)),
                PolicyScope::Namespace | PolicyScope::Global => false,
            })
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    }

    /// Parses and validates the YAML text of a workloads file.
    pub(crate) fn from_yaml(text: &str) -> Result<Self, WorkloadsError> {
        raw::parse(text)
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

pub(crate) mod file;
mod raw;
#[cfg(test)]
pub(crate) mod tests;
