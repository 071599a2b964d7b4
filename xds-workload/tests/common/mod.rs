//! Fixtures shared by the integration tests and the benchmark.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::Ipv4Addr;

use meshwire_xds_workload::pb::istio::workload as pb;

/// The IPv4 address of test workload `i` (10.0.0.0/8, unique for i < 2^24).
pub(crate) fn workload_ip(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).unwrap_or(u32::MAX) & 0x00ff_ffff;
    Ipv4Addr::from(0x0a00_0000 | i)
}

/// Namespace of test workload `i`.
pub(crate) fn workload_namespace(i: usize) -> String {
    format!("ns-{}", i % 50)
}

/// Uid (and resource name) of test workload `i`.
pub(crate) fn workload_uid(i: usize) -> String {
    format!("cluster1//Pod/{}/pod-{i}", workload_namespace(i))
}

/// A realistic pod workload: one address, HBONE, a node, a service membership.
pub(crate) fn workload(i: usize) -> pb::Workload {
    let namespace = workload_namespace(i);
    let mut services = HashMap::new();
    services.insert(
        format!("{namespace}/svc-{}.{namespace}.svc.cluster.local", i % 100),
        pb::PortList {
            ports: vec![pb::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: 0,
            }],
        },
    );
    pb::Workload {
        uid: workload_uid(i),
        name: format!("pod-{i}"),
        namespace: namespace.clone(),
        addresses: vec![workload_ip(i).octets().to_vec().into()],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        service_account: format!("sa-{}", i % 7),
        node: format!("node-{}", i % 20),
        canonical_name: format!("app-{}", i % 100),
        canonical_revision: "v1".into(),
        workload_name: format!("app-{}", i % 100),
        workload_type: pb::WorkloadType::Deployment as i32,
        cluster_id: "cluster1".into(),
        services,
        ..Default::default()
    }
}
