//! Where a connection goes: the results of [`WorkloadStore::resolve_upstream`] and
//! [`WorkloadStore::resolve_service_host`], and the port mapping they share.
//!
//! [`WorkloadStore::resolve_upstream`]: crate::WorkloadStore::resolve_upstream
//! [`WorkloadStore::resolve_service_host`]: crate::WorkloadStore::resolve_service_host

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::workload::{NamespacedHostname, Port, Service, Workload};

/// Where a connection addressed to a destination (`ip:port` on a network) goes, as
/// [`WorkloadStore::resolve_upstream`](crate::WorkloadStore::resolve_upstream) finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Upstream {
    /// The destination is a service VIP: one of the service's endpoints was chosen and the
    /// service port mapped to the endpoint's port.
    #[non_exhaustive]
    ServiceEndpoint {
        /// The service whose VIP the connection was addressed to.
        service: Arc<Service>,
        /// The chosen endpoint.
        workload: Arc<Workload>,
        /// The endpoint's address (of the destination's IP family when it has one) and
        /// the target port.
        address: SocketAddr,
    },
    /// The destination is the address of a workload; the port is kept.
    #[non_exhaustive]
    Workload {
        /// The workload.
        workload: Arc<Workload>,
        /// The destination, unchanged.
        address: SocketAddr,
    },
    /// The destination is a VIP of a service in
    /// [`LoadBalancingMode::Passthrough`](crate::LoadBalancingMode::Passthrough): the
    /// connection goes to the original destination unchanged.
    #[non_exhaustive]
    ServicePassthrough {
        /// The service.
        service: Arc<Service>,
    },
    /// The destination is a service VIP, but no endpoint can take the connection: none is
    /// eligible under the service's health policy, none has an address, or none maps the
    /// port (neither the endpoint nor the service names a target port for it).
    #[non_exhaustive]
    NoEndpoint {
        /// The service.
        service: Arc<Service>,
    },
    /// Nothing in the store has the destination address.
    Unknown,
}

impl Upstream {
    /// The workload the connection goes to, if one was found.
    pub fn workload(&self) -> Option<&Arc<Workload>> {
        match self {
            Self::ServiceEndpoint { workload, .. } | Self::Workload { workload, .. } => {
                Some(workload)
            }
            _ => None,
        }
    }

    /// The service the destination is a VIP of, if any.
    pub fn service(&self) -> Option<&Arc<Service>> {
        match self {
            Self::ServiceEndpoint { service, .. }
            | Self::ServicePassthrough { service }
            | Self::NoEndpoint { service } => Some(service),
            _ => None,
        }
    }

    /// The address to connect to (workload address and target port), if a workload was
    /// found.
    pub fn address(&self) -> Option<SocketAddr> {
        match self {
            Self::ServiceEndpoint { address, .. } | Self::Workload { address, .. } => {
                Some(*address)
            }
            _ => None,
        }
    }
}

/// A host name a connection named (an HBONE `CONNECT host:port`), resolved to the service
/// an endpoint belongs to and the endpoint's port, by
/// [`WorkloadStore::resolve_service_host`](crate::WorkloadStore::resolve_service_host).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceHostTarget {
    /// The service, `namespace/hostname`.
    pub service: NamespacedHostname,
    /// The port on the endpoint the service port maps to.
    pub port: u16,
}

/// The non-zero target port `ports` give `service_port`.
fn mapped(ports: &[Port], service_port: u16) -> Option<u16> {
    ports
        .iter()
        .find(|p| p.service_port == service_port && p.target_port != 0)
        .map(|p| p.target_port)
}

/// The port on `endpoint` that `service_port` of `service` reaches: the endpoint's own
/// mapping for the service (a named port resolved per endpoint) first, else the service's
/// numeric target port. `None` when neither names a non-zero port.
pub(crate) fn target_port(
    endpoint: &Workload,
    service: &NamespacedHostname,
    service_ports: Option<&[Port]>,
    service_port: u16,
) -> Option<u16> {
    endpoint
        .services
        .get(service)
        .and_then(|ports| mapped(ports, service_port))
        .or_else(|| service_ports.and_then(|ports| mapped(ports, service_port)))
}

/// The address of `endpoint` to reach it on: its first address of the same family as
/// `like`, else its first address.
pub(crate) fn endpoint_ip(endpoint: &Workload, like: IpAddr) -> Option<IpAddr> {
    endpoint
        .addresses
        .iter()
        .find(|ip| ip.is_ipv4() == like.is_ipv4())
        .or_else(|| endpoint.addresses.first())
        .copied()
}
