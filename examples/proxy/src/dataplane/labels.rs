//! The Istio TCP metric labels of a connection, as ztunnel fills them: who the source and the
//! destination are, and which service the connection was for.

use std::net::IpAddr;
use std::sync::Arc;

use meshwire_hbone::headers::{Baggage, WorkloadBaggage};
use meshwire_xds_workload::store::Upstream;
use meshwire_xds_workload::{NetworkAddress, Service, Workload, WorkloadStore};

use crate::metrics::istio::{Reporter, SecurityPolicy, TcpLabels};

/// An outbound connection: this pod is the source; the destination is the workload and the
/// service the original destination resolved to.
pub(super) fn outbound(
    local: Option<&Workload>,
    upstream: &Upstream,
    security: SecurityPolicy,
) -> TcpLabels {
    let mut labels = TcpLabels::new(Reporter::Source, security);
    if let Some(w) = local {
        labels = labels.source(w);
    }
    if let Some(w) = upstream.workload() {
        labels = labels.destination(w);
    }
    if let Some(s) = upstream.service() {
        labels = labels.destination_service(s);
    }
    labels
}

/// What an inbound connection tells about its client and the service it was for.
#[derive(Debug, Default)]
pub(super) struct InboundClient<'a> {
    /// The client's address (the original client when an HBONE peer forwarded it).
    pub(super) ip: Option<IpAddr>,
    /// The client's SPIFFE ID, verified by mutual TLS.
    pub(super) principal: Option<String>,
    /// The client's description of itself (HBONE `baggage`).
    pub(super) baggage: Option<&'a Baggage>,
    /// The service host name the client addressed (an HBONE authority or `forwarded` host).
    pub(super) host: Option<&'a str>,
}

/// An inbound connection to `local` on `port`: the source is the workload the control plane
/// knows at the client's address, else what the client claims in its `baggage`; the principal
/// only ever comes from mutual TLS.
pub(super) fn inbound(
    store: &WorkloadStore,
    local: &Workload,
    port: u16,
    client: &InboundClient<'_>,
    security: SecurityPolicy,
) -> TcpLabels {
    let mut labels = TcpLabels::new(Reporter::Destination, security);
    if let Some(b) = client.baggage {
        labels = labels.source_claims(&WorkloadBaggage::from_baggage(b));
    }
    if let Some(principal) = &client.principal {
        labels = labels.source_principal(principal.clone());
    }
    let known = client
        .ip
        .and_then(|ip| store.workload_by_address(&NetworkAddress::new(&local.network, ip)));
    if let Some(w) = known {
        labels = labels.source(&w);
    }
    labels = labels.destination(local);
    if let Some(s) = inbound_service(store, local, client.host, port) {
        labels = labels.destination_service(&s);
    }
    labels
}

/// The service an inbound connection was most likely for: the one the client named, if
/// `local` is its endpoint; else the first of `local`'s services (in key order) that maps a
/// port to `port`, by the endpoint's own port list or the service's target ports.
fn inbound_service(
    store: &WorkloadStore,
    local: &Workload,
    host: Option<&str>,
    port: u16,
) -> Option<Arc<Service>> {
    let services = || {
        local.services.iter().filter_map(|(key, ports)| {
            store
                .service_by_hostname(&key.namespace, &key.hostname)
                .map(|s| (s, ports))
        })
    };
    if let Some(host) = host
        && let Some((s, _)) = services().find(|(s, _)| s.hostname.eq_ignore_ascii_case(host))
    {
        return Some(s);
    }
    services()
        .find(|(s, endpoint_ports)| {
            s.ports.iter().any(|p| {
                p.target_port == port
                    || endpoint_ports
                        .iter()
                        .any(|e| e.service_port == p.service_port && e.target_port == port)
            })
        })
        .map(|(s, _)| s)
}
