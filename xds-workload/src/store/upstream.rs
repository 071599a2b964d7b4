//! Where a connection goes: the results of [`WorkloadStore::resolve_upstream`] and
//! [`WorkloadStore::resolve_service_host`], and the port mapping they share.
//!
//! [`WorkloadStore::resolve_upstream`]: super::WorkloadStore::resolve_upstream
//! [`WorkloadStore::resolve_service_host`]: super::WorkloadStore::resolve_service_host

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::state::State;
use crate::workload::{
    HealthPolicy, HealthStatus, LoadBalancingMode, NamespacedHostname, NetworkAddress, Port,
    Service, Workload,
};

/// Where a connection addressed to a destination (`ip:port` on a network) goes, as
/// [`WorkloadStore::resolve_upstream`](super::WorkloadStore::resolve_upstream) finds it.
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
    /// [`LoadBalancingMode::Passthrough`](crate::workload::LoadBalancingMode::Passthrough): the
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
/// [`WorkloadStore::resolve_service_host`](super::WorkloadStore::resolve_service_host).
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
fn target_port(
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
fn endpoint_ip(endpoint: &Workload, like: IpAddr) -> Option<IpAddr> {
    endpoint
        .addresses
        .iter()
        .find(|ip| ip.is_ipv4() == like.is_ipv4())
        .or_else(|| endpoint.addresses.first())
        .copied()
}

impl State {
    pub(super) fn resolve_upstream(
        &self,
        network: &str,
        dst: SocketAddr,
        turn: &AtomicUsize,
    ) -> Upstream {
        let addr = NetworkAddress::new(network, dst.ip());
        let Some(service) = self.service_by_vip(&addr) else {
            return match self.workload_by_address(&addr) {
                Some(workload) => Upstream::Workload {
                    workload,
                    address: dst,
                },
                None => Upstream::Unknown,
            };
        };
        let (mode, health) = match &service.load_balancing {
            Some(lb) => (lb.mode, lb.health_policy),
            None => (LoadBalancingMode::default(), HealthPolicy::default()),
        };
        if mode == LoadBalancingMode::Passthrough {
            return Upstream::ServicePassthrough { service };
        }
        let key = service.key();
        let mut eligible: Vec<(&Arc<Workload>, SocketAddr)> = self
            .endpoints
            .get(&key)
            .into_iter()
            .flat_map(HashMap::values)
            .filter(|w| health == HealthPolicy::AllowAll || w.status == HealthStatus::Healthy)
            .filter_map(|w| {
                let ip = endpoint_ip(w, dst.ip())?;
                let port = target_port(w, &key, Some(&service.ports), dst.port())?;
                Some((w, SocketAddr::new(ip, port)))
            })
            .collect();
        if eligible.is_empty() {
            return Upstream::NoEndpoint { service };
        }
        // Round robin over the eligible endpoints in uid order; the i-th is found without
        // sorting them all.
        let i = turn.fetch_add(1, Ordering::Relaxed) % eligible.len();
        let (_, &mut (workload, address), _) =
            eligible.select_nth_unstable_by(i, |a, b| a.0.uid.cmp(&b.0.uid));
        Upstream::ServiceEndpoint {
            workload: workload.clone(),
            address,
            service,
        }
    }

    pub(super) fn resolve_service_host(
        &self,
        endpoint: &Workload,
        hostname: &str,
        service_port: u16,
    ) -> Option<ServiceHostTarget> {
        let key = endpoint
            .services
            .keys()
            .filter(|k| k.hostname.eq_ignore_ascii_case(hostname))
            .min_by_key(|k| k.namespace != endpoint.namespace)?;
        let service_ports = self.services.get(key).map(|s| s.ports.as_slice());
        let port = target_port(endpoint, key, service_ports, service_port)?;
        Some(ServiceHostTarget {
            service: key.clone(),
            port,
        })
    }
}
