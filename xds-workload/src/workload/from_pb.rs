//! The [`TryFrom`] boundary: generated `istio.workload` messages to checked domain types.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;

use super::{
    Address, AddressError, AppProtocol, ApplicationTunnel, ApplicationTunnelProtocol,
    DEFAULT_CLUSTER_ID, DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN, GatewayAddress,
    GatewayDestination, HBONE_PENDING_EXTENSION, HealthPolicy, HealthStatus, IpFamilies,
    LoadBalancing, LoadBalancingMode, LoadBalancingScope, Locality, NamespacedHostname,
    NetworkAddress, NetworkMode, Port, Service, ServiceVip, TunnelProtocol, Visibility,
    WeightedWaypoint, Workload, WorkloadType,
};
use crate::pb::istio::workload as pb;

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
            hbone_pending: w
                .extensions
                .iter()
                .any(|e| e.name == HBONE_PENDING_EXTENSION),
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
