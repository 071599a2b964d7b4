//! Policy changes reach open connections: a DENY that arrives later closes the connections
//! it denies, and only those.

use super::*;

/// Opens a connection "from the app of `pod`" to `dst` through its 15001 and checks that it
/// carries bytes; returns it open.
async fn open_outbound(env: &Env, pod: &str, dst: SocketAddr) -> TcpStream {
    *env.nets[pod].original_dst.lock().unwrap() = Some(dst);
    let mut s = TcpStream::connect(env.listener(pod, ListenerKind::Outbound))
        .await
        .unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut got = vec![0u8; b"server-1:hi".len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
        .await
        .expect("no answer within 10 s")
        .unwrap();
    assert_eq!(got, b"server-1:hi");
    s
}

#[tokio::test]
async fn a_later_deny_closes_the_open_connections_it_denies() {
    let mut env = Env::new().await;
    env.pod("client-1", "shop", "client", [127, 0, 0, 91], true)
        .await;
    env.pod("intruder-1", "shop", "intruder", [127, 0, 0, 92], true)
        .await;
    env.pod("server-1", "shop", "server", [127, 0, 0, 93], true)
        .await;
    let app = echo_app([127, 0, 0, 93], "server-1:").await;
    let mut intruder = open_outbound(&env, "intruder-1", app).await;
    let mut client = open_outbound(&env, "client-1", app).await;
    assert_eq!(env.dp.open_inbound.len(), 2);

    // The policy arrives through the xDS store after both connections opened.
    deny_principal(&env.store, "shop", "cluster.local/ns/shop/sa/intruder");

    // The intruder's connection ends (the proxy closes it)...
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), intruder.read_to_end(&mut rest))
        .await
        .expect("the denied connection was not closed within 5 s");
    assert!(rest.is_empty(), "{read:?} {rest:?}");
    wait_for(|| env.dp.open_inbound.len() == 1).await;
    assert!(
        has_line(&env.metrics_text(), "meshwire_policy_denials_total 1"),
        "{}",
        env.metrics_text()
    );

    // ...while the unrelated one still carries bytes both ways.
    assert_eq!(exchange(&mut client, b"still here").await, b"still here");
}
