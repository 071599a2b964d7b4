//! What the agent's binary tests share: the workloads file, waiting, the redirection
//! rules, metrics, stopping the agent, a proxy's xDS client, and (`kube`) the test's side of
//! a Kubernetes cluster, and (`spire`) the entries on the SPIRE server.

#![allow(dead_code, unreachable_pub)] // each test uses its own part

pub mod kube;
pub mod spire;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshwire_netns::NetNs;
use meshwire_netns::rules::RuleSet;
use meshwire_xds_workload::WorkloadStore;
use meshwire_xds_workload::ads::client::{AdsClient, ClientConfig, NodeInfo, StoreHandler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A workloads file of node `n1`: `client-1` (uid `uid-client`, namespace `shop`, enrolled
/// when `labelled`) in the netns `pods[0].1`, `old-1` (uid `uid-old`, namespace `legacy`,
/// never enrolled) in `pods[1].1`, and `server-1` (uid `uid-server`, `shop`) on node `n2`.
pub fn workloads(labelled: bool, pods: &[(&str, &Path)]) -> String {
    let label = if labelled {
        r#"{ io.cilium/mtls-enabled: "true" }"#
    } else {
        "{}"
    };
    format!(
        r#"
namespaces:
  - name: shop
    labels: {label}
  - name: legacy
    labels: {{}}
pods:
  - name: client-1
    namespace: shop
    serviceAccount: client
    uid: uid-client
    ip: 10.10.1.2
    node: n1
    netns: {}
  - name: old-1
    namespace: legacy
    uid: uid-old
    ip: 10.10.1.3
    node: n1
    netns: {}
  - name: server-1
    namespace: shop
    serviceAccount: server
    uid: uid-server
    ip: 10.10.2.2
    node: n2
"#,
        pods[0].1.display(),
        pods[1].1.display()
    )
}

/// Polls `f` every 50 ms until it holds; panics after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the istio rule set is installed (and complete) in `ns`.
pub fn rules_installed(ns: &NetNs) -> bool {
    RuleSet::istio()
        .verify(ns)
        .expect("iptables-save in the pod")
        .is_clean()
}

/// The agent's `/metrics` text.
pub async fn metrics_text(address: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(address).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of the sample `name` (with its labels, if any) in a metrics text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gRPC channel to the agent's TLS port at `address`, trusting the agent's root in `root`
/// (for xDS and the CA).
pub fn channel(address: SocketAddr, root: &Path) -> tonic::transport::Channel {
    let root_pem = std::fs::read(root).unwrap();
    let tls = meshwire_svid::tls::control_plane_client_config(
        meshwire_svid::provider::ring(),
        &root_pem,
        None,
    )
    .unwrap();
    meshwire_svid::tls::channel(&format!("https://{address}"), Arc::new(tls), None).unwrap()
}

/// An xDS client over `channel` (as the proxy of `node`, sending `token` if given) that
/// fills a [`WorkloadStore`]; returns the store once the first response is in, and the task
/// (abort it to stop).
pub async fn xds_client(
    channel: tonic::transport::Channel,
    node: &str,
    token: Option<String>,
) -> (Arc<WorkloadStore>, tokio::task::JoinHandle<()>) {
    let store = Arc::new(WorkloadStore::new());
    let mut config = ClientConfig::default();
    config.token = token.map(meshwire_xds_workload::ads::client::TokenSource::Static);
    config.node = NodeInfo::proxy("10.0.0.1".parse().unwrap(), "proxy", "mesh", node);
    let ads = AdsClient::new(config, channel, StoreHandler::new(store.clone())).unwrap();
    let mut synced = ads.synced();
    let task = tokio::spawn(async move {
        let _ = ads.run(std::future::pending::<()>()).await;
    });
    assert!(synced.wait().await, "xDS never synced");
    (store, task)
}

/// Runs `f` to completion on a current-thread runtime of its own (on the calling thread,
/// so inside whatever network namespace that thread entered).
pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Sends SIGTERM to the agent and checks that it exits cleanly within 10 s.
pub fn stop(agent: &mut Child, show_log: &dyn Fn() -> String) {
    let st = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not stop on SIGTERM\n{}",
            show_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "agent exit status {status}\n{}",
        show_log()
    );
}
