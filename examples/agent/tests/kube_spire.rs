//! The agent's SPIRE registrar role with `--source kubernetes`, against a real API server
//! (etcd + kube-apiserver) and a real SPIRE server together: the entries follow the
//! ServiceAccounts of the enrolled namespaces (as the Cilium operator's do), one per
//! account, ID `spiffe://<td>/ns/<ns>/sa/<sa>`, parent the proxies' ID, selectors `k8s:ns`
//! and `k8s:sa`. The test plays the users (labels, ServiceAccounts, pods) and a proxy's xDS
//! client (to know when the agent has seen a pod go).
//!
//! Privileged (root: the Kubernetes source reads `/proc`): fails loudly without it unless
//! `MESHWIRE_SKIP_PRIVILEGED=1` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meshwire_xds_workload::WorkloadStore;
use testbed::kube::AdminClient;
use testbed::spire::Entry;
use testbed::{Spire, SpireConfig};

use common::kube::{agent_command, label};
use common::spire::{owned, wait_registered};
use common::{free_port, stop, xds_client};

/// The SPIFFE ID of `namespace/account` in the test trust domain.
fn id(namespace: &str, account: &str) -> String {
    format!("spiffe://example.org/ns/{namespace}/sa/{account}")
}

/// Waits until the registrar's entries are those of these `shop` accounts (sorted).
fn wait_shop(spire: &Spire, accounts: &[&str], show_log: &dyn Fn() -> String) {
    let ids: Vec<String> = accounts.iter().map(|sa| id("shop", sa)).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_registered(spire, &ids, show_log);
}

/// Creates the ServiceAccount `namespace/name`.
fn create_account(admin: &AdminClient, namespace: &str, name: &str) {
    admin.create_service_account(namespace, name).unwrap();
}

/// Deletes the ServiceAccount `namespace/name`.
fn delete_account(admin: &AdminClient, namespace: &str, name: &str) {
    admin
        .delete(&format!(
            "/api/v1/namespaces/{namespace}/serviceaccounts/{name}"
        ))
        .unwrap();
}

/// Creates the running pod `namespace/name` of `account` on node n2 (the registrar is
/// cluster-wide; this agent, of n1, never enrolls it).
/// Returns its uid.
fn create_pod(admin: &AdminClient, namespace: &str, name: &str, account: &str, ip: &str) -> String {
    admin
        .create_pod(namespace, name, account, "n2", ip.parse().unwrap())
        .unwrap()
}

/// Adds an entry with the CLI (one the registrar does not own, or a stale one under its
/// parent).
fn create_entry(spire: &Spire, parent: &str, spiffe_id: &str, selectors: &[&str]) {
    let mut args = vec![
        "entry",
        "create",
        "-parentID",
        parent,
        "-spiffeID",
        spiffe_id,
    ];
    for s in selectors {
        args.extend(["-selector", s]);
    }
    spire.server_cli(&args).unwrap();
}

/// The server's entry ids of the registrar's entries, by SPIFFE ID.
fn entry_ids(spire: &Spire) -> BTreeMap<String, String> {
    owned(spire)
        .into_iter()
        .map(|e| (e.spiffe_id, e.id))
        .collect()
}

#[test]
fn kubernetes_source_registers_spire_entries_for_the_service_accounts_of_enrolled_namespaces() {
    let Some(_privileged) = testbed::require_privileged("kube_spire") else {
        return;
    };
    // Both servers start at once.
    let spire = std::thread::spawn(|| Spire::start(SpireConfig::default()));
    let kube_server = testbed::KubeApiServer::start();
    let spire = spire.join().unwrap().unwrap();
    let kube_server = kube_server.unwrap();
    let admin = kube_server.admin();

    // `shop`: accounts `client` and `server` with a pod each, and `idle` with none;
    // `legacy` (never enrolled): `old` with a pod.
    for ns in ["shop", "legacy"] {
        admin.create_namespace(ns).unwrap();
    }
    for (ns, sa) in [
        ("shop", "client"),
        ("shop", "server"),
        ("shop", "idle"),
        ("legacy", "old"),
    ] {
        create_account(&admin, ns, sa);
    }
    let client_uid = create_pod(&admin, "shop", "client-1", "client", "10.10.2.2");
    create_pod(&admin, "shop", "server-1", "server", "10.10.2.3");
    create_pod(&admin, "legacy", "old-1", "old", "10.10.2.4");

    // Entries the registrar does not own: the node's and the delegate's (testbed's), one for the same
    // ID under the node, one under another parent. And a stale one under its parent, as a
    // previous run may have left.
    let node = spire.node_id();
    let delegate = spire.delegate_id();
    create_entry(
        &spire,
        &node,
        &id("shop", "client"),
        &["k8s:ns:shop", "k8s:sa:client"],
    );
    create_entry(
        &spire,
        "spiffe://example.org/other-registrar",
        &id("shop", "server"),
        &["k8s:ns:shop", "k8s:sa:server"],
    );
    create_entry(
        &spire,
        &delegate,
        &id("gone", "stale"),
        &["k8s:ns:gone", "k8s:sa:stale"],
    );
    let foreign: Vec<Entry> = spire
        .entries()
        .unwrap()
        .into_iter()
        .filter(|e| e.parent_id != delegate)
        .collect();
    // With the node's alias and the delegate's entry.
    assert_eq!(foreign.len(), 4, "{foreign:?}");

    let dir = tempfile::tempdir().unwrap();
    let xds_socket = dir.path().join("xds").join("xds.sock");
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let log = dir.path().join("agent.log");
    let spawn_agent = || {
        agent_command(&kube_server.kubeconfig(), dir.path())
            .args(["--trust-domain", "example.org"])
            .args(["--ca", "none"])
            .arg("--xds-unix-socket")
            .arg(&xds_socket)
            .args(["--metrics-address", &metrics.to_string()])
            .arg("--spire-server-socket")
            .arg(spire.server_socket())
            .spawn()
            .unwrap()
    };
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut agent = spawn_agent();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // The stale entry goes at start; `shop` is not enrolled yet.
        wait_registered(&spire, &[], &show_log);
        let store = rt.block_on(proxy_view(&xds_socket));
        enroll(&spire, &admin, &show_log);
        new_account(&spire, &admin, &show_log);
        last_pod_and_account_gone(&spire, &admin, (&store, &client_uid), &show_log);
        let before = entry_ids(&spire);
        stop(&mut agent, &show_log);
        while_down(&spire, &admin);
        agent = spawn_agent();
        after_restart(&spire, &before, &show_log);
        repaired(&spire, &show_log);
        // Unlabelled: every entry of the namespace goes; the others stay as they were.
        label(&admin, "shop", false);
        wait_registered(&spire, &[], &show_log);
        let mut left = spire.entries().unwrap();
        left.retain(|e| e.parent_id != delegate);
        assert_eq!(left, foreign, "entries of other parents changed");
    }));
    if let Err(panic) = outcome {
        let _ = agent.kill();
        eprintln!("agent log:\n{}", show_log());
        eprintln!("SPIRE server log tail:\n{}", spire.log_tail("server", 30));
        std::panic::resume_unwind(panic);
    }
    stop(&mut agent, &show_log);
    let text = show_log();
    for line in ["Kubernetes objects listed", "SPIRE entries reconciled"] {
        assert!(text.contains(line), "log lacks {line:?}:\n{text}");
    }
    assert!(!text.contains("SPIRE refused"), "{text}");
}

/// The cluster as a proxy sees it over xDS, once the agent serves it (the unix socket: no
/// CA, as with SPIRE).
async fn proxy_view(socket: &Path) -> Arc<WorkloadStore> {
    common::wait_for("the xDS socket", Duration::from_secs(30), || {
        socket.exists()
    })
    .await;
    let channel = meshwire_svid::uds::channel(socket.to_owned(), Duration::from_secs(5));
    let (store, _task) =
        tokio::time::timeout(Duration::from_secs(30), xds_client(channel, "n1", None))
            .await
            .expect("xDS on the unix socket");
    store
}

/// Labelling `shop` registers one entry per ServiceAccount of it, with or without pods.
fn enroll(spire: &Spire, admin: &AdminClient, show_log: &dyn Fn() -> String) {
    label(admin, "shop", true);
    wait_shop(spire, &["client", "idle", "server"], show_log);
    for e in owned(spire) {
        let sa = e.spiffe_id.rsplit('/').next().unwrap().to_owned();
        assert_eq!(
            e.selectors,
            ["k8s:ns:shop".to_owned(), format!("k8s:sa:{sa}")],
            "{e:?}"
        );
        assert_eq!(e.x509_svid_ttl, 0, "the server's default lifetime");
    }
}

/// A new ServiceAccount gets its entry before its first pod starts.
fn new_account(spire: &Spire, admin: &AdminClient, show_log: &dyn Fn() -> String) {
    create_account(admin, "shop", "web");
    wait_shop(spire, &["client", "idle", "server", "web"], show_log);
    let _ = create_pod(admin, "shop", "web-1", "web", "10.10.2.5");
}

/// The last pod of an account going leaves its entry (the account may start pods again at
/// any time); the account going deletes it.
fn last_pod_and_account_gone(
    spire: &Spire,
    admin: &AdminClient,
    (store, client_uid): (&WorkloadStore, &str),
    show_log: &dyn Fn() -> String,
) {
    let before = entry_ids(spire);
    assert!(store.workload_by_uid(client_uid).is_some());
    admin
        .delete("/api/v1/namespaces/shop/pods/client-1")
        .unwrap();
    // Once the proxy has lost the pod, the agent's cluster view has; any later change
    // reaches the registrar with a view without the pod.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.workload_by_uid(client_uid).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "client-1 still over xDS\n{}",
            show_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    create_account(admin, "shop", "late");
    wait_shop(
        spire,
        &["client", "idle", "late", "server", "web"],
        show_log,
    );
    let after = entry_ids(spire);
    assert_eq!(
        after[&id("shop", "client")],
        before[&id("shop", "client")],
        "the entry of an account without pods was replaced"
    );

    delete_account(admin, "shop", "client");
    wait_shop(spire, &["idle", "late", "server", "web"], show_log);
}

/// While the agent is down: an account goes, another comes, and a stale entry appears for
/// an owned ID (other selectors, as a crash mid-update may leave).
fn while_down(spire: &Spire, admin: &AdminClient) {
    delete_account(admin, "shop", "server");
    create_account(admin, "shop", "batch");
    create_entry(
        spire,
        &spire.delegate_id(),
        &id("shop", "web"),
        &["k8s:ns:shop"],
    );
}

/// An owned entry deleted on the server by someone else comes back at the next periodic
/// pass (nothing changed in the cluster).
fn repaired(spire: &Spire, show_log: &dyn Fn() -> String) {
    let idle = id("shop", "idle");
    let old = entry_ids(spire)[&idle].clone();
    spire
        .server_cli(&["entry", "delete", "-entryID", &old])
        .unwrap();
    let start = std::time::Instant::now();
    // Gone, then back under a new entry id.
    while entry_ids(spire).get(&idle).is_none_or(|new| *new == old) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not repaired\n{}",
            show_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_shop(spire, &["batch", "idle", "late", "web"], show_log);
}

/// The restarted agent reconciles what changed while it was down, without duplicates and
/// without replacing the entries that were right (`before`: entry ids by SPIFFE ID).
fn after_restart(spire: &Spire, before: &BTreeMap<String, String>, show_log: &dyn Fn() -> String) {
    wait_shop(spire, &["batch", "idle", "late", "web"], show_log);
    let after = entry_ids(spire);
    for sa in ["idle", "late", "web"] {
        assert_eq!(
            after[&id("shop", sa)],
            before[&id("shop", sa)],
            "{sa} replaced"
        );
    }
}
