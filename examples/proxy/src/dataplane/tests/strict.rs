//! Strict mutual TLS: plaintext into a strict pod is reset, HBONE passes; a strict source
//! waits for an enrolled destination that is not ready yet, and fails closed past the bound.

use super::*;

const CLIENT: [u8; 4] = [127, 0, 0, 91];
const SERVER: [u8; 4] = [127, 0, 0, 92];

/// Makes namespace `ns` strict, as the agent publishes it.
fn make_strict(store: &WorkloadStore, ns: &str) {
    let policy = AuthorizationPolicy::strict_mtls(ns);
    store.insert_policy(policy.key(), policy);
}

/// Publishes `server-1` of `shop` as enrolled but not ready (`hbone_pending`), or as ready.
fn publish_server(store: &WorkloadStore, ready: bool) {
    let mut w = pb_workload("server-1", "shop", "server", SERVER, ready);
    if !ready {
        w.extensions = vec![pbw::Extension {
            name: meshwire_xds_workload::workload::HBONE_PENDING_EXTENSION.into(),
            config: None,
        }];
    }
    put_workload(store, w);
}

/// Sends `payload` on `s` and reads until the end; `Err` with the read error (a reset).
async fn send_and_read(s: &mut TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
    // The peer may reset before or after these: only the read tells.
    let _ = s.write_all(payload).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("no answer within 10 s")?;
    Ok(out)
}

/// Sends a secret from `client-1` and expects a reset, with no plaintext connection counted.
async fn refused_closed(env: &Env) {
    let mut s = TcpStream::connect(env.listener("client-1", ListenerKind::Outbound))
        .await
        .unwrap();
    let err = send_and_read(&mut s, b"secret").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert_eq!(plaintext_outbound(env), 0, "never plain TCP");
}

fn mtls_outbound(env: &Env) -> u64 {
    value(
        &env.metrics_text(),
        "meshwire_connections_total",
        &[("direction", "outbound"), ("security", "mtls")],
    )
}

fn plaintext_outbound(env: &Env) -> u64 {
    value(
        &env.metrics_text(),
        "meshwire_connections_total",
        &[("direction", "outbound"), ("security", "plaintext")],
    )
}

#[tokio::test]
async fn plaintext_into_a_strict_pod_is_reset_and_hbone_is_accepted() {
    let (env, app) = Env::client_and_server(CLIENT, SERVER).await;
    make_strict(&env.store, "shop");

    *env.nets["server-1"].original_dst.lock().unwrap() = Some(app);
    let mut s = TcpStream::connect(env.listener("server-1", ListenerKind::InboundPlaintext))
        .await
        .unwrap();
    // Nothing sent: the refusal itself is a reset, not a close.
    let err = send_and_read(&mut s, b"").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert!(
        has_line(&env.metrics_text(), "meshwire_policy_denials_total 1"),
        "{}",
        env.metrics_text()
    );

    let got = env.outbound("client-1", app, b"tunnelled").await;
    assert_eq!(got, b"server-1:tunnelled");
    assert_eq!(mtls_outbound(&env), 1);
    assert!(has_line(
        &env.metrics_text(),
        "meshwire_policy_denials_total 1"
    ));
}

#[tokio::test]
async fn strict_source_waits_for_a_pending_destination_then_uses_hbone() {
    let (env, app) = Env::client_and_server(CLIENT, SERVER).await;
    make_strict(&env.store, "shop");
    publish_server(&env.store, false);
    let (_guard, logs) = capture_logs();

    *env.nets["client-1"].original_dst.lock().unwrap() = Some(app);
    let outbound = env.listener("client-1", ListenerKind::Outbound);
    let call = tokio::spawn(async move {
        let mut s = TcpStream::connect(outbound).await.unwrap();
        send_and_read(&mut s, b"after-wait").await
    });
    wait_for(|| !logs.lines_with("strict mtls: waiting").is_empty()).await;
    assert_eq!(plaintext_outbound(&env), 0, "nothing sent in plaintext");

    publish_server(&env.store, true);
    let got = call.await.unwrap().unwrap();
    assert_eq!(got, b"server-1:after-wait");
    assert_eq!(mtls_outbound(&env), 1);
    assert_eq!(plaintext_outbound(&env), 0);
}

#[tokio::test]
async fn strict_source_fails_closed_when_the_destination_stays_pending() {
    let mut env = Env::with_config(|c| c.strict_hbone_wait = Duration::from_millis(300)).await;
    env.pod("client-1", "shop", "client", CLIENT, true).await;
    env.pod("server-1", "shop", "server", SERVER, true).await;
    let app = echo_app(SERVER, "server-1:").await;
    make_strict(&env.store, "shop");
    publish_server(&env.store, false);
    let (_guard, logs) = capture_logs();

    *env.nets["client-1"].original_dst.lock().unwrap() = Some(app);
    refused_closed(&env).await;
    assert_eq!(
        value(
            &env.metrics_text(),
            "meshwire_connection_failures_total",
            &[
                ("direction", "outbound"),
                ("reason", super::super::strict::STRICT_NOT_READY)
            ],
        ),
        1,
        "{}",
        env.metrics_text()
    );
    let failed = logs.lines_with("strict mtls: destination not ready");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("refuses plain TCP"), "{}", failed[0]);

    // The source's own xDS workload unknown: its namespace (from ZDS) still makes it strict.
    assert!(env.store.remove_address("Kubernetes//Pod/shop/client-1"));
    refused_closed(&env).await;
    assert_eq!(
        logs.lines_with("strict mtls: destination not ready").len(),
        2
    );
}

#[tokio::test]
async fn permissive_sources_and_destinations_outside_the_mesh_keep_plain_tcp() {
    let (env, app) = Env::client_and_server(CLIENT, SERVER).await;
    // Permissive source, pending destination: plain TCP at once, as before.
    publish_server(&env.store, false);
    let got = env.outbound("client-1", app, b"permissive").await;
    assert_eq!(got, b"server-1:permissive");
    assert_eq!(plaintext_outbound(&env), 1);

    // Strict source, destination not enrolled (no marker): plain TCP too.
    make_strict(&env.store, "shop");
    put_workload(
        &env.store,
        pb_workload("server-1", "shop", "server", SERVER, false),
    );
    let got = env.outbound("client-1", app, b"outside").await;
    assert_eq!(got, b"server-1:outside");
    assert_eq!(plaintext_outbound(&env), 2);
    assert_eq!(mtls_outbound(&env), 0);
}
