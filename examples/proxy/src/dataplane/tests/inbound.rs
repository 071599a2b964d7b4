//! The inbound paths: plaintext (15006) and HBONE (15008) with its CONNECT checks,
//! authorization and client certificates.

use super::*;

#[tokio::test]
async fn plaintext_arrivals_are_authorized_and_forwarded() {
    let mut env = Env::new().await;
    env.pod("server-1", "shop", "server", [127, 0, 0, 31], true)
        .await;
    let app = echo_app([127, 0, 0, 31], "server-1:").await;
    *env.nets["server-1"].original_dst.lock().unwrap() = Some(app);
    let mut s = TcpStream::connect(env.listener("server-1", ListenerKind::InboundPlaintext))
        .await
        .unwrap();
    assert_eq!(exchange(&mut s, b"plain").await, b"server-1:plain");
    let line = format!(
        "meshwire_connections_total{{direction=\"inbound\",security=\"plaintext\",source_identity=\"\",destination_identity=\"{SERVER_ID}\"}} 1"
    );
    assert!(
        has_line(&env.metrics_text(), &line),
        "{}",
        env.metrics_text()
    );

    // An ALLOW policy for principals only: plaintext has no identity, so it is denied.
    principal_policy(
        &env.store,
        "shop",
        "only-client",
        sec::Action::Allow,
        "cluster.local/ns/shop/sa/client",
    );
    let mut s = TcpStream::connect(env.listener("server-1", ListenerKind::InboundPlaintext))
        .await
        .unwrap();
    assert_eq!(exchange(&mut s, b"plain").await, b"");
    assert!(has_line(
        &env.metrics_text(),
        "meshwire_policy_denials_total 1"
    ));

    // The proxy's own ports are never a destination.
    env.store.remove_policy("shop/only-client");
    *env.nets["server-1"].original_dst.lock().unwrap() =
        Some(SocketAddr::from(([127, 0, 0, 31], 15006)));
    let mut s = TcpStream::connect(env.listener("server-1", ListenerKind::InboundPlaintext))
        .await
        .unwrap();
    assert_eq!(exchange(&mut s, b"loop").await, b"");
}

#[tokio::test]
async fn deny_policy_blocks_one_service_account_only() {
    let mut env = Env::new().await;
    env.pod("client-1", "shop", "client", [127, 0, 0, 41], true)
        .await;
    env.pod("intruder-1", "shop", "intruder", [127, 0, 0, 42], true)
        .await;
    env.pod("server-1", "shop", "server", [127, 0, 0, 43], true)
        .await;
    let app = echo_app([127, 0, 0, 43], "server-1:").await;
    deny_principal(&env.store, "shop", "cluster.local/ns/shop/sa/intruder");

    assert_eq!(env.outbound("intruder-1", app, b"let me in").await, b"");
    assert_eq!(env.outbound("client-1", app, b"hi").await, b"server-1:hi");
    let m = env.metrics_text();
    assert!(has_line(&m, "meshwire_policy_denials_total 1"), "{m}");
    assert!(
        has_line(
            &m,
            "meshwire_connection_failures_total{direction=\"outbound\",reason=\"denied by peer\"} 1"
        ),
        "{m}"
    );
    assert!(!m.contains("source_identity=\"spiffe://cluster.local/ns/shop/sa/intruder\",destination_identity=\"spiffe://cluster.local/ns/shop/sa/server\"} 1\nmeshwire_connections_total{direction=\"inbound\""));
}

#[tokio::test]
async fn connect_checks_on_the_hbone_port() {
    let mut env = Env::new().await;
    env.pod("server-1", "shop", "server", [127, 0, 0, 51], true)
        .await;
    let app = echo_app([127, 0, 0, 51], "server-1:").await;
    let hbone_addr = env.listener("server-1", ListenerKind::InboundHbone);
    let conn = raw_client(&env.pki, CLIENT_ID, SERVER_ID, hbone_addr)
        .await
        .unwrap();
    assert_eq!(
        conn.peer_identity().map(ToString::to_string).as_deref(),
        Some(SERVER_ID)
    );

    let status = |r: Result<meshwire_hbone::Tunnel, ClientError>| {
        r.err().and_then(|e| e.status()).map(|s| s.as_u16())
    };
    let req = |addr: SocketAddr| ConnectRequest::new(Authority::from_socket_addr(addr).unwrap());
    // Another IP than the one the connection arrived on: 400.
    assert_eq!(
        status(
            conn.open(&req(SocketAddr::from(([127, 0, 0, 99], app.port()))))
                .await
        ),
        Some(400)
    );
    // The proxy's own ports: 503.
    for port in [15001, 15006, 15008] {
        assert_eq!(
            status(
                conn.open(&req(SocketAddr::from(([127, 0, 0, 51], port))))
                    .await
            ),
            Some(503)
        );
    }
    // Nothing listening: 503.
    let closed = std::net::TcpListener::bind("127.0.0.51:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(status(conn.open(&req(closed)).await), Some(503));
    // A host name of no service of this pod: 503.
    let host =
        ConnectRequest::new(Authority::from_host("server.shop.svc.cluster.local", 80).unwrap());
    assert_eq!(status(conn.open(&host).await), Some(503));
    // The right one: 200 and data flows.
    let mut tunnel = conn.open(&req(app)).await.unwrap();
    tunnel.write_all(b"ok").await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut got = Vec::new();
    tunnel.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"server-1:ok");
}

#[tokio::test]
async fn host_name_authorities_reach_the_service_target_port() {
    let mut env = Env::new().await;
    let app = echo_app([127, 0, 0, 101], "web-0:").await;
    let mut web = pb_workload("web-0", "shop", "web", [127, 0, 0, 101], true);
    // Port 80 is mapped by the endpoint; 443 by the service; 9000 by nobody.
    add_endpoint_of(
        &mut web,
        "web",
        "shop",
        vec![port(80, app.port()), port(443, 0)],
    );
    let ports = vec![port(443, app.port()), port(9000, 0), port(15008, 15008)];
    put_service(&env.store, pb_service("web", "shop", &[], ports));
    env.pod("web-0", "shop", "web", [127, 0, 0, 101], true)
        .await;
    // The pod's workload again, now as an endpoint of the service.
    put_workload(&env.store, web);
    let hbone_addr = env.listener("web-0", ListenerKind::InboundHbone);
    let conn = raw_client(
        &env.pki,
        CLIENT_ID,
        "spiffe://cluster.local/ns/shop/sa/web",
        hbone_addr,
    )
    .await
    .unwrap();
    let to = |host: &str, port: u16| ConnectRequest::new(Authority::from_host(host, port).unwrap());
    for port in [80, 443] {
        let mut tunnel = conn
            .open(&to("web.shop.svc.cluster.local", port))
            .await
            .unwrap();
        tunnel.write_all(b"hi").await.unwrap();
        tunnel.shutdown().await.unwrap();
        let mut got = Vec::new();
        tunnel.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"web-0:hi", "service port {port}");
    }
    let status = |r: Result<meshwire_hbone::Tunnel, ClientError>| {
        r.err().and_then(|e| e.status()).map(|s| s.as_u16())
    };
    // No mapping for the port, another service, a proxy port: 503.
    assert_eq!(
        status(conn.open(&to("web.shop.svc.cluster.local", 9000)).await),
        Some(503)
    );
    assert_eq!(
        status(conn.open(&to("db.shop.svc.cluster.local", 80)).await),
        Some(503)
    );
    assert_eq!(
        status(conn.open(&to("web.shop.svc.cluster.local", 15008)).await),
        Some(503)
    );
}

#[tokio::test]
async fn foreign_or_missing_client_certificates_fail_the_handshake() {
    let mut env = Env::new().await;
    env.pod("server-1", "shop", "server", [127, 0, 0, 61], true)
        .await;
    let hbone_addr = env.listener("server-1", ListenerKind::InboundHbone);
    // Another CA, same trust domain name: the chain does not verify.
    let other = TestPki::new("cluster.local");
    let attempt = raw_client(&other, CLIENT_ID, SERVER_ID, hbone_addr).await;
    assert!(
        attempt.is_err(),
        "a foreign client certificate was accepted"
    );
    // Another trust domain from the right CA is not issued; the CA refuses other domains,
    // so a client of a foreign trust domain is covered by the chain check above.
    wait_for(|| env.metrics.tls_handshake_failures.get() >= 1).await;
    // Plain TCP junk on the HBONE port is a failed handshake as well.
    let mut junk = TcpStream::connect(hbone_addr).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = junk.read_to_end(&mut sink).await;
    wait_for(|| env.metrics.tls_handshake_failures.get() >= 2).await;
}

#[tokio::test]
async fn the_log_source_is_the_socket_peer_not_the_forwarded_header() {
    let (_logs, logs) = capture_logs();
    let mut env = Env::new().await;
    env.pod("server-1", "shop", "server", [127, 0, 0, 61], true)
        .await;
    let app = echo_app([127, 0, 0, 61], "server-1:").await;
    let hbone_addr = env.listener("server-1", ListenerKind::InboundHbone);
    let conn = raw_client(&env.pki, CLIENT_ID, SERVER_ID, hbone_addr)
        .await
        .unwrap();
    let claimed = SocketAddr::from(([10, 66, 66, 66], 4242));
    let request = ConnectRequest::new(Authority::from_socket_addr(app).unwrap()).with_forwarded(
        Forwarded::new(meshwire_hbone::headers::ForwardedElement::for_client(
            claimed,
        )),
    );
    let mut tunnel = conn.open(&request).await.unwrap();
    tunnel.write_all(b"ok").await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut got = Vec::new();
    tunnel.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"server-1:ok");
    drop((tunnel, conn));
    wait_for(|| !logs.lines_with("connection closed").is_empty()).await;
    let line = logs.lines_with("connection closed").remove(0);
    assert!(line.contains("direction=inbound"), "{line}");
    assert!(line.contains("forwarded_for=10.66.66.66:4242"), "{line}");
    assert!(!line.contains("src=10.66.66.66"), "{line}");
    assert!(line.contains("src=127."), "the TCP peer (loopback): {line}");
}

#[tokio::test]
async fn silent_connections_to_15008_are_shed_per_pod_and_timed_out() {
    let mut env = Env::with_config(|c| {
        c.hbone_limit.max_per_key = 2;
        c.hbone_accept_timeout = Duration::from_secs(2);
    })
    .await;
    env.pod("server-1", "shop", "server", [127, 0, 0, 71], true)
        .await;
    env.pod("server-2", "shop", "server", [127, 0, 0, 72], true)
        .await;
    let app = echo_app([127, 0, 0, 71], "server-1:").await;
    let hbone_addr = env.listener("server-1", ListenerKind::InboundHbone);
    let other_pod = env.listener("server-2", ListenerKind::InboundHbone);
    let mut oldest = TcpStream::connect(hbone_addr).await.unwrap();
    let mut younger = TcpStream::connect(hbone_addr).await.unwrap();
    // Another pod's connection is not shed by this pod's bound.
    let mut elsewhere = TcpStream::connect(other_pod).await.unwrap();
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        raw_client(&env.pki, CLIENT_ID, SERVER_ID, hbone_addr),
    )
    .await
    .expect("real client locked out by silent connections")
    .unwrap();
    // This tunnel stays open past the accept deadline.
    let mut tunnel = conn
        .open(&ConnectRequest::new(
            Authority::from_socket_addr(app).unwrap(),
        ))
        .await
        .unwrap();
    tunnel.write_all(b"ok").await.unwrap();
    let mut got = [0u8; 11];
    tunnel.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"server-1:ok");
    assert!(closed_by_proxy(&mut oldest, Duration::from_secs(10)).await);
    let shed = "meshwire_connections_dropped_total{listener=\"hbone\",reason=\"shed\"} 1";
    wait_for(|| has_line(&env.metrics_text(), shed)).await;
    // The others run into the accept deadline.
    assert!(closed_by_proxy(&mut younger, Duration::from_secs(10)).await);
    assert!(closed_by_proxy(&mut elsewhere, Duration::from_secs(10)).await);
    let timeouts = "meshwire_connections_dropped_total{listener=\"hbone\",reason=\"timeout\"} 2";
    wait_for(|| has_line(&env.metrics_text(), timeouts)).await;
    // The established tunnel outlived the deadline.
    tunnel.write_all(b"again").await.unwrap();
    let mut again = [0u8; 5];
    tunnel.read_exact(&mut again).await.unwrap();
    assert_eq!(&again, b"again");
}
