//! Routing decisions, kept free of I/O so they can be tested on their own: where an outbound
//! connection goes, and which ports the proxy refuses to proxy to (its own). The destination
//! check of inbound HBONE streams is `meshwire_hbone::ConnectRequest::check_destination`.

use std::net::{IpAddr, SocketAddr};

/// Outbound capture port (REDIRECT target inside each pod).
pub(crate) const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext capture port.
pub(crate) const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// Inbound HBONE port (mutual TLS + HTTP/2 CONNECT).
pub(crate) const HBONE_PORT: u16 = 15008;

/// Ports the proxy never proxies to: its own capture ports (a connection to them would loop).
pub(crate) const ILLEGAL_PORTS: [u16; 3] = [HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT];

/// Text used when a connection would be proxied to one of the proxy's own ports.
pub(crate) const RECURSION: &str = "attempted recursive call to ourselves";

pub(crate) fn is_illegal_port(port: u16) -> bool {
    ILLEGAL_PORTS.contains(&port)
}

/// What the workload store knows about an outbound destination address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Destination {
    /// A workload that has this address.
    Workload(DestinationWorkload),
    /// A service VIP that has no usable endpoint.
    ServiceWithoutEndpoints,
    /// A service VIP whose load balancing sends connections to the original destination.
    Passthrough,
    /// Nothing in the mesh has this address.
    Unknown,
}

/// The workload chosen for an outbound connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DestinationWorkload {
    /// Address to reach the workload on (a pod IP).
    pub(crate) ip: IpAddr,
    /// Port of the application on that workload (the original port, or a service's target port).
    pub(crate) port: u16,
    /// The workload receives HBONE on 15008 (it is enrolled).
    pub(crate) hbone: bool,
    /// SPIFFE ID the workload's certificate must carry.
    pub(crate) identity: String,
    /// The service the connection was addressed to (its VIP), if any.
    pub(crate) service: Option<ServiceTarget>,
}

/// The service an outbound connection was addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceTarget {
    /// Host name of the service (sent as `forwarded` `host=`).
    pub(crate) hostname: String,
    /// Further SPIFFE IDs the endpoint's certificate may carry instead of its own
    /// (the service's `subject_alt_names`).
    pub(crate) subject_alt_names: Vec<String>,
}

/// How to carry one outbound connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OutboundRoute {
    /// Refuse the connection (close it).
    Reject(&'static str),
    /// Plain TCP from the source pod to `dst` (permissive mode: the destination is not enrolled
    /// or not in the mesh).
    Passthrough { dst: SocketAddr },
    /// HBONE: mutual TLS to `next_hop` (port 15008) verifying that the server is one of
    /// `identities` (the workload's own first, then the service's alternative names), then
    /// `CONNECT authority`.
    Hbone {
        next_hop: SocketAddr,
        authority: SocketAddr,
        identities: Vec<String>,
        /// Host name of the service the connection was addressed to.
        service_host: Option<String>,
    },
}

/// Chooses the route of a captured outbound connection whose original destination is
/// `original_dst`, given what the store knows about it.
pub(crate) fn outbound_route(original_dst: SocketAddr, destination: &Destination) -> OutboundRoute {
    if original_dst.ip().is_loopback() && is_illegal_port(original_dst.port()) {
        return OutboundRoute::Reject(RECURSION);
    }
    match destination {
        Destination::Unknown | Destination::Passthrough => {
            OutboundRoute::Passthrough { dst: original_dst }
        }
        Destination::ServiceWithoutEndpoints => OutboundRoute::Reject("no healthy upstream"),
        Destination::Workload(w) if w.hbone => {
            let mut identities = vec![w.identity.clone()];
            if let Some(service) = &w.service {
                for san in &service.subject_alt_names {
                    if !identities.contains(san) {
                        identities.push(san.clone());
                    }
                }
            }
            OutboundRoute::Hbone {
                next_hop: SocketAddr::new(w.ip, HBONE_PORT),
                authority: SocketAddr::new(w.ip, w.port),
                identities,
                service_host: w.service.as_ref().map(|s| s.hostname.clone()),
            }
        }
        Destination::Workload(w) => OutboundRoute::Passthrough {
            dst: SocketAddr::new(w.ip, w.port),
        },
    }
}

/// Checks the original destination of a plaintext connection captured on 15006.
pub(crate) fn inbound_plaintext_target(
    original_dst: SocketAddr,
) -> Result<SocketAddr, &'static str> {
    if is_illegal_port(original_dst.port()) {
        return Err(RECURSION);
    }
    Ok(SocketAddr::new(
        original_dst.ip().to_canonical(),
        original_dst.port(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn workload(ip: &str, port: u16, hbone: bool) -> Destination {
        Destination::Workload(DestinationWorkload {
            ip: ip.parse().unwrap(),
            port,
            hbone,
            identity: "spiffe://cluster.local/ns/shop/sa/server".into(),
            service: None,
        })
    }

    #[test]
    fn enrolled_destination_goes_over_hbone_to_15008() {
        let route = outbound_route(sa("10.10.2.3:8080"), &workload("10.10.2.3", 8080, true));
        assert_eq!(
            route,
            OutboundRoute::Hbone {
                next_hop: sa("10.10.2.3:15008"),
                authority: sa("10.10.2.3:8080"),
                identities: vec!["spiffe://cluster.local/ns/shop/sa/server".into()],
                service_host: None,
            }
        );
    }

    #[test]
    fn service_addressed_hbone_accepts_the_service_sans() {
        let Destination::Workload(mut w) = workload("10.10.2.3", 8080, true) else {
            unreachable!()
        };
        w.service = Some(ServiceTarget {
            hostname: "web.shop.svc.cluster.local".into(),
            subject_alt_names: vec![
                "spiffe://cluster.local/ns/shop/sa/web".into(),
                "spiffe://cluster.local/ns/shop/sa/server".into(),
            ],
        });
        assert_eq!(
            outbound_route(sa("10.96.0.10:80"), &Destination::Workload(w)),
            OutboundRoute::Hbone {
                next_hop: sa("10.10.2.3:15008"),
                authority: sa("10.10.2.3:8080"),
                identities: vec![
                    "spiffe://cluster.local/ns/shop/sa/server".into(),
                    "spiffe://cluster.local/ns/shop/sa/web".into(),
                ],
                service_host: Some("web.shop.svc.cluster.local".into()),
            }
        );
    }

    #[test]
    fn ipv6_destination_keeps_its_family() {
        let route = outbound_route(sa("[fd00::5]:80"), &workload("fd00::5", 80, true));
        let OutboundRoute::Hbone {
            next_hop,
            authority,
            ..
        } = route
        else {
            panic!("expected HBONE, got {route:?}");
        };
        assert_eq!(next_hop, sa("[fd00::5]:15008"));
        assert_eq!(authority, sa("[fd00::5]:80"));
    }

    #[test]
    fn non_enrolled_destination_is_passed_through() {
        assert_eq!(
            outbound_route(sa("10.10.2.4:8080"), &workload("10.10.2.4", 8080, false)),
            OutboundRoute::Passthrough {
                dst: sa("10.10.2.4:8080")
            }
        );
    }

    #[test]
    fn unknown_destination_is_passed_through() {
        assert_eq!(
            outbound_route(sa("192.0.2.1:443"), &Destination::Unknown),
            OutboundRoute::Passthrough {
                dst: sa("192.0.2.1:443")
            }
        );
        // Reaching a proxy port of another (non-loopback) address is not a loop.
        assert_eq!(
            outbound_route(sa("192.0.2.1:15008"), &Destination::Unknown),
            OutboundRoute::Passthrough {
                dst: sa("192.0.2.1:15008")
            }
        );
    }

    #[test]
    fn loopback_proxy_ports_are_refused() {
        for port in ILLEGAL_PORTS {
            for ip in ["127.0.0.1", "[::1]"] {
                let dst = sa(&format!("{ip}:{port}"));
                assert_eq!(
                    outbound_route(dst, &Destination::Unknown),
                    OutboundRoute::Reject(RECURSION)
                );
            }
        }
        assert_eq!(
            outbound_route(sa("127.0.0.1:8080"), &Destination::Unknown),
            OutboundRoute::Passthrough {
                dst: sa("127.0.0.1:8080")
            }
        );
    }

    #[test]
    fn passthrough_service_keeps_the_original_destination() {
        assert_eq!(
            outbound_route(sa("10.96.0.10:80"), &Destination::Passthrough),
            OutboundRoute::Passthrough {
                dst: sa("10.96.0.10:80")
            }
        );
    }

    #[test]
    fn service_without_endpoints_is_refused() {
        assert!(matches!(
            outbound_route(sa("10.96.0.10:80"), &Destination::ServiceWithoutEndpoints),
            OutboundRoute::Reject(_)
        ));
    }

    #[test]
    fn service_target_port_is_used() {
        // A service VIP resolved to an endpoint: connect to the endpoint with the target port.
        assert_eq!(
            outbound_route(sa("10.96.0.10:80"), &workload("10.10.2.3", 8080, false)),
            OutboundRoute::Passthrough {
                dst: sa("10.10.2.3:8080")
            }
        );
    }

    #[test]
    fn the_capture_ports_are_illegal() {
        for port in [15001, 15006, 15008] {
            assert!(is_illegal_port(port), "{port}");
        }
        for port in [0, 80, 15000, 15007, 15009, 15020, 15021] {
            assert!(!is_illegal_port(port), "{port}");
        }
    }

    #[test]
    fn plaintext_inbound_refuses_proxy_ports() {
        assert_eq!(
            inbound_plaintext_target(sa("10.10.2.3:15006")),
            Err(RECURSION)
        );
        assert_eq!(
            inbound_plaintext_target(sa("[::ffff:10.10.2.3]:80")),
            Ok(sa("10.10.2.3:80"))
        );
    }
}
