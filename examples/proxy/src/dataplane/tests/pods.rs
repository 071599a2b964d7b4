//! Pods leaving: listeners, pooled connections and certificates go with them; pooled
//! connections released with their last tunnel.

use super::*;

#[tokio::test]
async fn removed_pod_stops_serving_and_forgets_its_certificate() {
    let (env, app) = Env::client_and_server([127, 0, 0, 71], [127, 0, 0, 72]).await;
    assert_eq!(env.outbound("client-1", app, b"1").await, b"server-1:1");
    assert!(env.supervisor.remove("uid-server-1"));
    let expiry =
        |id: &str| format!("meshwire_certificate_expiry_timestamp_seconds{{identity=\"{id}\"}}");
    wait_for(|| !env.metrics_text().contains(&expiry(SERVER_ID))).await;
    // The destination is still HBONE in xDS but nobody serves it: the connection fails.
    assert_eq!(env.outbound("client-1", app, b"2").await, b"");
    assert!(env.metrics_text().contains(&expiry(CLIENT_ID)));
}

#[tokio::test]
async fn removed_pod_closes_its_idle_outbound_hbone_connections() {
    let (env, app) = Env::client_and_server([127, 0, 0, 73], [127, 0, 0, 74]).await;
    assert_eq!(env.outbound("client-1", app, b"1").await, b"server-1:1");
    let pool = env.dp.pod_state("uid-client-1").unwrap().pool.clone();
    wait_for(|| pool.stats().open == 1 && pool.stats().pooled == 1).await;
    assert!(env.supervisor.remove("uid-client-1"));
    // Gone at once, not after the pool's idle timeout (minutes).
    wait_for(|| pool.stats().closed == 1).await;
    let s = pool.stats();
    assert_eq!((s.open, s.pooled, s.opened), (0, 0, 1), "{s:?}");
    assert!(pool.is_closed());
    // The other pod is unaffected.
    assert!(env.dp.pod_state("uid-server-1").is_some());
}

#[tokio::test]
async fn a_pod_removed_before_its_workload_arrived_fetches_no_certificate() {
    let env = Env::new().await;
    let net = Arc::new(TestNet {
        ip: IpAddr::from([127, 0, 0, 111]),
        original_dst: Mutex::new(None),
        routes: env.routes.clone(),
    });
    let info = PodInfo {
        uid: "uid-late".into(),
        name: "late-1".into(),
        namespace: "shop".into(),
        service_account: "late".into(),
    };
    env.supervisor.add(info, net).await.unwrap();
    assert!(env.supervisor.remove("uid-late"));
    // xDS delivers the workload after the pod is gone (within the lookup timeout).
    put_workload(
        &env.store,
        pb_workload("late-1", "shop", "late", [127, 0, 0, 111], true),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let held: Vec<_> = env
        .dp
        .certs
        .held()
        .into_iter()
        .map(|c| c.identity)
        .collect();
    assert!(
        held.is_empty(),
        "certificates held for a removed pod: {held:?}"
    );
}

#[tokio::test]
async fn zero_pool_idle_timeout_closes_an_outbound_hbone_connection_with_its_tunnel() {
    let mut env = Env::with_config(|c| c.pool_idle_timeout = Duration::ZERO).await;
    env.pod("client-1", "shop", "client", [127, 0, 0, 75], true)
        .await;
    env.pod("server-1", "shop", "server", [127, 0, 0, 76], true)
        .await;
    let app = echo_app([127, 0, 0, 76], "server-1:").await;
    let pool = env.dp.pod_state("uid-client-1").unwrap().pool.clone();
    for closed in 1..=2 {
        assert_eq!(env.outbound("client-1", app, b"1").await, b"server-1:1");
        // Closed once its tunnel ended, not after the default idle timeout (minutes).
        wait_for(|| pool.stats().closed == closed).await;
    }
    let s = pool.stats();
    assert_eq!((s.opened, s.reused, s.open), (2, 0, 0), "{s:?}");
}
