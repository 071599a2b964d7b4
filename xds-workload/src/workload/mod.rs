//! Checked domain types for `istio.workload` resources: [`Workload`], [`Service`] and the
//! [`Address`] that holds either, with the [`Identity`] and [`Port`] they use.
//!
//! They are built from the generated [`pb::istio::workload`](crate::pb::istio::workload)
//! messages at one [`TryFrom`] boundary, which checks every field (IP lengths, enum values,
//! port ranges, service keys) and fails per resource with an [`AddressError`] that names the
//! field; empty `trust_domain`, `service_account` and `cluster_id` become
//! [`DEFAULT_TRUST_DOMAIN`], [`DEFAULT_SERVICE_ACCOUNT`] and [`DEFAULT_CLUSTER_ID`], and a
//! missing `capacity` becomes 1. [`From`] goes the other way (`From<&Workload> for
//! pb::Workload` and so on), so a control plane can build the domain types and publish
//! them: converting back gives an equal value.
//!
//! ```
//! use meshwire_xds_workload::pb::istio::workload as pb;
//! use meshwire_xds_workload::workload::{Identity, TunnelProtocol, Workload};
//!
//! let mut w = Workload::new("cluster1//Pod/shop/web-0", "web-0", "shop");
//! w.addresses = vec!["10.0.0.7".parse().unwrap()];
//! w.protocol = TunnelProtocol::Hbone;
//! w.service_account = "web".into();
//!
//! let wire = pb::Workload::from(&w);
//! assert_eq!(wire.addresses[0].as_ref(), [10, 0, 0, 7]);
//! assert_eq!(Workload::try_from(&wire), Ok(w.clone()));
//! assert_eq!(w.identity(), Identity::new("cluster.local", "shop", "web"));
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

mod error;
mod from_pb;
mod identity;
mod network;
mod port;
mod service;
#[cfg(feature = "svid")]
mod spiffe;
mod to_pb;

pub use error::AddressError;
pub(crate) use from_pb::ip_from_bytes;
pub use identity::{Identity, IdentityParseError};
pub use network::{GatewayAddress, GatewayDestination, NamespacedHostname, NetworkAddress};
pub use port::{AppProtocol, Port};
pub use service::{
    HealthPolicy, IpFamilies, LoadBalancing, LoadBalancingMode, LoadBalancingScope, Service,
    ServiceVip, Visibility, WeightedWaypoint,
};
#[cfg(feature = "svid")]
pub use spiffe::{InvalidSpiffeIdentity, NotAnIstioIdentity, SpiffeIdError};
pub(crate) use to_pb::ip_to_bytes;

/// Trust domain assumed when a workload does not name one.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Service account assumed when a workload does not name one.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Cluster id assumed when a workload does not name one.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

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

impl ApplicationTunnel {
    /// Hand-off with `protocol` to `port` (0 keeps the original port).
    pub fn new(protocol: ApplicationTunnelProtocol, port: u16) -> Self {
        Self { protocol, port }
    }
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

/// A workload: one endpoint (a pod, a VM, or endpoints behind a hostname).
///
/// Built from the generated [`Workload`](crate::pb::istio::workload::Workload) with
/// [`TryFrom`]; empty `trust_domain`, `service_account` and `cluster_id` are replaced by
/// [`DEFAULT_TRUST_DOMAIN`], [`DEFAULT_SERVICE_ACCOUNT`] and [`DEFAULT_CLUSTER_ID`], and a
/// missing `capacity` by 1. [`Workload::new`] starts from the same defaults.
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
    /// The workload is enrolled in the mesh but cannot receive HBONE yet ([`protocol`] is
    /// [`TunnelProtocol::None`] for now): a source that requires mutual TLS waits for it
    /// instead of sending plain TCP. Carried as the `Workload.extensions` entry named
    /// [`HBONE_PENDING_EXTENSION`], which upstream ztunnel ignores.
    ///
    /// [`protocol`]: Self::protocol
    pub hbone_pending: bool,
}

/// Name of the `istio.workload.Extension` that marks a [`Workload`] as
/// [`hbone_pending`](Workload::hbone_pending) (its `config` is left unset).
pub const HBONE_PENDING_EXTENSION: &str = "meshwire.io/hbone-pending";

impl Workload {
    /// A workload with this uid, name and namespace; every other field takes the value
    /// the [`TryFrom`] boundary gives a message that leaves it unset: no addresses, no
    /// tunnel (and not pending), healthy, trust domain [`DEFAULT_TRUST_DOMAIN`], service
    /// account [`DEFAULT_SERVICE_ACCOUNT`], cluster [`DEFAULT_CLUSTER_ID`] and capacity 1.
    pub fn new(
        uid: impl Into<String>,
        name: impl Into<String>,
        namespace: impl Into<String>,
    ) -> Self {
        Self {
            uid: uid.into(),
            name: name.into(),
            namespace: namespace.into(),
            addresses: Vec::new(),
            hostname: String::new(),
            network: String::new(),
            protocol: TunnelProtocol::default(),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            service_account: DEFAULT_SERVICE_ACCOUNT.to_owned(),
            waypoint: None,
            network_gateway: None,
            node: String::new(),
            canonical_name: String::new(),
            canonical_revision: String::new(),
            workload_type: WorkloadType::default(),
            workload_name: String::new(),
            native_tunnel: false,
            application_tunnel: None,
            services: BTreeMap::new(),
            authorization_policies: Vec::new(),
            status: HealthStatus::default(),
            cluster_id: DEFAULT_CLUSTER_ID.to_owned(),
            locality: Locality::default(),
            network_mode: NetworkMode::default(),
            capacity: 1,
            hbone_pending: false,
        }
    }

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

/// An `istio.workload.Address` resource: a workload or a service.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Address {
    /// A workload.
    Workload(Arc<Workload>),
    /// A service.
    Service(Arc<Service>),
}

impl Address {
    /// The xDS resource name this address is published under: the workload's uid, or the
    /// service's `namespace/hostname`.
    pub fn name(&self) -> String {
        match self {
            Self::Workload(w) => w.uid.clone(),
            Self::Service(s) => s.key().to_string(),
        }
    }
}
