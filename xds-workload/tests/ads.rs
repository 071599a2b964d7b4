//! Delta ADS client and server against each other over loopback gRPC: sync, updates,
//! NACKs, reconnects, several clients, named subscriptions and limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ads_support;
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use meshwire_xds_workload::ads::client::ClientEvent;
use meshwire_xds_workload::ads::server::{AdsServer, ResourceChange, ServerConfig, ServerEvent};
use meshwire_xds_workload::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use meshwire_xds_workload::pb::istio::security as spb;
use meshwire_xds_workload::pb::istio::workload as pb;
use meshwire_xds_workload::resource::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use meshwire_xds_workload::{NetworkAddress, WorkloadStore};

use ads_support::{
    RunningClient, RunningServer, ip, publish_workloads, raw_stream, serve_workloads, settle,
    wait_event, wait_store,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_of_10000_workloads() {
    const N: usize = 10_000;
    let server = AdsServer::new(ServerConfig::default());
    let started = Instant::now();
    publish_workloads(&server, 0..N);
    let publish_time = started.elapsed();
    let running = RunningServer::start(&server).await;
    let mut events = server.events();

    let started = Instant::now();
    let client = RunningClient::synced(running.addr, "node-sync").await;
    let sync_time = started.elapsed();
    println!(
        "initial sync of {N} workloads: {:.1} ms (server publish {:.1} ms, {} build)",
        sync_time.as_secs_f64() * 1e3,
        publish_time.as_secs_f64() * 1e3,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );

    assert_eq!(client.store.workload_count(), N);
    for i in [0, 1, 4999, N - 1] {
        let w = client.store.workload_by_address(&ip(i)).unwrap();
        assert_eq!(w.uid, common::workload_uid(i));
        assert_eq!(w.trust_domain, "cluster.local");
    }
    assert_eq!(client.store.workloads_on_node("node-3").len(), N / 20);

    // The Address snapshot went out as one response; Authorization (never published) as
    // one empty response.
    let sent = wait_event(&mut events, |e| match e {
        ServerEvent::Sent {
            type_url,
            resources,
            ..
        } if type_url == ADDRESS_TYPE_URL => Some(*resources),
        _ => None,
    })
    .await;
    assert_eq!(sent, N);
    let stats = server.stats();
    assert_eq!(stats.responses, 2);
    assert_eq!(stats.resources, N as u64);

    client.stop().await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_and_removals_propagate() {
    let server = AdsServer::default();
    let running = serve_workloads(&server, 0..3).await;
    let client = RunningClient::synced(running.addr, "node-upd").await;
    assert_eq!(client.store.workload_count(), 3);

    // Workload 1 moves to a new address; workload 2 goes away.
    let mut moved = common::workload(1);
    moved.addresses = vec![vec![192, 168, 9, 9].into()];
    server.publish(ADDRESS_TYPE_URL, [ResourceChange::workload(moved)]);
    server.publish(
        ADDRESS_TYPE_URL,
        [ResourceChange::remove(common::workload_uid(2))],
    );
    let new_addr = NetworkAddress::new("", IpAddr::V4(Ipv4Addr::new(192, 168, 9, 9)));
    wait_store(&client.store, "update and removal", |s| {
        s.workload_by_address(&new_addr).is_some() && s.workload_count() == 2
    })
    .await;
    assert!(client.store.workload_by_address(&ip(1)).is_none());
    assert!(
        client
            .store
            .workload_by_uid(&common::workload_uid(2))
            .is_none()
    );
    assert!(client.store.workload_by_address(&ip(0)).is_some());

    // A service and a policy arrive and leave the same way.
    let service = pb::Service {
        name: "web".into(),
        namespace: "ns-0".into(),
        hostname: "web.ns-0.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: vec![172, 16, 0, 10].into(),
            length: None,
        }],
        ..Default::default()
    };
    server.publish(ADDRESS_TYPE_URL, [ResourceChange::service(service)]);
    let policy = spb::Authorization {
        name: "deny-all".into(),
        namespace: "ns-0".into(),
        scope: spb::Scope::Namespace as i32,
        action: spb::Action::Deny as i32,
        rules: vec![spb::Rule { clauses: vec![] }],
        ..Default::default()
    };
    server.publish(
        AUTHORIZATION_TYPE_URL,
        [ResourceChange::authorization(&policy)],
    );
    wait_store(&client.store, "service and policy", |s| {
        s.service_by_hostname("ns-0", "web.ns-0.svc.cluster.local")
            .is_some()
            && s.policy("ns-0/deny-all").is_some()
    })
    .await;
    server.publish(
        ADDRESS_TYPE_URL,
        [ResourceChange::remove("ns-0/web.ns-0.svc.cluster.local")],
    );
    server.publish(
        AUTHORIZATION_TYPE_URL,
        [ResourceChange::remove("ns-0/deny-all")],
    );
    wait_store(&client.store, "service and policy removal", |s| {
        s.service_count() == 0 && s.policy_count() == 0
    })
    .await;

    // Republishing identical content pushes nothing.
    let before = server.stats();
    assert_eq!(
        server.publish(
            ADDRESS_TYPE_URL,
            [ResourceChange::workload(common::workload(0))]
        ),
        0
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.stats().responses, before.responses);

    client.stop().await;
    running.shutdown().await;
}

fn bad_workload(uid: &str) -> ResourceChange {
    let mut w = common::workload(9_000);
    w.uid = uid.into();
    w.addresses = vec![vec![10, 0, 0, 1, 2].into()]; // five bytes
    ResourceChange::workload(w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_resource_is_nacked_while_good_ones_apply() {
    let server = AdsServer::default();
    let running = serve_workloads(&server, 0..2).await;
    let mut server_events = server.events();
    let mut client = RunningClient::synced(running.addr, "node-nack").await;

    // One response: two good workloads, one with a five-byte address, one undecodable.
    let changes = vec![
        ResourceChange::workload(common::workload(2)),
        bad_workload("bad-length"),
        ResourceChange::upsert_any(
            "garbage",
            prost_types::Any {
                type_url: "type.googleapis.com/istio.workload.Address".into(),
                value: vec![0x0a, 0xff, 0xff], // field 1, length beyond the end
            },
        ),
        ResourceChange::workload(common::workload(3)),
    ];
    assert_eq!(server.publish(ADDRESS_TYPE_URL, changes), 4);

    let (node, code, message) = wait_event(&mut server_events, |e| match e {
        ServerEvent::Nack {
            node_id,
            type_url,
            code,
            message,
            ..
        } if type_url == ADDRESS_TYPE_URL => Some((node_id.clone(), *code, message.clone())),
        _ => None,
    })
    .await;
    assert_eq!(node, "node-nack");
    // The NACK is recognised by `error_detail` being present; its code is left unset.
    assert_eq!(code, 0);
    assert!(
        message.contains("bad-length: addresses: invalid IP address length 5"),
        "{message}"
    );
    assert!(message.contains("garbage: decode"), "{message}");
    assert!(!message.contains("pod-2"), "{message}");

    let rejected = wait_event(&mut client.events, |e| match e {
        ClientEvent::Applied { rejected, .. } if !rejected.is_empty() => Some(rejected.clone()),
        _ => None,
    })
    .await;
    assert_eq!(rejected.len(), 2);

    // The good ones of the same response were applied.
    assert!(
        client
            .store
            .workload_by_uid(&common::workload_uid(2))
            .is_some()
    );
    assert!(
        client
            .store
            .workload_by_uid(&common::workload_uid(3))
            .is_some()
    );
    assert!(client.store.workload_by_uid("bad-length").is_none());
    assert_eq!(client.store.workload_count(), 4);

    // The server does not resend the rejected versions.
    let after_nack = server.stats();
    assert_eq!(after_nack.nacks, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = server.stats();
    assert_eq!(later.responses, after_nack.responses);
    assert_eq!(later.nacks, 1);

    // A corrected version is pushed and accepted as usual.
    let mut fixed = common::workload(9_000);
    fixed.uid = "bad-length".into();
    server.publish(ADDRESS_TYPE_URL, [ResourceChange::workload(fixed)]);
    wait_store(&client.store, "fixed resource", |s| {
        s.workload_by_uid("bad-length").is_some()
    })
    .await;
    assert_eq!(server.stats().nacks, 1);

    client.stop().await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_resource_in_initial_snapshot_does_not_block_sync() {
    let server = AdsServer::default();
    publish_workloads(&server, 0..5);
    server.publish(ADDRESS_TYPE_URL, [bad_workload("bad")]);
    let running = RunningServer::start(&server).await;
    let client = RunningClient::synced(running.addr, "node-snap").await;
    assert_eq!(client.store.workload_count(), 5);
    assert!(client.store.workload_by_uid("bad").is_none());
    client.stop().await;
    running.shutdown().await;
}

/// Changes applied while a client is away: 5 updated, 2 removed, 3 added.
fn offline_changes(server: &AdsServer, n: usize) {
    let mut changes = Vec::new();
    for i in 0..5 {
        let mut w = common::workload(i);
        w.canonical_revision = "v2".into();
        changes.push(ResourceChange::workload(w));
    }
    changes.push(ResourceChange::remove(common::workload_uid(10)));
    changes.push(ResourceChange::remove(common::workload_uid(11)));
    for i in n..n + 3 {
        changes.push(ResourceChange::workload(common::workload(i)));
    }
    assert_eq!(server.publish(ADDRESS_TYPE_URL, changes), 10);
}

fn reflects_offline_changes(s: &WorkloadStore, n: usize) -> bool {
    s.workload_count() == n + 1
        && (0..5).all(|i| {
            s.workload_by_uid(&common::workload_uid(i))
                .is_some_and(|w| w.canonical_revision == "v2")
        })
        && s.workload_by_uid(&common::workload_uid(10)).is_none()
        && s.workload_by_uid(&common::workload_uid(n + 2)).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_to_same_server_transfers_only_the_difference() {
    const N: usize = 1_000;
    let server = AdsServer::default();
    let running = serve_workloads(&server, 0..N).await;
    let mut client = RunningClient::synced(running.addr, "node-rc").await;
    let before = server.stats();
    assert_eq!(before.resources, N as u64);

    server.disconnect_all();
    offline_changes(&server, N);
    wait_event(&mut client.events, |e| {
        matches!(e, ClientEvent::Disconnected { .. }).then_some(())
    })
    .await;
    wait_store(&client.store, "difference after reconnect", |s| {
        reflects_offline_changes(s, N)
    })
    .await;

    let after = server.stats();
    println!(
        "reconnect: {} resources and {} removals sent for 10 changes among {N}",
        after.resources - before.resources,
        after.removals - before.removals
    );
    assert_eq!(after.resources - before.resources, 8);
    assert_eq!(after.removals - before.removals, 2);

    client.stop().await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_to_restarted_server_transfers_only_the_difference() {
    const N: usize = 1_000;
    let first = AdsServer::default();
    let running = serve_workloads(&first, 0..N).await;
    let addr = running.addr;
    let client = RunningClient::synced(addr, "node-restart").await;
    running.shutdown().await;

    // A new server process on the same address, with the same content plus changes.
    let second = AdsServer::default();
    publish_workloads(&second, 0..N);
    offline_changes(&second, N);
    let running = RunningServer::start_on(&second, addr).await;
    wait_store(&client.store, "difference after restart", |s| {
        reflects_offline_changes(s, N)
    })
    .await;

    let stats = second.stats();
    println!(
        "restart: {} resources and {} removals sent for 10 changes among {N}",
        stats.resources, stats.removals
    );
    assert_eq!(stats.resources, 8);
    assert_eq!(stats.removals, 2);
    assert_eq!(stats.nacks, 0);

    client.stop().await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_clients_each_see_every_event() {
    let server = AdsServer::default();
    let running = serve_workloads(&server, 0..100).await;
    let mut a = RunningClient::start(running.addr, "node-a");
    let mut b = RunningClient::start(running.addr, "node-b");
    a.wait_synced().await;
    b.wait_synced().await;

    // Forty separate events: 20 additions, 10 removals, 10 updates.
    for i in 100..120 {
        server.publish(
            ADDRESS_TYPE_URL,
            [ResourceChange::workload(common::workload(i))],
        );
    }
    for i in 0..10 {
        server.publish(
            ADDRESS_TYPE_URL,
            [ResourceChange::remove(common::workload_uid(i))],
        );
    }
    for i in 50..60 {
        let mut w = common::workload(i);
        w.node = "moved".into();
        server.publish(ADDRESS_TYPE_URL, [ResourceChange::workload(w)]);
    }

    for (label, client) in [("a", &a), ("b", &b)] {
        wait_store(&client.store, label, |s| {
            s.workload_count() == 110
                && (100..120).all(|i| s.workload_by_uid(&common::workload_uid(i)).is_some())
                && (0..10).all(|i| s.workload_by_uid(&common::workload_uid(i)).is_none())
                && s.workloads_on_node("moved").len() == 10
        })
        .await;
    }
    let stats = server.stats();
    assert_eq!(stats.active_streams, 2);
    assert_eq!(stats.nacks, 0);

    a.stop().await;
    b.stop().await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_subscriptions_and_nonces() {
    let server = AdsServer::default();
    let running = serve_workloads(&server, 0..5).await;
    let mut events = server.events();
    let uid0 = common::workload_uid(0);
    let (tx, mut inbound) = raw_stream(
        running.addr,
        [DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE_URL.into(),
            resource_names_subscribe: vec![uid0.clone(), "missing".into()],
            ..Default::default()
        }],
    )
    .await;

    // Only the named resource; an unknown name is reported as removed.
    let first = settle(inbound.message()).await.unwrap().unwrap();
    let names: Vec<_> = first.resources.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, vec![uid0.clone()]);
    assert_eq!(first.removed_resources, vec!["missing".to_owned()]);
    assert!(!first.resources[0].version.is_empty());

    // A change to an unsubscribed resource is not sent; one to a subscribed one is.
    let mut w = common::workload(1);
    w.node = "elsewhere".into();
    server.publish(ADDRESS_TYPE_URL, [ResourceChange::workload(w)]);
    let mut w = common::workload(0);
    w.node = "elsewhere".into();
    server.publish(ADDRESS_TYPE_URL, [ResourceChange::workload(w)]);
    let second = settle(inbound.message()).await.unwrap().unwrap();
    let names: Vec<_> = second.resources.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, vec![uid0.clone()]);
    assert_ne!(second.nonce, first.nonce);

    // An ACK of an unknown nonce is ignored; the real one is reported.
    tx.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        response_nonce: "no-such-nonce".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    tx.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        response_nonce: second.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let acked = wait_event(&mut events, |e| match e {
        ServerEvent::Ack { nonce, .. } => Some(nonce.clone()),
        _ => None,
    })
    .await;
    assert_eq!(acked, second.nonce);
    assert_eq!(server.stats().acks, 1);

    // Subscribing to a further name sends it even without a change.
    tx.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        resource_names_subscribe: vec![common::workload_uid(2)],
        ..Default::default()
    })
    .await
    .unwrap();
    let third = settle(inbound.message()).await.unwrap().unwrap();
    let names: Vec<_> = third.resources.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, vec![common::workload_uid(2)]);

    drop(tx);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_removal_reaches_a_connected_client() {
    let server = AdsServer::default();
    let running = serve_workloads(&server, 0..10).await;
    let client = RunningClient::synced(running.addr, "node-mass").await;
    publish_workloads(&server, 10..2_010);
    wait_store(&client.store, "2010 workloads", |s| {
        s.workload_count() == 2_010
    })
    .await;
    // More removals than the change log keeps at once.
    server.publish(
        ADDRESS_TYPE_URL,
        (10..2_010).map(|i| ResourceChange::remove(common::workload_uid(i))),
    );
    wait_store(&client.store, "back to 10", |s| s.workload_count() == 10).await;
    client.stop().await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cannot_subscribe_to_unbounded_type_urls() {
    let mut config = ServerConfig::default();
    config.max_type_urls_per_stream = 2;
    let server = AdsServer::new(config);
    let running = serve_workloads(&server, 0..3).await;
    let requests = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, "type.example/a"].map(|type_url| {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            ..Default::default()
        }
    });
    let (tx, mut inbound) = raw_stream(running.addr, requests).await;
    let status = settle(async {
        loop {
            match inbound.message().await {
                Ok(Some(response)) => assert_ne!(response.type_url, "type.example/a"),
                Ok(None) => panic!("stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    drop(tx);
    running.shutdown().await;
}
