//! Helpers of the agent binary's tests: waiting, the redirection rules, metrics, and the
//! stand-ins for the node proxy (ZDS) and a proxy's xDS client.

#![allow(dead_code, unreachable_pub)] // each test uses its own part

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshwire_netns::NetNs;
use meshwire_netns::rules::RuleSet;
use meshwire_xds_workload::WorkloadStore;
use meshwire_xds_workload::ads::client::{AdsClient, ClientConfig, NodeInfo, StoreHandler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod kube;

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

/// An xDS client of the agent at `address` (TLS, trusting the agent's root in `root`) that
/// fills a [`WorkloadStore`]; returns the store once the first response is in, and the
/// task (abort it to stop).
pub async fn xds_client(
    address: SocketAddr,
    root: &Path,
    node: &str,
) -> (Arc<WorkloadStore>, tokio::task::JoinHandle<()>) {
    let root_pem = std::fs::read(root).unwrap();
    let tls = meshwire_svid::tls::control_plane_client_config(
        meshwire_svid::provider::ring(),
        &root_pem,
        None,
    )
    .unwrap();
    let channel =
        meshwire_svid::tls::channel(&format!("https://{address}"), Arc::new(tls), None).unwrap();
    let store = Arc::new(WorkloadStore::new());
    let mut config = ClientConfig::default();
    config.node = NodeInfo::proxy("10.0.0.1".parse().unwrap(), "proxy", "mesh", node);
    let ads = AdsClient::new(config, channel, StoreHandler::new(store.clone())).unwrap();
    let mut synced = ads.synced();
    let task = tokio::spawn(async move {
        let _ = ads.run(std::future::pending::<()>()).await;
    });
    assert!(synced.wait().await, "xDS never synced");
    (store, task)
}
