//! Checked domain types for `istio.workload` resources, built at one [`TryFrom`] boundary.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::error::AddressError;
use crate::pb::istio::workload as pb;

/// Trust domain assumed when a workload does not name one.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Service account assumed when a workload does not name one.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Cluster id assumed when a workload does not name one.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// An IP address on a named network. The empty network is the default network.
///
/// Displayed (and used as an xDS alias) as `<network>/<ip>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    /// Network name; empty for the default network.
    pub network: String,
    /// The address.
    pub address: IpAddr,
}

impl NetworkAddress {
    /// An address on `network`.
    pub fn new(network: impl Into<String>, address: IpAddr) -> Self {
        Self {
            network: network.into(),
            address,
        }
    }
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.address)
    }
}

/// A `namespace/hostname` pair: the key of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedHostname {
    /// Namespace of the service.
    pub namespace: String,
    /// Fully qualified host name of the service.
    pub hostname: String,
}

impl NamespacedHostname {
    /// A `namespace/hostname` pair.
    pub fn new(namespace: impl Into<String>, hostname: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            hostname: hostname.into(),
        }
    }

    /// Parses `namespace/hostname`. The text must contain exactly one `/`.
    pub fn parse(key: &str) -> Option<Self> {
        let (namespace, hostname) = key.split_once('/')?;
        if hostname.contains('/') {
            return None;
        }
        Some(Self::new(namespace, hostname))
    }
}

impl fmt::Display for NamespacedHostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.hostname)
    }
}

/// How traffic to a workload is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TunnelProtocol {
    /// Plain TCP, not tunnelled.
    #[default]
    None,
    /// HBONE: HTTP/2 CONNECT inside mutual TLS, to port 15008.
    Hbone,
}

/// Health of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum HealthStatus {
    /// Ready to serve traffic.
    #[default]
    Healthy,
    /// Not ready to serve traffic.
    Unhealthy,
}

/// Kind of controller that owns a workload (telemetry only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum WorkloadType {
    /// A Deployment (also used for unknown values).
    #[default]
    Deployment,
    /// A CronJob.
    CronJob,
    /// A bare Pod.
    Pod,
    /// A Job.
    Job,
}

impl WorkloadType {
    /// Lower-case name, as used in baggage.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::CronJob => "cronjob",
            Self::Pod => "pod",
            Self::Job => "job",
        }
    }
}

/// Whether a workload's addresses identify it uniquely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum NetworkMode {
    /// The addresses identify the workload within its network.
    #[default]
    Standard,
    /// The workload shares the node's addresses; it is never looked up by IP.
    HostNetwork,
}

/// Application protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum AppProtocol {
    /// Not known (also used for unknown values).
    #[default]
    Unknown,
    /// HTTP/1.1.
    Http11,
    /// HTTP/2.
    Http2,
    /// gRPC.
    Grpc,
    /// Opaque TCP.
    Tcp,
    /// TLS.
    Tls,
}

/// A service port and the port it forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Port {
    /// Port the service is reached at.
    pub service_port: u16,
    /// Port on the endpoint; 0 means a named port resolved per endpoint.
    pub target_port: u16,
    /// Application protocol (informational).
    pub app_protocol: AppProtocol,
}

impl Port {
    /// A port mapping with an unknown application protocol.
    pub fn new(service_port: u16, target_port: u16) -> Self {
        Self {
            service_port,
            target_port,
            app_protocol: AppProtocol::Unknown,
        }
    }
}

/// Where a gateway (waypoint or network gateway) can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GatewayDestination {
    /// A service, by namespace and hostname.
    Hostname(NamespacedHostname),
    /// A fixed address.
    Address(NetworkAddress),
}

/// A gateway: its destination and HBONE port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct GatewayAddress {
    /// Where the gateway is.
    pub destination: GatewayDestination,
    /// Port for mutual-TLS HBONE connections to the gateway.
    pub hbone_mtls_port: u16,
}

/// Protocol an application speaks to receive tunnel metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ApplicationTunnelProtocol {
    /// Bytes are forwarded unchanged.
    #[default]
    None,
    /// A PROXY protocol header precedes the bytes.
    Proxy,
}

/// How the final hop hands traffic to an application that accepts tunnel metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ApplicationTunnel {
    /// The protocol.
    pub protocol: ApplicationTunnelProtocol,
    /// Port to deliver to; 0 keeps the original port.
    pub port: u16,
}

/// Where a workload runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub subzone: String,
}

/// The SPIFFE identity of a workload, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// Trust domain.
    pub trust_domain: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Kubernetes service account.
    pub service_account: String,
}

/// A text that is not a SPIFFE ID of the form `spiffe://<td>/ns/<ns>/sa/<sa>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a spiffe://<trust domain>/ns/<namespace>/sa/<service account> identity: {0:?}")]
pub struct IdentityParseError(pub String);

impl Identity {
    /// An identity from its parts.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// The principal used by authorization: the SPIFFE ID without `spiffe://`,
    /// `<td>/ns/<ns>/sa/<sa>`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IdentityParseError(s.to_owned());
        let rest = s.strip_prefix("spiffe://").ok_or_else(err)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(err());
        };
        if td.is_empty() || ns.is_empty() || sa.is_empty() {
            return Err(err());
        }
        Ok(Self::new(td, ns, sa))
    }
}

/// A workload: one endpoint (a pod, a VM, or endpoints behind a hostname).
///
/// Built from [`pb::Workload`] with [`TryFrom`]; empty `trust_domain`, `service_account` and
/// `cluster_id` are replaced by [`DEFAULT_TRUST_DOMAIN`], [`DEFAULT_SERVICE_ACCOUNT`] and
/// [`DEFAULT_CLUSTER_ID`], and a missing `capacity` by 1.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Workload {
    /// Globally unique id; the xDS resource name.
    pub uid: String,
    /// Name (a pod name for Kubernetes).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Addresses (may be empty for hostname-only workloads).
    pub addresses: Vec<IpAddr>,
    /// Hostname for DNS-resolved workloads; usually empty.
    pub hostname: String,
    /// Network; empty is the default network.
    pub network: String,
    /// How to carry traffic to the workload.
    pub protocol: TunnelProtocol,
    /// Trust domain of the identity.
    pub trust_domain: String,
    /// Service account of the identity.
    pub service_account: String,
    /// Waypoint for traffic to this workload.
    pub waypoint: Option<GatewayAddress>,
    /// East-west gateway for traffic from other networks.
    pub network_gateway: Option<GatewayAddress>,
    /// Node the workload runs on.
    pub node: String,
    /// Canonical service name (telemetry).
    pub canonical_name: String,
    /// Canonical revision (telemetry).
    pub canonical_revision: String,
    /// Controller kind (telemetry).
    pub workload_type: WorkloadType,
    /// Controller name (telemetry).
    pub workload_name: String,
    /// The workload terminates HBONE itself.
    pub native_tunnel: bool,
    /// Hand-off to an application that accepts tunnel metadata.
    pub application_tunnel: Option<ApplicationTunnel>,
    /// Services this workload is an endpoint of, with its ports for each.
    pub services: BTreeMap<NamespacedHostname, Vec<Port>>,
    /// Keys (`namespace/name`) of selector-bound authorization policies.
    pub authorization_policies: Vec<String>,
    /// Health.
    pub status: HealthStatus,
    /// Cluster id.
    pub cluster_id: String,
    /// Locality.
    pub locality: Locality,
    /// Network mode.
    pub network_mode: NetworkMode,
    /// Load-balancing weight.
    pub capacity: u32,
}

impl Workload {
    /// The workload's SPIFFE identity.
    pub fn identity(&self) -> Identity {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
    }

    /// The workload's addresses on its network.
    pub fn network_addresses(&self) -> impl Iterator<Item = NetworkAddress> + '_ {
        self.addresses
            .iter()
            .map(|ip| NetworkAddress::new(self.network.clone(), *ip))
    }
}

/// A virtual address of a service: a host address or (with a shorter prefix) a CIDR range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ServiceVip {
    /// Network of the address.
    pub network: String,
    /// The address and prefix; a host prefix (/32, /128) for an ordinary VIP.
    pub prefix: IpNet,
}

impl ServiceVip {
    /// Whether this is a single address rather than a range.
    pub fn is_host(&self) -> bool {
        self.prefix.prefix_len() == self.prefix.max_prefix_len()
    }
}

/// IP families a service supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum IpFamilies {
    /// Inferred from the addresses.
    #[default]
    Automatic,
    /// IPv4 only.
    Ipv4Only,
    /// IPv6 only.
    Ipv6Only,
    /// Both.
    Dual,
}

/// A locality attribute that endpoint selection may prefer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoadBalancingScope {
    /// Same region.
    Region,
    /// Same zone.
    Zone,
    /// Same sub-zone.
    Subzone,
    /// Same node.
    Node,
    /// Same cluster.
    Cluster,
    /// Same network.
    Network,
}

/// How routing preferences are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum LoadBalancingMode {
    /// No preference: random choice.
    #[default]
    Unspecified,
    /// Only endpoints matching every preference.
    Strict,
    /// Prefer endpoints matching most preferences.
    Failover,
    /// Send to the original destination unchanged.
    Passthrough,
}

/// Which endpoints are eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum HealthPolicy {
    /// Only healthy endpoints.
    #[default]
    OnlyHealthy,
    /// All endpoints.
    AllowAll,
}

/// Load-balancing configuration of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct LoadBalancing {
    /// Preferences, most important first.
    pub routing_preference: Vec<LoadBalancingScope>,
    /// Mode.
    pub mode: LoadBalancingMode,
    /// Health policy.
    pub health_policy: HealthPolicy,
}

/// Who may resolve a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Visibility {
    /// Everyone (also used for unknown values).
    #[default]
    Public,
    /// Only clients in the service's namespace.
    Namespace,
}

/// A waypoint with a selection weight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct WeightedWaypoint {
    /// The waypoint.
    pub destination: GatewayAddress,
    /// Weight; 0 is never chosen.
    pub weight: u32,
}

/// A service: a group of workloads behind shared virtual addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace (key part).
    pub namespace: String,
    /// Fully qualified host name (key part).
    pub hostname: String,
    /// Virtual addresses.
    pub vips: Vec<ServiceVip>,
    /// Ports.
    pub ports: Vec<Port>,
    /// Extra SPIFFE IDs accepted for the service's endpoints.
    pub subject_alt_names: Vec<String>,
    /// Service waypoint.
    pub waypoint: Option<GatewayAddress>,
    /// Load balancing.
    pub load_balancing: Option<LoadBalancing>,
    /// IP families.
    pub ip_families: IpFamilies,
    /// Preferred among services sharing a VIP or hostname.
    pub canonical: bool,
    /// Ingress traffic should use the waypoint.
    pub ingress_use_waypoint: bool,
    /// Weighted waypoints.
    pub weighted_waypoints: Vec<WeightedWaypoint>,
    /// Visibility.
    pub visibility: Visibility,
}

impl Service {
    /// The service's key, `namespace/hostname`.
    pub fn key(&self) -> NamespacedHostname {
        NamespacedHostname::new(&self.namespace, &self.hostname)
    }
}

/// An `istio.workload.Address` resource: a workload or a service.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Address {
    /// A workload.
    Workload(Arc<Workload>),
    /// A service.
    Service(Arc<Service>),
}

// ---------------------------------------------------------------------------------------
// TryFrom boundary
// ---------------------------------------------------------------------------------------

pub(crate) fn ip_from_bytes(field: &'static str, bytes: &[u8]) -> Result<IpAddr, AddressError> {
    if let Ok(octets) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    if let Ok(octets) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::V6(Ipv6Addr::from(octets)));
    }
    Err(AddressError::InvalidIpLength {
        field,
        len: bytes.len(),
    })
}

fn port(field: &'static str, value: u32) -> Result<u16, AddressError> {
    u16::try_from(value).map_err(|_| AddressError::InvalidPort { field, value })
}

fn unknown(field: &'static str, value: i32) -> AddressError {
    AddressError::UnknownEnumValue { field, value }
}

fn network_address(
    field: &'static str,
    value: &pb::NetworkAddress,
) -> Result<NetworkAddress, AddressError> {
    Ok(NetworkAddress::new(
        value.network.clone(),
        ip_from_bytes(field, &value.address)?,
    ))
}

fn gateway(
    field: &'static str,
    value: &pb::GatewayAddress,
) -> Result<GatewayAddress, AddressError> {
    let destination = match &value.destination {
        Some(pb::gateway_address::Destination::Hostname(h)) => {
            GatewayDestination::Hostname(NamespacedHostname::new(&h.namespace, &h.hostname))
        }
        Some(pb::gateway_address::Destination::Address(a)) => {
            GatewayDestination::Address(network_address(field, a)?)
        }
        None => return Err(AddressError::MissingGatewayDestination { field }),
    };
    Ok(GatewayAddress {
        destination,
        hbone_mtls_port: port(field, value.hbone_mtls_port)?,
    })
}

fn ports(field: &'static str, values: &[pb::Port]) -> Result<Vec<Port>, AddressError> {
    values
        .iter()
        .map(|p| {
            Ok(Port {
                service_port: port(field, p.service_port)?,
                target_port: port(field, p.target_port)?,
                // Informational only: unknown values are not an error.
                app_protocol: match pb::AppProtocol::try_from(p.app_protocol) {
                    Ok(pb::AppProtocol::Http11) => AppProtocol::Http11,
                    Ok(pb::AppProtocol::Http2) => AppProtocol::Http2,
                    Ok(pb::AppProtocol::Grpc) => AppProtocol::Grpc,
                    Ok(pb::AppProtocol::Tcp) => AppProtocol::Tcp,
                    Ok(pb::AppProtocol::Tls) => AppProtocol::Tls,
                    Ok(pb::AppProtocol::Unknown) | Err(_) => AppProtocol::Unknown,
                },
            })
        })
        .collect()
}

fn or_default(value: &str, default: &str) -> String {
    if value.is_empty() {
        default.to_owned()
    } else {
        value.to_owned()
    }
}

impl TryFrom<&pb::Workload> for Workload {
    type Error = AddressError;

    fn try_from(w: &pb::Workload) -> Result<Self, Self::Error> {
        let addresses = w
            .addresses
            .iter()
            .map(|a| ip_from_bytes("addresses", a))
            .collect::<Result<Vec<_>, _>>()?;
        let protocol = match pb::TunnelProtocol::try_from(w.tunnel_protocol) {
            Ok(pb::TunnelProtocol::None) => TunnelProtocol::None,
            Ok(pb::TunnelProtocol::Hbone) => TunnelProtocol::Hbone,
            Ok(pb::TunnelProtocol::LegacyIstioMtls) => return Err(AddressError::LegacyIstioMtls),
            Err(_) => return Err(unknown("tunnel_protocol", w.tunnel_protocol)),
        };
        let status = match pb::WorkloadStatus::try_from(w.status) {
            Ok(pb::WorkloadStatus::Healthy) => HealthStatus::Healthy,
            Ok(pb::WorkloadStatus::Unhealthy) => HealthStatus::Unhealthy,
            Err(_) => return Err(unknown("status", w.status)),
        };
        let network_mode = match pb::NetworkMode::try_from(w.network_mode) {
            Ok(pb::NetworkMode::Standard) => NetworkMode::Standard,
            Ok(pb::NetworkMode::HostNetwork) => NetworkMode::HostNetwork,
            Err(_) => return Err(unknown("network_mode", w.network_mode)),
        };
        // Telemetry only: unknown values fall back to the default.
        let workload_type = match pb::WorkloadType::try_from(w.workload_type) {
            Ok(pb::WorkloadType::Cronjob) => WorkloadType::CronJob,
            Ok(pb::WorkloadType::Pod) => WorkloadType::Pod,
            Ok(pb::WorkloadType::Job) => WorkloadType::Job,
            Ok(pb::WorkloadType::Deployment) | Err(_) => WorkloadType::Deployment,
        };
        let application_tunnel = match &w.application_tunnel {
            None => None,
            Some(t) => Some(ApplicationTunnel {
                protocol: match pb::application_tunnel::Protocol::try_from(t.protocol) {
                    Ok(pb::application_tunnel::Protocol::None) => ApplicationTunnelProtocol::None,
                    Ok(pb::application_tunnel::Protocol::Proxy) => ApplicationTunnelProtocol::Proxy,
                    Err(_) => return Err(unknown("application_tunnel.protocol", t.protocol)),
                },
                port: port("application_tunnel.port", t.port)?,
            }),
        };
        let mut services = BTreeMap::new();
        for (key, list) in &w.services {
            let Some(name) = NamespacedHostname::parse(key) else {
                return Err(AddressError::InvalidServiceKey { key: key.clone() });
            };
            services.insert(name, ports("services.ports", &list.ports)?);
        }
        let locality = w
            .locality
            .as_ref()
            .map(|l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                subzone: l.subzone.clone(),
            })
            .unwrap_or_default();
        Ok(Self {
            uid: w.uid.clone(),
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            addresses,
            hostname: w.hostname.clone(),
            network: w.network.clone(),
            protocol,
            trust_domain: or_default(&w.trust_domain, DEFAULT_TRUST_DOMAIN),
            service_account: or_default(&w.service_account, DEFAULT_SERVICE_ACCOUNT),
            waypoint: w
                .waypoint
                .as_ref()
                .map(|g| gateway("waypoint", g))
                .transpose()?,
            network_gateway: w
                .network_gateway
                .as_ref()
                .map(|g| gateway("network_gateway", g))
                .transpose()?,
            node: w.node.clone(),
            canonical_name: w.canonical_name.clone(),
            canonical_revision: w.canonical_revision.clone(),
            workload_type,
            workload_name: w.workload_name.clone(),
            native_tunnel: w.native_tunnel,
            application_tunnel,
            services,
            authorization_policies: w.authorization_policies.clone(),
            status,
            cluster_id: or_default(&w.cluster_id, DEFAULT_CLUSTER_ID),
            locality,
            network_mode,
            capacity: w.capacity.unwrap_or(1),
        })
    }
}

impl TryFrom<pb::Workload> for Workload {
    type Error = AddressError;

    fn try_from(w: pb::Workload) -> Result<Self, Self::Error> {
        Self::try_from(&w)
    }
}

fn service_vip(value: &pb::NetworkAddress) -> Result<ServiceVip, AddressError> {
    let address = ip_from_bytes("addresses", &value.address)?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let len = value.length.unwrap_or(max);
    let prefix = u8::try_from(len)
        .ok()
        .and_then(|l| IpNet::new(address, l).ok())
        .ok_or(AddressError::InvalidPrefixLength {
            field: "addresses.length",
            addr: address,
            len,
        })?;
    Ok(ServiceVip {
        network: value.network.clone(),
        prefix,
    })
}

fn load_balancing(lb: &pb::LoadBalancing) -> Result<LoadBalancing, AddressError> {
    use pb::load_balancing::{HealthPolicy as H, Mode as M, Scope as S};
    let routing_preference = lb
        .routing_preference
        .iter()
        .map(|&s| match S::try_from(s) {
            Ok(S::UnspecifiedScope) => Err(AddressError::UnspecifiedRoutingPreference),
            Ok(S::Region) => Ok(LoadBalancingScope::Region),
            Ok(S::Zone) => Ok(LoadBalancingScope::Zone),
            Ok(S::Subzone) => Ok(LoadBalancingScope::Subzone),
            Ok(S::Node) => Ok(LoadBalancingScope::Node),
            Ok(S::Cluster) => Ok(LoadBalancingScope::Cluster),
            Ok(S::Network) => Ok(LoadBalancingScope::Network),
            Err(_) => Err(unknown("load_balancing.routing_preference", s)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mode = match M::try_from(lb.mode) {
        Ok(M::UnspecifiedMode) => LoadBalancingMode::Unspecified,
        Ok(M::Strict) => LoadBalancingMode::Strict,
        Ok(M::Failover) => LoadBalancingMode::Failover,
        Ok(M::Passthrough) => LoadBalancingMode::Passthrough,
        Err(_) => return Err(unknown("load_balancing.mode", lb.mode)),
    };
    let health_policy = match H::try_from(lb.health_policy) {
        Ok(H::OnlyHealthy) => HealthPolicy::OnlyHealthy,
        Ok(H::AllowAll) => HealthPolicy::AllowAll,
        Err(_) => return Err(unknown("load_balancing.health_policy", lb.health_policy)),
    };
    Ok(LoadBalancing {
        routing_preference,
        mode,
        health_policy,
    })
}

impl TryFrom<&pb::Service> for Service {
    type Error = AddressError;

    fn try_from(s: &pb::Service) -> Result<Self, Self::Error> {
        let ip_families = match pb::IpFamilies::try_from(s.ip_families) {
            Ok(pb::IpFamilies::Automatic) => IpFamilies::Automatic,
            Ok(pb::IpFamilies::Ipv4Only) => IpFamilies::Ipv4Only,
            Ok(pb::IpFamilies::Ipv6Only) => IpFamilies::Ipv6Only,
            Ok(pb::IpFamilies::Dual) => IpFamilies::Dual,
            Err(_) => return Err(unknown("ip_families", s.ip_families)),
        };
        let visibility = match pb::service::Visibility::try_from(s.visibility) {
            Ok(pb::service::Visibility::Namespace) => Visibility::Namespace,
            Ok(pb::service::Visibility::Public) | Err(_) => Visibility::Public,
        };
        let weighted_waypoints = s
            .weighted_waypoints
            .iter()
            .map(|w| {
                let destination =
                    w.destination
                        .as_ref()
                        .ok_or(AddressError::MissingGatewayDestination {
                            field: "weighted_waypoints",
                        })?;
                Ok(WeightedWaypoint {
                    destination: gateway("weighted_waypoints", destination)?,
                    weight: w.weight,
                })
            })
            .collect::<Result<Vec<_>, AddressError>>()?;
        Ok(Self {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            hostname: s.hostname.clone(),
            vips: s
                .addresses
                .iter()
                .map(service_vip)
                .collect::<Result<_, _>>()?,
            ports: ports("ports", &s.ports)?,
            subject_alt_names: s.subject_alt_names.clone(),
            waypoint: s
                .waypoint
                .as_ref()
                .map(|g| gateway("waypoint", g))
                .transpose()?,
            load_balancing: s.load_balancing.as_ref().map(load_balancing).transpose()?,
            ip_families,
            canonical: s.canonical,
            ingress_use_waypoint: s.ingress_use_waypoint,
            weighted_waypoints,
            visibility,
        })
    }
}

impl TryFrom<pb::Service> for Service {
    type Error = AddressError;

    fn try_from(s: pb::Service) -> Result<Self, Self::Error> {
        Self::try_from(&s)
    }
}

impl TryFrom<&pb::Address> for Address {
    type Error = AddressError;

    fn try_from(a: &pb::Address) -> Result<Self, Self::Error> {
        match &a.r#type {
            Some(pb::address::Type::Workload(w)) => Ok(Self::Workload(Arc::new(w.try_into()?))),
            Some(pb::address::Type::Service(s)) => Ok(Self::Service(Arc::new(s.try_into()?))),
            None => Err(AddressError::MissingType),
        }
    }
}

impl TryFrom<pb::Address> for Address {
    type Error = AddressError;

    fn try_from(a: pb::Address) -> Result<Self, Self::Error> {
        Self::try_from(&a)
    }
}
