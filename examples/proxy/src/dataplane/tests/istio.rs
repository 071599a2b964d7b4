//! The standard Istio TCP metrics, as ztunnel labels them, for real connections through the
//! data plane: both reporters of an mTLS connection, bytes while the connection is open,
//! plaintext, passthrough, policy denials, failed dials and service-addressed connections.

use super::*;

const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";
const RECEIVED: &str = "istio_tcp_received_bytes_total";
const SENT: &str = "istio_tcp_sent_bytes_total";

/// Every label of a connection from `client-1` to `server-1` (namespace `shop`), except the
/// reporter, the source's self-description and the flags.
fn mtls_labels() -> Vec<(&'static str, &'static str)> {
    vec![
        ("source_workload", "client-1"),
        ("source_canonical_service", "client-1"),
        ("source_canonical_revision", "unknown"),
        ("source_workload_namespace", "shop"),
        ("source_principal", CLIENT_ID),
        ("source_app", "client-1"),
        ("source_cluster", "Kubernetes"),
        ("destination_service", "unknown"),
        ("destination_service_namespace", "unknown"),
        ("destination_service_name", "unknown"),
        ("destination_workload", "server-1"),
        ("destination_canonical_service", "server-1"),
        ("destination_canonical_revision", "unknown"),
        ("destination_workload_namespace", "shop"),
        ("destination_principal", SERVER_ID),
        ("destination_app", "server-1"),
        ("destination_version", "unknown"),
        ("destination_cluster", "Kubernetes"),
        ("request_protocol", "tcp"),
        ("connection_security_policy", "mutual_tls"),
    ]
}

fn with<'a>(
    mut labels: Vec<(&'a str, &'a str)>,
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    labels.extend_from_slice(more);
    labels
}

#[tokio::test]
async fn both_ends_of_an_mtls_connection_report_it() {
    let (env, app) = Env::client_and_server([127, 0, 0, 151], [127, 0, 0, 152]).await;
    let payload = vec![7u8; 100_000];
    let got = env.outbound("client-1", app, &payload).await;
    assert_eq!(got.len(), 100_009);
    wait_for(|| value(&env.metrics_text(), CLOSED, &[]) == 2).await;

    let m = env.metrics_text();
    for reporter in ["source", "destination"] {
        let labels = with(
            mtls_labels(),
            &[("reporter", reporter), ("response_flags", "-")],
        );
        for (name, want) in [
            (OPENED, 1),
            (CLOSED, 1),
            (RECEIVED, 100_000),
            (SENT, 100_009),
        ] {
            assert_eq!(value(&m, name, &labels), want, "{name} {reporter}:\n{m}");
        }
    }
    // Every series carries exactly ztunnel's label set.
    let names: Vec<String> = series(&m, OPENED)[0].0.keys().cloned().collect();
    let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
    names.sort_unstable();
    let mut want = vec![
        "reporter",
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_cluster",
        "destination_service",
        "destination_service_namespace",
        "destination_service_name",
        "destination_workload",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_cluster",
        "request_protocol",
        "response_flags",
        "connection_security_policy",
    ];
    want.sort_unstable();
    assert_eq!(names, want);
    // The expiry of both identities' certificates, as ztunnel names it.
    for id in [CLIENT_ID, SERVER_ID] {
        assert!(
            m.lines().any(|l| l.starts_with(&format!(
                "istio_cert_expiry_seconds{{identity=\"{id}\"}} "
            ))),
            "{m}"
        );
    }
}

#[tokio::test]
async fn bytes_are_counted_while_the_connection_is_open() {
    let (env, app) = Env::client_and_server([127, 0, 0, 161], [127, 0, 0, 162]).await;
    *env.nets["client-1"].original_dst.lock().unwrap() = Some(app);
    let mut s = TcpStream::connect(env.listener("client-1", ListenerKind::Outbound))
        .await
        .unwrap();
    s.write_all(&[1u8; 1000]).await.unwrap();
    let mut echoed = vec![0u8; 1009];
    s.read_exact(&mut echoed).await.unwrap();
    for reporter in ["source", "destination"] {
        let labels = [("reporter", reporter), ("response_flags", "-")];
        wait_for(|| value(&env.metrics_text(), SENT, &labels) == 1009).await;
        let m = env.metrics_text();
        assert_eq!(value(&m, OPENED, &labels), 1, "{m}");
        assert_eq!(value(&m, RECEIVED, &labels), 1000, "{m}");
    }
    assert_eq!(value(&env.metrics_text(), CLOSED, &[]), 0);
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    wait_for(|| value(&env.metrics_text(), CLOSED, &[("response_flags", "-")]) == 2).await;
}

#[tokio::test]
async fn plaintext_passthrough_denials_and_failed_dials() {
    let (env, app) = Env::client_and_server([127, 0, 0, 171], [127, 0, 0, 172]).await;
    // Plaintext arrival at server-1 from an address xDS does not know.
    *env.nets["server-1"].original_dst.lock().unwrap() = Some(app);
    let plaintext = env.listener("server-1", ListenerKind::InboundPlaintext);
    let mut s = TcpStream::connect(plaintext).await.unwrap();
    assert_eq!(exchange(&mut s, b"hi").await, b"server-1:hi");
    let inbound = [
        ("reporter", "destination"),
        ("connection_security_policy", "unknown"),
        ("source_workload", "unknown"),
        ("source_principal", "unknown"),
        ("destination_workload", "server-1"),
        ("destination_principal", SERVER_ID),
    ];
    wait_for(|| value(&env.metrics_text(), CLOSED, &inbound) == 1).await;
    let m = env.metrics_text();
    assert_eq!(value(&m, RECEIVED, &inbound), 2, "{m}");
    assert_eq!(value(&m, SENT, &inbound), 11, "{m}");

    // Denied by policy: opened, closed with DENY.
    deny_principal(&env.store, "shop", "cluster.local/ns/shop/sa/client");
    let hbone = env.outbound("client-1", app, b"no").await;
    assert_eq!(hbone, b"");
    let denied = [
        ("reporter", "destination"),
        ("source_principal", CLIENT_ID),
        ("response_flags", "DENY"),
    ];
    wait_for(|| value(&env.metrics_text(), CLOSED, &denied) == 1).await;
    // The client's proxy saw the peer refuse the tunnel.
    wait_for(|| {
        value(
            &env.metrics_text(),
            CLOSED,
            &[("reporter", "source"), ("response_flags", "CONNECT")],
        ) == 1
    })
    .await;

    // Passthrough to a known workload outside the mesh, then to a closed port of it.
    let mut legacy = pb_workload("legacy-1", "legacy", "default", [127, 0, 0, 173], false);
    legacy.node = "node-2".into();
    put_workload(&env.store, legacy);
    let legacy_app = echo_app([127, 0, 0, 173], "legacy:").await;
    assert_eq!(
        env.outbound("client-1", legacy_app, b"x").await,
        b"legacy:x"
    );
    let passthrough = [
        ("reporter", "source"),
        ("connection_security_policy", "unknown"),
        ("source_workload", "client-1"),
        ("source_principal", "unknown"),
        ("destination_workload", "legacy-1"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/legacy/sa/default",
        ),
    ];
    wait_for(|| {
        value(
            &env.metrics_text(),
            CLOSED,
            &with(passthrough.to_vec(), &[("response_flags", "-")]),
        ) == 1
    })
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.173:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(env.outbound("client-1", closed, b"x").await, b"");
    wait_for(|| {
        value(
            &env.metrics_text(),
            CLOSED,
            &with(passthrough.to_vec(), &[("response_flags", "CONNECT")]),
        ) == 1
    })
    .await;
    let m = env.metrics_text();
    assert_eq!(value(&m, OPENED, &passthrough), 2, "{m}");
}

#[tokio::test]
async fn service_addressed_connections_name_the_service() {
    let mut env = Env::new().await;
    env.pod("client-1", "shop", "client", [127, 0, 0, 181], true)
        .await;
    let app = echo_app([127, 0, 0, 182], "web-0:").await;
    let mut web = pb_workload("web-0", "shop", "web", [127, 0, 0, 182], true);
    add_endpoint_of(&mut web, "web", "shop", vec![port(80, app.port())]);
    let service = pb_service("web", "shop", &[[127, 0, 0, 183]], vec![port(80, 0)]);
    put_service(&env.store, service);
    env.pod("web-0", "shop", "web", [127, 0, 0, 182], true)
        .await;
    // The pod's workload again, now as an endpoint of the service.
    put_workload(&env.store, web);

    let vip = SocketAddr::from(([127, 0, 0, 183], 80));
    assert_eq!(env.outbound("client-1", vip, b"x").await, b"web-0:x");
    let for_service = [
        ("destination_service", "web.shop.svc.cluster.local"),
        ("destination_service_name", "web"),
        ("destination_service_namespace", "shop"),
        ("destination_workload", "web-0"),
        ("response_flags", "-"),
    ];
    for reporter in ["source", "destination"] {
        let labels = with(for_service.to_vec(), &[("reporter", reporter)]);
        wait_for(|| value(&env.metrics_text(), CLOSED, &labels) == 1).await;
    }
    // Addressed to the pod itself: the inbound side still finds the service by the port.
    let direct = env.outbound("client-1", app, b"y").await;
    assert_eq!(direct, b"web-0:y");
    wait_for(|| {
        value(
            &env.metrics_text(),
            CLOSED,
            &with(for_service.to_vec(), &[("reporter", "destination")]),
        ) == 2
    })
    .await;
    let m = env.metrics_text();
    assert_eq!(
        value(
            &m,
            CLOSED,
            &[("reporter", "source"), ("destination_service", "unknown")]
        ),
        1,
        "{m}"
    );
}
