//! The outbound path (15001): mTLS, passthrough, `baggage`, service alternative names and
//! routing destinations.

use super::*;

#[tokio::test]
async fn enrolled_to_enrolled_goes_over_mtls() {
    let (env, app) = Env::client_and_server([127, 0, 0, 11], [127, 0, 0, 12]).await;

    let payload = vec![42u8; 200_000];
    let got = env.outbound("client-1", app, &payload).await;
    assert_eq!(&got[..9], b"server-1:");
    assert_eq!(&got[9..], &payload[..]);

    let m = env.metrics_text();
    wait_for(|| {
        env.metrics
            .active_connections
            .get_or_create(&TrafficLabels {
                direction: Direction::Inbound,
                security: Security::Mtls,
            })
            .get()
            == 0
    })
    .await;
    let m2 = env.metrics_text();
    for dir in ["outbound", "inbound"] {
        let line = format!(
            "meshwire_connections_total{{direction=\"{dir}\",security=\"mtls\",source_identity=\"{CLIENT_ID}\",destination_identity=\"{SERVER_ID}\"}} 1"
        );
        assert!(has_line(&m, &line), "{line} missing in\n{m}");
    }
    // Both proxies counted the bytes: 200000 up and 200009 down, on each side.
    for dir in ["outbound", "inbound"] {
        let line = format!("meshwire_bytes_total{{direction=\"{dir}\",security=\"mtls\"}} 400009");
        assert!(has_line(&m2, &line), "{line} missing in\n{m2}");
    }
    assert!(
        has_line(&m2, "meshwire_tls_handshake_failures_total 0"),
        "{m2}"
    );
    // Certificates were fetched for both local identities, with their expiry.
    for id in [CLIENT_ID, SERVER_ID] {
        assert!(
            m2.contains(&format!(
                "meshwire_certificate_expiry_timestamp_seconds{{identity=\"{id}\"}}"
            )),
            "{m2}"
        );
    }

    // A second connection reuses the pooled HBONE connection.
    let got = env.outbound("client-1", app, b"again").await;
    assert_eq!(got, b"server-1:again");
    let dump = env.supervisor.pods();
    assert_eq!(dump.len(), 2);
}

#[tokio::test]
async fn non_enrolled_destination_is_plain_tcp() {
    let mut env = Env::new().await;
    env.pod("client-1", "shop", "client", [127, 0, 0, 21], true)
        .await;
    // A legacy pod on another node: in xDS, not enrolled, no proxy of ours.
    let mut legacy = pb_workload("legacy-1", "legacy", "default", [127, 0, 0, 22], false);
    legacy.node = "node-2".into();
    put_workload(&env.store, legacy);
    let app = echo_app([127, 0, 0, 22], "legacy:").await;
    let got = env.outbound("client-1", app, b"hello").await;
    assert_eq!(got, b"legacy:hello");
    // Unknown to xDS entirely: passthrough too.
    let outside = echo_app([127, 0, 0, 23], "outside:").await;
    assert_eq!(env.outbound("client-1", outside, b"x").await, b"outside:x");

    let m = env.metrics_text();
    let line = format!(
        "meshwire_connections_total{{direction=\"outbound\",security=\"plaintext\",source_identity=\"{CLIENT_ID}\",destination_identity=\"\"}} 2"
    );
    assert!(has_line(&m, &line), "{line} missing in\n{m}");
    assert!(!m.contains("security=\"mtls\",source"), "{m}");
}

#[tokio::test]
async fn baggage_describes_the_workload_on_each_end() {
    let (env, app) = Env::client_and_server([127, 0, 0, 81], [127, 0, 0, 82]).await;

    // Inbound: the 200 carries the destination pod's attributes.
    let conn = raw_client(
        &env.pki,
        CLIENT_ID,
        SERVER_ID,
        env.listener("server-1", ListenerKind::InboundHbone),
    )
    .await
    .unwrap();
    let request = ConnectRequest::new(Authority::from_socket_addr(app).unwrap());
    let tunnel = conn.open(&request).await.unwrap();
    let baggage = tunnel
        .response()
        .and_then(|r| r.baggage.as_ref())
        .expect("response baggage");
    assert_eq!(
        baggage.to_string(),
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.pod.name=server-1,\
         service.name=server-1"
    );
    assert_eq!(peer_workload(Some(baggage)), "shop/server-1");
    drop(tunnel);

    // Outbound: the CONNECT carries the source pod's attributes, with `forwarded` and
    // `traceparent`.
    put_workload(
        &env.store,
        pb_workload("peer-1", "shop", "server", [127, 0, 0, 83], true),
    );
    let mut reply = WorkloadBaggage::default();
    reply.namespace = Some("shop".into());
    reply.workload = Some((WorkloadKind::Deployment, "peer".into()));
    let mut requests = fake_hbone_peer(&env, [127, 0, 0, 83], SERVER_ID, reply.to_baggage()).await;
    let got = env
        .outbound("client-1", SocketAddr::from(([127, 0, 0, 83], 8080)), b"x")
        .await;
    assert_eq!(got, b"fake:");
    let seen = requests.recv().await.unwrap();
    assert_eq!(
        seen.authority,
        Authority::from_socket_addr(SocketAddr::from(([127, 0, 0, 83], 8080))).unwrap()
    );
    let sent = WorkloadBaggage::from_baggage(seen.baggage.as_ref().expect("request baggage"));
    assert_eq!(sent.cluster.as_deref(), Some("Kubernetes"));
    assert_eq!(sent.namespace.as_deref(), Some("shop"));
    assert_eq!(sent.workload, Some((WorkloadKind::Pod, "client-1".into())));
    assert!(seen.traceparent.is_some());
    assert_eq!(
        seen.forwarded
            .as_ref()
            .and_then(Forwarded::client_addr)
            .map(|a| a.ip()),
        Some(IpAddr::from([127, 0, 0, 1]))
    );
    assert_eq!(peer_workload(None), "");
}

#[tokio::test]
async fn service_subject_alt_names_are_accepted_only_through_the_service() {
    let mut env = Env::new().await;
    env.pod("client-1", "shop", "client", [127, 0, 0, 91], true)
        .await;
    let mut web = pb_workload("web-0", "shop", "web", [127, 0, 0, 92], true);
    add_endpoint_of(&mut web, "web", "shop", vec![port(80, 8080)]);
    put_workload(&env.store, web);
    let mut service = pb_service("web", "shop", &[[127, 0, 0, 93]], vec![port(80, 8080)]);
    service.subject_alt_names = vec![
        "not a spiffe id".into(),
        "spiffe://cluster.local/ns/shop/sa/web-canary".into(),
    ];
    put_service(&env.store, service);
    // The endpoint presents the service's alternative name, not its own identity.
    let mut requests = fake_hbone_peer(
        &env,
        [127, 0, 0, 92],
        "spiffe://cluster.local/ns/shop/sa/web-canary",
        Baggage::new(),
    )
    .await;

    // Addressed to the service: accepted; the target port and the service host are sent.
    let vip = SocketAddr::from(([127, 0, 0, 93], 80));
    assert_eq!(env.outbound("client-1", vip, b"x").await, b"fake:");
    let seen = requests.recv().await.unwrap();
    assert_eq!(
        seen.authority,
        Authority::from_socket_addr(SocketAddr::from(([127, 0, 0, 92], 8080))).unwrap()
    );
    assert_eq!(
        seen.forwarded.as_ref().and_then(Forwarded::host),
        Some("web.shop.svc.cluster.local")
    );

    // Addressed to the pod: only the pod's own identity is accepted.
    let direct = SocketAddr::from(([127, 0, 0, 92], 8080));
    assert_eq!(env.outbound("client-1", direct, b"x").await, b"");
    assert!(requests.try_recv().is_err());
    wait_for(|| env.metrics.tls_handshake_failures.get() == 1).await;
}

/// The store's answers (resolution itself is tested in xds-workload) become routing
/// destinations: a VIP's endpoint with the service's host name and alternative names,
/// a pod address without them.
#[tokio::test]
async fn store_answers_become_routing_destinations() {
    let env = Env::new().await;
    let mut web = pb_workload("web-0", "shop", "web", [10, 0, 0, 5], true);
    add_endpoint_of(&mut web, "web", "shop", vec![port(80, 8080)]);
    put_workload(&env.store, web);
    let mut service = pb_service("web", "shop", &[[10, 96, 0, 10]], vec![port(80, 0)]);
    service.subject_alt_names = vec!["spiffe://cluster.local/ns/shop/sa/web-svc".into()];
    let mut passthrough = pb_service("direct", "shop", &[[10, 96, 0, 11]], vec![port(80, 0)]);
    passthrough.subject_alt_names = service.subject_alt_names.clone();
    passthrough.load_balancing = Some(pbw::LoadBalancing {
        mode: pbw::load_balancing::Mode::Passthrough as i32,
        ..Default::default()
    });
    put_service(&env.store, service);
    put_service(&env.store, passthrough);
    let web_at = |port: u16, service: Option<ServiceTarget>| {
        Destination::Workload(DestinationWorkload {
            ip: "10.0.0.5".parse().unwrap(),
            port,
            hbone: true,
            identity: "spiffe://cluster.local/ns/shop/sa/web".into(),
            service,
        })
    };
    let via_web = ServiceTarget {
        hostname: "web.shop.svc.cluster.local".into(),
        subject_alt_names: vec!["spiffe://cluster.local/ns/shop/sa/web-svc".into()],
    };
    assert_eq!(
        destination_of(
            &env.store
                .resolve_upstream("", "10.96.0.10:80".parse().unwrap())
        ),
        web_at(8080, Some(via_web))
    );
    assert_eq!(
        destination_of(
            &env.store
                .resolve_upstream("", "10.0.0.5:9000".parse().unwrap())
        ),
        web_at(9000, None)
    );
    assert_eq!(
        destination_of(
            &env.store
                .resolve_upstream("", "10.96.0.11:80".parse().unwrap())
        ),
        Destination::Passthrough
    );
    assert_eq!(
        destination_of(
            &env.store
                .resolve_upstream("", "192.0.2.1:80".parse().unwrap())
        ),
        Destination::Unknown
    );
    assert_eq!(
        destination_of(
            &env.store
                .resolve_upstream("other", "10.96.0.10:80".parse().unwrap())
        ),
        Destination::Unknown
    );
    // No endpoint left.
    env.store.remove_address("Kubernetes//Pod/shop/web-0");
    assert_eq!(
        destination_of(
            &env.store
                .resolve_upstream("", "10.96.0.10:80".parse().unwrap())
        ),
        Destination::ServiceWithoutEndpoints
    );
}
