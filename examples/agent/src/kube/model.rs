//! The API server's objects to the cluster model: Namespaces, Pods, Services with their
//! EndpointSlices, AuthorizationPolicies and ServiceAccounts to a [`Cluster`]; the pod annotations of other
//! nodes to [`RemoteReady`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Namespace as KubeNamespace, Pod as KubePod, Service as KubeService, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use meshwire_xds_workload::workload::{NamespacedHostname, Port, Service, ServiceVip};

use super::policy::{self, Converted};
use crate::desired::RemoteReady;
use crate::workloads::{Cluster, Namespace, Pod};

/// The pod annotation that reports a pod's redirection (istio-cni's).
pub(crate) const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
/// Its value once the pod's traffic is redirected to the proxy.
pub(crate) const REDIRECTION_ENABLED: &str = "enabled";
/// Its value while the pod is being enrolled (not yet redirected and acknowledged).
pub(crate) const REDIRECTION_PENDING: &str = "pending";
/// The EndpointSlice label naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the conversion needs to know about the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    /// This node.
    pub(crate) node: String,
    /// DNS domain of service host names (`<svc>.<ns>.svc.<domain>`).
    pub(crate) cluster_domain: String,
    /// Namespace whose selector-less policies apply to the whole mesh.
    pub(crate) root_namespace: String,
}

/// The objects the API server holds, as the watches last saw them.
#[derive(Debug, Default)]
pub(crate) struct Objects {
    pub(crate) namespaces: Vec<Arc<KubeNamespace>>,
    pub(crate) pods: Vec<Arc<KubePod>>,
    pub(crate) services: Vec<Arc<KubeService>>,
    pub(crate) slices: Vec<Arc<EndpointSlice>>,
    pub(crate) policies: Vec<Arc<DynamicObject>>,
    /// Empty unless the source watches them (for the SPIRE registrar).
    pub(crate) service_accounts: Vec<Arc<ServiceAccount>>,
}

/// What the agent learnt of a local pod's sandbox (from the CNI plugin or `/proc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sandbox {
    /// The network namespace path.
    pub(crate) netns: PathBuf,
    /// The addresses the CNI plugin reported (used while the pod's status has none).
    pub(crate) ips: Vec<IpAddr>,
}

/// A policy that is left out or changed, for the log.
pub(crate) type Note = (String, String);

/// Builds the cluster model; `sandboxes` are the known sandboxes of this node's pods by uid.
/// Returns the notes about policies alongside.
pub(crate) fn cluster(
    objects: &Objects,
    sandboxes: &BTreeMap<String, Sandbox>,
    view: &View,
) -> (Cluster, Vec<Note>) {
    let namespaces = objects
        .namespaces
        .iter()
        .filter_map(|ns| {
            let name = ns.metadata.name.clone()?;
            let labels = ns.metadata.labels.clone().unwrap_or_default();
            Some((name.clone(), Namespace { name, labels }))
        })
        .collect();

    let (services, by_key) = services(objects, view);
    let membership = membership(&objects.slices, &by_key);

    let mut pods: Vec<Pod> = objects
        .pods
        .iter()
        .filter_map(|p| pod(p, sandboxes, &membership, view))
        .collect();
    pods.sort_by(|a, b| a.uid.cmp(&b.uid));

    let mut notes = Vec::new();
    let mut policies = Vec::new();
    for obj in &objects.policies {
        let (Some(namespace), Some(name)) = (&obj.metadata.namespace, &obj.metadata.name) else {
            continue;
        };
        let spec = obj
            .data
            .get("spec")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        let key = format!("{namespace}/{name}");
        match policy::convert(namespace, name, &spec, &view.root_namespace) {
            Converted::Policy(p, changes) => {
                notes.extend(changes.into_iter().map(|c| (key.clone(), c)));
                policies.push(p);
            }
            Converted::Skipped(why) => notes.push((key, format!("not enforced: {why}"))),
        }
    }
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let service_accounts = objects
        .service_accounts
        .iter()
        .filter_map(|sa| Some((sa.metadata.namespace.clone()?, sa.metadata.name.clone()?)))
        .collect();

    let cluster = Cluster {
        namespaces,
        pods,
        policies,
        services,
        service_accounts,
    };
    (cluster, notes)
}

/// The pod, if it can be published: it has a uid and a node, is not on the host network
/// and has not terminated.
fn pod(
    p: &KubePod,
    sandboxes: &BTreeMap<String, Sandbox>,
    membership: &BTreeMap<String, BTreeMap<NamespacedHostname, Vec<Port>>>,
    view: &View,
) -> Option<Pod> {
    let uid = p.metadata.uid.clone()?;
    let spec = p.spec.as_ref()?;
    let node = spec.node_name.clone().filter(|n| !n.is_empty())?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = p.status.as_ref();
    if status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
    {
        return None;
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    if let Some(s) = status {
        let listed = s.pod_ips.iter().flatten().map(|i| i.ip.as_str());
        for ip in listed.chain(s.pod_ip.as_deref()) {
            if let Ok(ip) = ip.parse::<IpAddr>()
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
    }
    let sandbox = (node == view.node).then(|| sandboxes.get(&uid)).flatten();
    if ips.is_empty()
        && let Some(s) = sandbox
    {
        ips.clone_from(&s.ips);
    }
    Some(Pod {
        name: p.metadata.name.clone()?,
        namespace: p.metadata.namespace.clone()?,
        service_account: spec
            .service_account_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
        ips,
        node,
        netns: sandbox.map(|s| s.netns.clone()),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        services: membership.get(&uid).cloned().unwrap_or_default(),
        uid,
    })
}

/// A TCP service port: its name (empty when unnamed), the service port, and the numeric
/// target port (0 for a named one, resolved per endpoint).
#[derive(Debug, Clone)]
struct NamedPort {
    name: String,
    port: u16,
    target: u16,
}

/// A service's key and ports, by `(namespace, name)`, to resolve its endpoints.
type ServicePorts = BTreeMap<(String, String), (NamespacedHostname, Vec<NamedPort>)>;

/// Services (not `ExternalName`) with their VIPs and TCP ports, sorted by key.
fn services(objects: &Objects, view: &View) -> (Vec<Arc<Service>>, ServicePorts) {
    let mut out = Vec::new();
    let mut by_key = BTreeMap::new();
    for s in &objects.services {
        let (Some(name), Some(namespace)) = (&s.metadata.name, &s.metadata.namespace) else {
            continue;
        };
        let Some(spec) = &s.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let hostname = format!("{name}.{namespace}.svc.{}", view.cluster_domain);
        let mut svc = Service::new(name, namespace, &hostname);
        svc.vips = spec
            .cluster_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .map(|ip| ServiceVip::host("", ip))
            .collect();
        let ports: Vec<NamedPort> = spec
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok()?;
                let target = match &p.target_port {
                    None => port,
                    Some(IntOrString::Int(t)) => u16::try_from(*t).ok()?,
                    Some(IntOrString::String(_)) => 0,
                };
                Some(NamedPort {
                    name: p.name.clone().unwrap_or_default(),
                    port,
                    target,
                })
            })
            .collect();
        svc.ports = ports.iter().map(|p| Port::new(p.port, p.target)).collect();
        by_key.insert((namespace.clone(), name.clone()), (svc.key(), ports));
        out.push(Arc::new(svc));
    }
    out.sort_by_key(|s| s.key());
    (out, by_key)
}

/// For each pod uid, the services it is a ready endpoint of, with the ports (service port →
/// the port its EndpointSlice gives under the same port name).
fn membership(
    slices: &[Arc<EndpointSlice>],
    services: &ServicePorts,
) -> BTreeMap<String, BTreeMap<NamespacedHostname, Vec<Port>>> {
    let mut out: BTreeMap<String, BTreeMap<NamespacedHostname, Vec<Port>>> = BTreeMap::new();
    for slice in slices {
        let Some(namespace) = &slice.metadata.namespace else {
            continue;
        };
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let Some((key, service_ports)) = services.get(&(namespace.clone(), service.clone())) else {
            continue;
        };
        let slice_ports = slice.ports.as_deref().unwrap_or_default();
        let ports: Vec<Port> = service_ports
            .iter()
            .filter_map(|sp| {
                let target = slice_ports
                    .iter()
                    .find(|p| p.name.as_deref().unwrap_or("") == sp.name)?
                    .port?;
                Some(Port::new(sp.port, u16::try_from(target).ok()?))
            })
            .collect();
        for endpoint in slice.endpoints.iter().flatten() {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            let Some(uid) = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.uid.clone())
            else {
                continue;
            };
            if ready {
                out.entry(uid)
                    .or_default()
                    .insert(key.clone(), ports.clone());
            }
        }
    }
    out
}

/// The pods of other nodes whose annotation says their redirection is enabled, by node.
pub(crate) fn remote_ready(pods: &[Arc<KubePod>], node: &str) -> RemoteReady {
    let mut nodes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in pods {
        let Some(pod_node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        if pod_node == node || redirection(p) != Some(REDIRECTION_ENABLED) {
            continue;
        }
        if let Some(uid) = &p.metadata.uid {
            nodes
                .entry(pod_node.to_owned())
                .or_default()
                .insert(uid.clone());
        }
    }
    RemoteReady::Gated(nodes)
}

/// The pod's redirection annotation.
pub(crate) fn redirection(p: &KubePod) -> Option<&str> {
    p.metadata
        .annotations
        .as_ref()?
        .get(REDIRECTION_ANNOTATION)
        .map(String::as_str)
}

#[cfg(test)]
mod tests;
