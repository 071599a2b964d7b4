//! Conversions between the workload store's view of a pod and what routing and the HBONE layer
//! take: destinations, `baggage`, canonical addresses.

use std::net::SocketAddr;

use meshwire_hbone::headers::{Baggage, WorkloadBaggage, WorkloadKind};
use meshwire_xds_workload::Workload;
use meshwire_xds_workload::store::Upstream;
use meshwire_xds_workload::workload::{TunnelProtocol, WorkloadType};

use crate::routing::{Destination, DestinationWorkload, ServiceTarget};

/// What the store knows about an outbound destination, as routing takes it: a service VIP
/// resolved to one of its endpoints with the target port, a pod address to the pod.
pub(super) fn destination_of(upstream: &Upstream) -> Destination {
    match upstream {
        Upstream::ServiceEndpoint {
            service,
            workload,
            address,
            ..
        } => {
            let service = ServiceTarget {
                hostname: service.hostname.clone(),
                subject_alt_names: service.subject_alt_names.clone(),
            };
            Destination::Workload(to_destination(workload, *address, Some(service)))
        }
        Upstream::Workload {
            workload, address, ..
        } => Destination::Workload(to_destination(workload, *address, None)),
        Upstream::ServicePassthrough { .. } => Destination::Passthrough,
        Upstream::NoEndpoint { .. } => Destination::ServiceWithoutEndpoints,
        _ => Destination::Unknown,
    }
}

fn to_destination(
    w: &Workload,
    address: SocketAddr,
    service: Option<ServiceTarget>,
) -> DestinationWorkload {
    DestinationWorkload {
        ip: address.ip(),
        port: address.port(),
        hbone: w.protocol == TunnelProtocol::Hbone,
        identity: w.identity().to_string(),
        service,
    }
}

/// The attributes of `w` an HBONE peer learns from `baggage` (request: the source workload;
/// 200 response: the destination workload). Empty attributes are left out.
pub(super) fn workload_baggage(w: &Workload) -> Baggage {
    let kind = match w.workload_type {
        WorkloadType::CronJob => WorkloadKind::CronJob,
        WorkloadType::Pod => WorkloadKind::Pod,
        WorkloadType::Job => WorkloadKind::Job,
        _ => WorkloadKind::Deployment,
    };
    let mut b = WorkloadBaggage::default();
    b.cluster = Some(w.cluster_id.clone());
    b.namespace = Some(w.namespace.clone());
    b.workload = (!w.workload_name.is_empty()).then(|| (kind, w.workload_name.clone()));
    b.service_name = Some(w.canonical_name.clone());
    b.service_version = Some(w.canonical_revision.clone());
    b.region = Some(w.locality.region.clone());
    b.zone = Some(w.locality.zone.clone());
    b.to_baggage()
}

/// `<namespace>/<workload name>` of the peer as its `baggage` describes it; empty when it
/// sent none (the value is the peer's claim, for logs only).
pub(super) fn peer_workload(baggage: Option<&Baggage>) -> String {
    let Some(b) = baggage.map(WorkloadBaggage::from_baggage) else {
        return String::new();
    };
    match (b.namespace, b.workload) {
        (Some(ns), Some((_, name))) => format!("{ns}/{name}"),
        (Some(ns), None) => ns,
        (None, Some((_, name))) => name,
        (None, None) => String::new(),
    }
}

pub(super) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
