//! Services: virtual addresses, ports, load balancing and waypoints.

use std::net::IpAddr;

use ipnet::IpNet;

use super::network::{GatewayAddress, NamespacedHostname};
use super::port::Port;

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
    /// A VIP covering `prefix` on `network`.
    pub fn new(network: impl Into<String>, prefix: IpNet) -> Self {
        Self {
            network: network.into(),
            prefix,
        }
    }

    /// A single-address VIP (`/32` or `/128`) on `network`.
    pub fn host(network: impl Into<String>, address: IpAddr) -> Self {
        Self::new(network, IpNet::from(address))
    }

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

impl WeightedWaypoint {
    /// A waypoint chosen with `weight`.
    pub fn new(destination: GatewayAddress, weight: u32) -> Self {
        Self {
            destination,
            weight,
        }
    }
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
    /// A service `namespace/hostname` named `name`, with no VIPs, ports or waypoint, and
    /// every other field at its default.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        hostname: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            hostname: hostname.into(),
            vips: Vec::new(),
            ports: Vec::new(),
            subject_alt_names: Vec::new(),
            waypoint: None,
            load_balancing: None,
            ip_families: IpFamilies::default(),
            canonical: false,
            ingress_use_waypoint: false,
            weighted_waypoints: Vec::new(),
            visibility: Visibility::default(),
        }
    }

    /// The service's key, `namespace/hostname`.
    pub fn key(&self) -> NamespacedHostname {
        NamespacedHostname::new(&self.namespace, &self.hostname)
    }
}
