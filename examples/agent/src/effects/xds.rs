//! Publishing the workload view and the policies through the `xds-workload` server.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use meshwire_xds_workload::ads::server::{AdsServer, ResourceChange, ServerEvent};
use meshwire_xds_workload::pb::istio::security as sec;
use meshwire_xds_workload::pb::istio::workload as wl;
use meshwire_xds_workload::resource::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::desired::{RemoteReady, Settings, WorkloadView, workload_views};
use crate::effects::next_event;
use crate::metrics::Metrics;
use crate::reconcile::Publisher;
use crate::status::StatusWriter;
use crate::workloads::{Cluster, Destination, Policy, PolicyAction, Source};

/// The wire form of one pod.
pub(crate) fn workload_to_pb(v: &WorkloadView) -> wl::Workload {
    wl::Workload {
        uid: v.uid.clone(),
        name: v.name.clone(),
        namespace: v.namespace.clone(),
        addresses: v
            .addresses
            .iter()
            .map(|ip| match ip {
                std::net::IpAddr::V4(a) => a.octets().to_vec().into(),
                std::net::IpAddr::V6(a) => a.octets().to_vec().into(),
            })
            .collect(),
        tunnel_protocol: if v.hbone {
            wl::TunnelProtocol::Hbone
        } else {
            wl::TunnelProtocol::None
        } as i32,
        trust_domain: v.trust_domain.clone(),
        service_account: v.service_account.clone(),
        node: v.node.clone(),
        cluster_id: v.cluster_id.clone(),
        canonical_name: v.name.clone(),
        workload_name: v.name.clone(),
        workload_type: wl::WorkloadType::Pod as i32,
        ..Default::default()
    }
}

/// `*` is presence, `*x` a suffix, `x*` a prefix, anything else exact.
fn string_match(s: &str) -> sec::StringMatch {
    use sec::string_match::MatchType;
    let m = if s == "*" {
        MatchType::Presence(())
    } else if let Some(rest) = s.strip_prefix('*') {
        MatchType::Suffix(rest.to_owned())
    } else if let Some(rest) = s.strip_suffix('*') {
        MatchType::Prefix(rest.to_owned())
    } else {
        MatchType::Exact(s.to_owned())
    };
    sec::StringMatch {
        match_type: Some(m),
    }
}

/// Principals are matched without the `spiffe://` scheme; accept either spelling.
fn principal_match(s: &str) -> sec::StringMatch {
    string_match(s.strip_prefix("spiffe://").unwrap_or(s))
}

fn address(net: &IpNet) -> sec::Address {
    let bytes = match net.network() {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    sec::Address {
        address: bytes.into(),
        length: u32::from(net.prefix_len()),
    }
}

fn source_match(s: &Source) -> sec::Match {
    sec::Match {
        principals: s.principals.iter().map(|p| principal_match(p)).collect(),
        not_principals: s
            .not_principals
            .iter()
            .map(|p| principal_match(p))
            .collect(),
        namespaces: s.namespaces.iter().map(|n| string_match(n)).collect(),
        not_namespaces: s.not_namespaces.iter().map(|n| string_match(n)).collect(),
        source_ips: s.ip_blocks.iter().map(address).collect(),
        not_source_ips: s.not_ip_blocks.iter().map(address).collect(),
        ..Default::default()
    }
}

fn destination_match(d: &Destination) -> sec::Match {
    sec::Match {
        destination_ports: d.ports.iter().map(|p| u32::from(*p)).collect(),
        not_destination_ports: d.not_ports.iter().map(|p| u32::from(*p)).collect(),
        ..Default::default()
    }
}

/// The wire form of a policy: each rule holds one clause for its `from` entries (any may
/// match) and one for its `to` entries; both must match.
pub(crate) fn policy_to_pb(p: &Policy) -> sec::Authorization {
    sec::Authorization {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        scope: sec::Scope::Namespace as i32,
        action: match p.action {
            PolicyAction::Allow => sec::Action::Allow,
            PolicyAction::Deny => sec::Action::Deny,
        } as i32,
        rules: p
            .rules
            .iter()
            .map(|r| {
                let mut clauses = Vec::new();
                if !r.from.is_empty() {
                    clauses.push(sec::Clause {
                        matches: r.from.iter().map(source_match).collect(),
                    });
                }
                if !r.to.is_empty() {
                    clauses.push(sec::Clause {
                        matches: r.to.iter().map(destination_match).collect(),
                    });
                }
                sec::Rule { clauses }
            })
            .collect(),
        dry_run: false,
        extensions: Vec::new(),
    }
}

fn into_entry(change: ResourceChange) -> Option<(String, prost_types::Any)> {
    match change {
        ResourceChange::Upsert { name, resource } => Some((name, resource)),
        _ => None,
    }
}

/// [`Publisher`] over an [`AdsServer`]; also reports this node's enrolled pods in its status
/// file, and gates the pods of other nodes on their nodes' reports.
#[derive(Debug)]
pub(crate) struct XdsPublisher {
    server: AdsServer,
    settings: Settings,
    /// The other nodes' reports (always [`RemoteReady::Ungated`] without a status directory).
    remote: watch::Receiver<Arc<RemoteReady>>,
    /// This node's status file, if the status directory is in use.
    status: Option<Mutex<StatusWriter>>,
}

impl XdsPublisher {
    pub(crate) fn new(
        server: AdsServer,
        settings: Settings,
        remote: watch::Receiver<Arc<RemoteReady>>,
        status: Option<StatusWriter>,
    ) -> Self {
        Self {
            server,
            settings,
            remote,
            status: status.map(Mutex::new),
        }
    }

    /// Writes this node's status file when the set of its enrolled pods changed. Called
    /// before each xDS update, so a pod is dropped from the status before its rules go.
    fn report(&self, hbone_ready: &BTreeSet<String>) {
        let Some(status) = &self.status else {
            return;
        };
        let mut status = match status.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        match status.store(hbone_ready) {
            Ok(true) => {
                debug!(file = %status.path().display(), pods = hbone_ready.len(), "pod status file written");
            }
            Ok(false) => {}
            Err(e) => {
                warn!(file = %status.path().display(), error = %e, "cannot write the pod status file; other nodes keep the previous status");
            }
        }
    }
}

impl Publisher for XdsPublisher {
    fn publish(&self, cluster: &Cluster, hbone_ready: &BTreeSet<String>) {
        self.report(hbone_ready);
        let remote = self.remote.borrow().clone();
        let views = workload_views(cluster, &self.settings, hbone_ready, &remote);
        let hbone = views.iter().filter(|v| v.hbone).count();
        let workloads = self.server.replace(
            ADDRESS_TYPE_URL,
            views
                .iter()
                .filter_map(|v| into_entry(ResourceChange::workload(workload_to_pb(v)))),
        );
        let policies = self.server.replace(
            AUTHORIZATION_TYPE_URL,
            cluster
                .policies
                .iter()
                .filter_map(|p| into_entry(ResourceChange::authorization(&policy_to_pb(p)))),
        );
        if workloads + policies > 0 {
            info!(
                workloads = views.len(),
                hbone,
                policies = cluster.policies.len(),
                changed = workloads + policies,
                "xDS resources updated"
            );
        }
    }
}

/// Logs xDS stream events and keeps the subscriber and NACK metrics.
pub(crate) async fn follow_events(
    mut events: broadcast::Receiver<ServerEvent>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    while let Some(event) = next_event(&mut events, &shutdown).await {
        match event {
            Ok(ServerEvent::Connected { stream, node_id }) => {
                info!(stream, node = %node_id, "proxy subscribed to xDS");
                metrics.xds_subscribers.inc();
            }
            Ok(ServerEvent::Nack {
                stream,
                node_id,
                type_url,
                nonce,
                code,
                message,
            }) => {
                warn!(stream, node = %node_id, %type_url, %nonce, code, %message, "proxy NACKed an xDS response");
                metrics.xds_nacks.inc();
            }
            Ok(ServerEvent::Disconnected { stream, node_id }) => {
                info!(stream, node = %node_id, "xDS stream closed");
                metrics.xds_subscribers.dec();
            }
            Ok(ServerEvent::Sent {
                stream,
                type_url,
                resources,
                removed,
                ..
            }) => {
                debug!(stream, %type_url, resources, removed, "xDS response sent");
            }
            Ok(other) => debug!(event = ?other, "xDS event"),
            Err(missed) => warn!(missed, "missed xDS events"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::tests::{EXAMPLE, settings};
    use meshwire_xds_workload::authorization::{AuthorizationPolicy, ConnectionInfo, evaluate};
    use std::net::IpAddr;

    #[test]
    fn workloads_convert_and_pass_the_checked_boundary() {
        let c = Cluster::from_yaml(EXAMPLE).unwrap();
        let views = workload_views(
            &c,
            &settings("node-1"),
            &BTreeSet::from(["8d2f-1".to_owned()]),
            &RemoteReady::Ungated,
        );
        for v in &views {
            let pb = workload_to_pb(v);
            let checked = meshwire_xds_workload::Workload::try_from(pb).expect("valid workload");
            assert_eq!(checked.uid, v.uid);
            assert_eq!(checked.name, v.name);
            assert_eq!(checked.namespace, v.namespace);
            assert_eq!(checked.service_account, v.service_account);
            assert_eq!(checked.node, v.node);
            assert_eq!(checked.trust_domain, "cluster.local");
            assert_eq!(checked.addresses, v.addresses);
            assert_eq!(
                checked.protocol == meshwire_xds_workload::workload::TunnelProtocol::Hbone,
                v.hbone,
                "{}",
                v.uid
            );
        }
        let server = views.iter().find(|v| v.uid == "shop/server-1").unwrap();
        assert_eq!(workload_to_pb(server).addresses[1].len(), 16);
    }

    fn conn(src: &str, principal: Option<&str>, port: u16) -> ConnectionInfo {
        ConnectionInfo::new(
            src.parse::<IpAddr>().unwrap(),
            std::net::SocketAddr::new("10.10.2.2".parse().unwrap(), port),
            principal.map(|p| p.parse::<meshwire_xds_workload::Identity>().unwrap()),
        )
    }

    fn decide(policies: &[AuthorizationPolicy], c: &ConnectionInfo) -> bool {
        evaluate(policies.iter(), c).decision.is_allowed()
    }

    #[test]
    fn policies_keep_their_meaning_on_the_wire() {
        let c = Cluster::from_yaml(
            r#"
namespaces: [{name: shop}]
policies:
  - name: deny-intruder
    namespace: shop
    action: deny
    rules:
      - from:
          - principals: ["cluster.local/ns/shop/sa/intruder"]
  - name: allow-shop
    namespace: shop
    action: allow
    rules:
      - from:
          - principals: ["spiffe://cluster.local/ns/shop/*"]
          - ipBlocks: ["10.99.0.0/16"]
        to:
          - ports: [8080]
"#,
        )
        .unwrap();
        let policies: Vec<AuthorizationPolicy> = c
            .policies
            .iter()
            .map(|p| AuthorizationPolicy::try_from(policy_to_pb(p)).expect("valid policy"))
            .collect();
        let id = |sa: &str| format!("spiffe://cluster.local/ns/shop/sa/{sa}");
        assert!(
            !decide(&policies, &conn("10.10.1.2", Some(&id("intruder")), 8080)),
            "denied SA"
        );
        assert!(
            decide(&policies, &conn("10.10.1.2", Some(&id("client")), 8080)),
            "allowed SA"
        );
        assert!(
            !decide(&policies, &conn("10.10.1.2", Some(&id("client")), 9090)),
            "wrong port"
        );
        assert!(
            !decide(&policies, &conn("10.10.1.2", None, 8080)),
            "plaintext, not in block"
        );
        assert!(
            decide(&policies, &conn("10.99.3.4", None, 8080)),
            "plaintext from allowed block"
        );
    }
}
