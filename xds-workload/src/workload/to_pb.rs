//! Domain types back to generated `istio.workload` messages, for control planes that
//! publish what they build as domain types.
//!
//! Every conversion keeps what the [`TryFrom`] boundary reads, so converting back gives an
//! equal value. Defaults are written out (a workload's trust domain is sent even when it is
//! [`DEFAULT_TRUST_DOMAIN`](super::DEFAULT_TRUST_DOMAIN)); the only `Workload.extensions`
//! entry written is the [`HBONE_PENDING_EXTENSION`] marker; other extensions (which the
//! domain types do not keep) and every service extension are left out.

use std::net::IpAddr;

use super::{
    Address, AppProtocol, ApplicationTunnelProtocol, GatewayAddress, GatewayDestination,
    HBONE_PENDING_EXTENSION, HealthPolicy, HealthStatus, IpFamilies, LoadBalancing,
    LoadBalancingMode, LoadBalancingScope, Locality, NetworkAddress, NetworkMode, Port, Service,
    ServiceVip, TunnelProtocol, Visibility, Workload, WorkloadType,
};
use crate::pb::istio::workload as pb;

/// The 4 or 16 bytes of `ip`, as the wire carries addresses.
pub(crate) fn ip_to_bytes(ip: IpAddr) -> bytes::Bytes {
    match ip {
        IpAddr::V4(a) => bytes::Bytes::copy_from_slice(&a.octets()),
        IpAddr::V6(a) => bytes::Bytes::copy_from_slice(&a.octets()),
    }
}

impl From<&NetworkAddress> for pb::NetworkAddress {
    fn from(a: &NetworkAddress) -> Self {
        Self {
            network: a.network.clone(),
            address: ip_to_bytes(a.address),
            length: None,
        }
    }
}

impl From<&GatewayAddress> for pb::GatewayAddress {
    fn from(g: &GatewayAddress) -> Self {
        let destination = match &g.destination {
            GatewayDestination::Hostname(h) => {
                pb::gateway_address::Destination::Hostname(pb::NamespacedHostname {
                    namespace: h.namespace.clone(),
                    hostname: h.hostname.clone(),
                })
            }
            GatewayDestination::Address(a) => pb::gateway_address::Destination::Address(a.into()),
        };
        Self {
            hbone_mtls_port: u32::from(g.hbone_mtls_port),
            destination: Some(destination),
        }
    }
}

impl From<AppProtocol> for pb::AppProtocol {
    fn from(p: AppProtocol) -> Self {
        match p {
            AppProtocol::Unknown => Self::Unknown,
            AppProtocol::Http11 => Self::Http11,
            AppProtocol::Http2 => Self::Http2,
            AppProtocol::Grpc => Self::Grpc,
            AppProtocol::Tcp => Self::Tcp,
            AppProtocol::Tls => Self::Tls,
        }
    }
}

impl From<&Port> for pb::Port {
    fn from(p: &Port) -> Self {
        Self {
            service_port: u32::from(p.service_port),
            target_port: u32::from(p.target_port),
            app_protocol: pb::AppProtocol::from(p.app_protocol) as i32,
        }
    }
}

fn ports(ports: &[Port]) -> Vec<pb::Port> {
    ports.iter().map(pb::Port::from).collect()
}

fn locality(l: &Locality) -> Option<pb::Locality> {
    // An absent locality reads as the empty one.
    (*l != Locality::default()).then(|| pb::Locality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        subzone: l.subzone.clone(),
    })
}

impl From<&Workload> for pb::Workload {
    fn from(w: &Workload) -> Self {
        Self {
            uid: w.uid.clone(),
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            addresses: w.addresses.iter().map(|ip| ip_to_bytes(*ip)).collect(),
            hostname: w.hostname.clone(),
            network: w.network.clone(),
            tunnel_protocol: match w.protocol {
                TunnelProtocol::None => pb::TunnelProtocol::None,
                TunnelProtocol::Hbone => pb::TunnelProtocol::Hbone,
            } as i32,
            trust_domain: w.trust_domain.clone(),
            service_account: w.service_account.clone(),
            waypoint: w.waypoint.as_ref().map(Into::into),
            network_gateway: w.network_gateway.as_ref().map(Into::into),
            node: w.node.clone(),
            canonical_name: w.canonical_name.clone(),
            canonical_revision: w.canonical_revision.clone(),
            workload_type: match w.workload_type {
                WorkloadType::Deployment => pb::WorkloadType::Deployment,
                WorkloadType::CronJob => pb::WorkloadType::Cronjob,
                WorkloadType::Pod => pb::WorkloadType::Pod,
                WorkloadType::Job => pb::WorkloadType::Job,
            } as i32,
            workload_name: w.workload_name.clone(),
            native_tunnel: w.native_tunnel,
            application_tunnel: w.application_tunnel.map(|t| pb::ApplicationTunnel {
                protocol: match t.protocol {
                    ApplicationTunnelProtocol::None => pb::application_tunnel::Protocol::None,
                    ApplicationTunnelProtocol::Proxy => pb::application_tunnel::Protocol::Proxy,
                } as i32,
                port: u32::from(t.port),
            }),
            services: w
                .services
                .iter()
                .map(|(key, list)| {
                    let list = pb::PortList { ports: ports(list) };
                    (key.to_string(), list)
                })
                .collect(),
            authorization_policies: w.authorization_policies.clone(),
            status: match w.status {
                HealthStatus::Healthy => pb::WorkloadStatus::Healthy,
                HealthStatus::Unhealthy => pb::WorkloadStatus::Unhealthy,
            } as i32,
            cluster_id: w.cluster_id.clone(),
            locality: locality(&w.locality),
            network_mode: match w.network_mode {
                NetworkMode::Standard => pb::NetworkMode::Standard,
                NetworkMode::HostNetwork => pb::NetworkMode::HostNetwork,
            } as i32,
            extensions: w
                .hbone_pending
                .then(|| pb::Extension {
                    name: HBONE_PENDING_EXTENSION.to_owned(),
                    config: None,
                })
                .into_iter()
                .collect(),
            capacity: Some(w.capacity),
        }
    }
}

impl From<&ServiceVip> for pb::NetworkAddress {
    fn from(vip: &ServiceVip) -> Self {
        Self {
            network: vip.network.clone(),
            address: ip_to_bytes(vip.prefix.addr()),
            // A host VIP leaves the length out, as control planes send it.
            length: (!vip.is_host()).then(|| u32::from(vip.prefix.prefix_len())),
        }
    }
}

impl From<&LoadBalancing> for pb::LoadBalancing {
    fn from(lb: &LoadBalancing) -> Self {
        use pb::load_balancing::{HealthPolicy as H, Mode as M, Scope as S};
        Self {
            routing_preference: lb
                .routing_preference
                .iter()
                .map(|scope| {
                    (match scope {
                        LoadBalancingScope::Region => S::Region,
                        LoadBalancingScope::Zone => S::Zone,
                        LoadBalancingScope::Subzone => S::Subzone,
                        LoadBalancingScope::Node => S::Node,
                        LoadBalancingScope::Cluster => S::Cluster,
                        LoadBalancingScope::Network => S::Network,
                    }) as i32
                })
                .collect(),
            mode: match lb.mode {
                LoadBalancingMode::Unspecified => M::UnspecifiedMode,
                LoadBalancingMode::Strict => M::Strict,
                LoadBalancingMode::Failover => M::Failover,
                LoadBalancingMode::Passthrough => M::Passthrough,
            } as i32,
            health_policy: match lb.health_policy {
                HealthPolicy::OnlyHealthy => H::OnlyHealthy,
                HealthPolicy::AllowAll => H::AllowAll,
            } as i32,
        }
    }
}

impl From<&Service> for pb::Service {
    fn from(s: &Service) -> Self {
        Self {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            hostname: s.hostname.clone(),
            addresses: s.vips.iter().map(Into::into).collect(),
            ports: ports(&s.ports),
            subject_alt_names: s.subject_alt_names.clone(),
            waypoint: s.waypoint.as_ref().map(Into::into),
            load_balancing: s.load_balancing.as_ref().map(Into::into),
            ip_families: match s.ip_families {
                IpFamilies::Automatic => pb::IpFamilies::Automatic,
                IpFamilies::Ipv4Only => pb::IpFamilies::Ipv4Only,
                IpFamilies::Ipv6Only => pb::IpFamilies::Ipv6Only,
                IpFamilies::Dual => pb::IpFamilies::Dual,
            } as i32,
            extensions: Vec::new(),
            canonical: s.canonical,
            ingress_use_waypoint: s.ingress_use_waypoint,
            weighted_waypoints: s
                .weighted_waypoints
                .iter()
                .map(|w| pb::WeightedWaypoint {
                    destination: Some((&w.destination).into()),
                    weight: w.weight,
                })
                .collect(),
            visibility: match s.visibility {
                Visibility::Public => pb::service::Visibility::Public,
                Visibility::Namespace => pb::service::Visibility::Namespace,
            } as i32,
        }
    }
}

impl From<&Address> for pb::Address {
    fn from(a: &Address) -> Self {
        let r#type = match a {
            Address::Workload(w) => pb::address::Type::Workload(w.as_ref().into()),
            Address::Service(s) => pb::address::Type::Service(s.as_ref().into()),
        };
        Self {
            r#type: Some(r#type),
        }
    }
}
