//! End-to-end test of the Kubernetes mode: the demo cluster's traffic table driven from a
//! real API server (etcd and kube-apiserver from `MESHWIRE_PEERS_DIR`, or built with Go):
//! Namespaces enrolled and unenrolled with `kubectl label namespace`, an AuthorizationPolicy
//! object denying one service account, agents in Kubernetes mode told about each sandbox by
//! a CNI ADD, and proxies authenticated by pod-bound tokens.
//!
//! Needs root, `ip`, `iptables` (and `kubectl` to label with it; without it the labels go
//! through the API); fails without them unless `MESHWIRE_SKIP_PRIVILEGED=1` is set.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::time::Duration;

mod common;

use common::{check, mtls_flow, payload, retry_until_encrypted};
use demo::{Binaries, Cluster, ClusterOptions, ENROLLED_NS, LABEL, Role, Source};

const SETTLE: Duration = Duration::from_secs(30);

/// Plaintext from the source's proxy to a pod outside the mesh, and into an enrolled pod
/// from outside the mesh.
#[track_caller]
fn plaintext_paths(c: &Cluster) {
    let f = c
        .flow(Role::Client, Role::Legacy, &payload("legacy", 10_000))
        .unwrap();
    check(c, &f);
    assert!(!f.encrypted(), "{f:?}");
    assert_eq!(f.outbound_plain, 1.0, "{f:?}");
    let f = c
        .flow(Role::Legacy, Role::ServerFar, &payload("inbound", 10_000))
        .unwrap();
    check(c, &f);
    assert!(!f.encrypted(), "{f:?}");
    assert_eq!(f.inbound_plain, 1.0, "{f:?}");
}

/// The deny-intruder AuthorizationPolicy blocks the intruder's service account only.
#[track_caller]
fn policy_denies_the_intruder_only(c: &Cluster) {
    let f = c
        .flow(Role::Intruder, Role::ServerFar, &payload("intruder", 1000))
        .unwrap();
    assert!(!f.echoed, "the intruder got through: {f:?}");
    assert!(f.denied >= 1.0, "{f:?}\n{}", c.log_tail(30));
    mtls_flow(c, Role::Client, Role::ServerFar, "allowed", 1000);
}

/// Removes the enrollment label (rules gone, traffic direct) and adds it back (mTLS, the
/// policy still applies).
#[track_caller]
fn unlabel_and_relabel(c: &mut Cluster) {
    c.set_enrolled(ENROLLED_NS, false).unwrap();
    c.wait_enrolled(SETTLE).unwrap();
    assert!(!c.has_rules(Role::Client).unwrap());
    let f = c
        .flow(Role::Client, Role::ServerFar, &payload("direct", 5000))
        .unwrap();
    check(c, &f);
    assert!(f.direct(), "traffic still goes through a proxy: {f:?}");
    c.set_enrolled(ENROLLED_NS, true).unwrap();
    c.wait_enrolled(SETTLE).unwrap();
    let f = retry_until_encrypted(c, Role::Client, Role::ServerFar);
    assert!(f.encrypted(), "{f:?}");
    policy_denies_the_intruder_only(c);
}

#[test]
fn kubernetes_mode_labels_policy_and_restarts_keep_traffic_flowing() {
    if testbed::require_privileged(
        "kubernetes_mode_labels_policy_and_restarts_keep_traffic_flowing",
    )
    .is_none()
    {
        return;
    }
    let mut c = Cluster::start(ClusterOptions {
        binaries: Binaries::beside_test().expect("agent and proxy binaries"),
        log: "info".into(),
        reconcile_interval: Duration::from_millis(500),
        rules: "istio",
        proxy_env: Vec::new(),
        spire: false,
        source: Source::Kubernetes,
    })
    .unwrap_or_else(|e| panic!("cannot start the cluster in Kubernetes mode: {e:#}"));
    let api = c.api_server().expect("an API server");
    let (status, body) = api
        .request("GET", &format!("/api/v1/namespaces/{ENROLLED_NS}"), None)
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(LABEL),
        "the label is on the Namespace: {body}"
    );

    // The table: every path with the right security.
    for (from, to) in [
        (Role::Client, Role::ServerFar),
        (Role::Client, Role::ServerNear),
    ] {
        let f = mtls_flow(&c, from, to, "mtls", 20_000);
        assert_eq!(
            f.server_identity.as_deref(),
            Some(to.spiffe_id().as_str()),
            "{f:?}"
        );
    }
    plaintext_paths(&c);
    policy_denies_the_intruder_only(&c);

    // kubectl label namespace shop io.cilium/mtls-enabled- : direct; relabelled: mTLS.
    unlabel_and_relabel(&mut c);

    // Restarts: each node's agent (it remembers the sandboxes), then the server's proxy
    // (it authenticates again with its token).
    for i in 0..2 {
        c.restart_agent(i).unwrap();
    }
    c.wait_enrolled(SETTLE).unwrap();
    mtls_flow(&c, Role::Client, Role::ServerFar, "agents", 5000);
    c.restart_proxy(1).unwrap();
    let f = retry_until_encrypted(&c, Role::Client, Role::ServerFar);
    assert!(f.encrypted(), "{f:?}");
    policy_denies_the_intruder_only(&c);

    // An API server outage: traffic keeps flowing with the agents' last view, and after
    // the restart the watches resume (a label change is applied again).
    c.stop_api_server().unwrap();
    mtls_flow(&c, Role::Client, Role::ServerFar, "outage", 5000);
    plaintext_paths(&c);
    c.start_api_server().unwrap();
    let f = retry_until_encrypted(&c, Role::Client, Role::ServerFar);
    assert!(f.encrypted(), "{f:?}");
    unlabel_and_relabel(&mut c);
}
