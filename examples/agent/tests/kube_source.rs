//! The `agent` binary with `--source kubernetes` against a real API server (etcd +
//! kube-apiserver from `testbed`), on real pod network namespaces. The test plays the
//! kubelet (creates Pods with `spec.nodeName`, sets their addresses), the CNI plugin (sends
//! its events to the agent's socket), the node proxy (a ZDS client that checks the rules
//! and the pod's annotation whenever it is handed a pod or loses one), a proxy's xDS
//! client, and the agent of another node (annotates that node's pod).
//!
//! Privileged (root, `ip`, iptables): fails loudly without them unless
//! `MESHWIRE_SKIP_PRIVILEGED=1` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use meshwire_cni::event::{EventKind, Reply};
use meshwire_netns::NetNs;
use meshwire_xds_workload::authorization::{ConnectionInfo, PolicyAction};
use meshwire_xds_workload::workload::{NamespacedHostname, Port, TunnelProtocol};
use meshwire_xds_workload::{Identity, NetworkAddress, WorkloadStore};
use serde_json::json;
use tokio::sync::mpsc;

use common::kube::{
    Seen, agent_command, annotate, annotation, client, cni_event, install_policy_crd, label,
    policies, proxy_token, stand_in_proxy, wait_annotation,
};
use common::{
    channel, free_port, metric, metrics_text, rules_installed, stop, wait_for, xds_client,
};

const LONG: Duration = Duration::from_secs(30);

/// One pod of node n1 in the test bed.
struct TestPod {
    name: &'static str,
    namespace: &'static str,
    netns: PathBuf,
    ip: IpAddr,
    ns: NetNs,
}

/// What the phases share.
struct World<'a> {
    api: kube::Client,
    admin: testbed::kube::AdminClient,
    /// Pod uids by name.
    uids: BTreeMap<&'static str, String>,
    pods: &'a [TestPod],
    cni_socket: PathBuf,
    zds_socket: PathBuf,
    store: Arc<WorkloadStore>,
    /// What the stand-in proxy was told (once it runs).
    seen: mpsc::UnboundedReceiver<Seen>,
    proxy: Option<tokio::task::JoinHandle<()>>,
    metrics: SocketAddr,
    log: PathBuf,
}

impl<'a> World<'a> {
    fn uid(&self, name: &str) -> String {
        self.uids[name].clone()
    }

    fn pod(&self, name: &str) -> &'a TestPod {
        let pods: &'a [TestPod] = self.pods;
        pods.iter().find(|p| p.name == name).unwrap()
    }

    fn hbone(&self, name: &str) -> Option<bool> {
        self.store
            .workload_by_uid(&self.uid(name))
            .map(|w| w.protocol == TunnelProtocol::Hbone)
    }

    async fn wait_hbone(&self, name: &str, want: bool) {
        wait_for(&format!("HBONE {want} for {name}"), LONG, || {
            self.hbone(name) == Some(want)
        })
        .await;
    }

    /// The CNI plugin's ADD for a pod of node n1 (without its uid, as some runtimes do).
    async fn cni_add(&self, name: &str) -> Reply {
        let p = self.pod(name);
        cni_event(
            &self.cni_socket,
            EventKind::Add,
            (p.namespace, p.name, ""),
            &p.netns,
            p.ip,
        )
        .await
    }

    async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(LONG, self.seen.recv())
            .await
            .expect("the proxy was told nothing")
            .unwrap()
    }

    /// Waits until the proxy was told about `n` different pods, checking each message with
    /// `check` (which returns the pod's name); returns the names, sorted.
    async fn distinct(&mut self, n: usize, check: impl Fn(Seen) -> String) -> Vec<String> {
        let mut names = Vec::new();
        while names.len() < n {
            let name = check(self.next_seen().await);
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names.sort();
        names
    }

    /// Drops adds of enrolling pods still queued (a pod offered before the proxy connected
    /// goes out in its snapshot and once more when the agent retries); every one of them
    /// came before the pod's rules.
    fn drain_adds(&mut self) {
        while let Ok(event) = self.seen.try_recv() {
            assert!(
                matches!(
                    event,
                    Seen::Add {
                        rules_installed: false,
                        ..
                    }
                ),
                "{event:?}"
            );
        }
    }
}

#[test]
fn kubernetes_source_enrolls_by_label_publishes_services_and_policies_and_rides_out_outages() {
    let Some(_privileged) = testbed::require_privileged("kube_source") else {
        return;
    };
    let mut kube_server = testbed::KubeApiServer::start().unwrap();
    let tb = testbed::Testbed::build(testbed::TestbedOptions::new(), &[4]).unwrap();
    let pods: Vec<TestPod> = [
        ("client-1", "shop"),
        ("old-1", "legacy"),
        ("client-2", "shop"),
        ("client-3", "shop"),
    ]
    .into_iter()
    .zip(tb.pods())
    .map(|((name, namespace), p)| TestPod {
        name,
        namespace,
        netns: p.ns().path().to_owned(),
        ip: IpAddr::V4(p.ipv4()),
        ns: p.ns().open().unwrap(),
    })
    .collect();

    let dir = tempfile::tempdir().unwrap();
    let zds_socket = dir.path().join("ztunnel.sock");
    let cni_socket = dir.path().join("cni.sock");
    let state = dir.path().join("state");
    let log = dir.path().join("agent.log");
    let xds: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let kubeconfig = kube_server.kubeconfig();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(client(&kubeconfig));
    let admin = kube_server.admin();
    admin.create_namespace("shop").unwrap();
    admin.create_namespace("legacy").unwrap();
    install_policy_crd(&admin);
    let mut uids = BTreeMap::new();
    // client-3 is created later, while the agent runs.
    for p in pods.iter().filter(|p| p.name != "client-3") {
        let uid = admin.create_pod(p.namespace, p.name, p.name, "n1", p.ip);
        uids.insert(p.name, uid.unwrap());
    }
    let remote = "10.10.2.2".parse().unwrap();
    let uid = admin.create_pod("shop", "server-1", "server-1", "n2", remote);
    uids.insert("server-1", uid.unwrap());
    let token = proxy_token(&admin, "n1");

    let spawn_agent = || {
        agent_command(&kubeconfig, dir.path())
            .args(["--xds-address", &xds.to_string()])
            .args(["--metrics-address", &metrics.to_string()])
            .args([
                "--ca-trusted-node-accounts",
                "meshwire-system/meshwire-proxy",
            ])
            .spawn()
            .unwrap()
    };
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut agent = spawn_agent();

    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            let root = state.join("root-cert.pem");
            wait_for("the agent's root certificate", LONG, || root.exists()).await;
            wait_for("the CNI socket", LONG, || cni_socket.exists()).await;
            // The proxy authenticates with its token: the loopback is not trusted.
            refused_without_token(channel(xds, &root), metrics).await;
            let (store, xds_task) =
                xds_client(channel(xds, &root), "n1", Some(token.clone())).await;
            let mut world = World {
                api: api.clone(),
                admin: admin.clone(),
                uids,
                pods: &pods,
                cni_socket: cni_socket.clone(),
                zds_socket: zds_socket.clone(),
                store,
                seen: mpsc::unbounded_channel().1,
                proxy: None,
                metrics,
                log: log.clone(),
            };
            enroll_by_label(&mut world).await;
            new_pod_and_other_nodes(&mut world).await;
            services_and_policies(&world).await;
            strict_namespace(&world).await;
            agent_restart(&mut world, || {
                stop(&mut agent, &show_log);
                agent = spawn_agent();
            })
            .await;
            api_server_outage(&mut world, &mut kube_server).await;
            unlabel(&mut world).await;
            xds_task.abort();
            if let Some(proxy) = world.proxy.take() {
                proxy.abort();
            }
        });
    }));
    if let Err(panic) = outcome {
        let _ = agent.kill();
        eprintln!("agent log:\n{}", show_log());
        eprintln!("API server log tail:\n{}", kube_server.log_tail(30));
        std::panic::resume_unwind(panic);
    }
    stop(&mut agent, &show_log);
    let text = show_log();
    for line in [
        "Kubernetes objects listed",
        "CNI event answered",
        "restoring pods enrolled by a previous run",
        "network namespaces of running pods known restored=3",
        "watch failed",
        "watch resumed",
    ] {
        assert!(text.contains(line), "log lacks {line:?}:\n{text}");
    }
}

/// Sandboxes reported before and after the label; the label enrolls the pods of the
/// namespace in order (proxy, then rules, then HBONE and the annotation).
/// An xDS stream without a token is refused (Kubernetes mode trusts no loopback caller),
/// and counted.
async fn refused_without_token(channel: tonic::transport::Channel, metrics: SocketAddr) {
    use meshwire_xds_workload::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use meshwire_xds_workload::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    let first = DeltaDiscoveryRequest {
        type_url: meshwire_xds_workload::resource::ADDRESS_TYPE_URL.to_owned(),
        ..Default::default()
    };
    let requests =
        tokio_stream::StreamExt::chain(tokio_stream::once(first), tokio_stream::pending());
    let refused = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(requests)
        .await
        .expect_err("an xDS stream without a token is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    let text = metrics_text(metrics).await;
    assert_eq!(
        metric(
            &text,
            r#"meshwire_agent_caller_refusals_total{endpoint="xds",reason="no_credentials"}"#
        ),
        Some(1.0),
        "{text}"
    );
}

async fn enroll_by_label(w: &mut World<'_>) {
    wait_for("every pod over xDS", LONG, || {
        ["client-1", "old-1", "client-2", "server-1"]
            .iter()
            .all(|n| w.hbone(n).is_some())
    })
    .await;
    assert_eq!(w.hbone("client-1"), Some(false), "not labelled yet");
    let workload = w.store.workload_by_uid(&w.uid("client-1")).unwrap();
    assert_eq!(workload.addresses, vec![w.pod("client-1").ip]);
    assert_eq!(workload.service_account, "client-1");
    assert_eq!(workload.node, "n1");

    // The CNI plugin reports the sandboxes; nothing is enrolled yet.
    assert_eq!(w.cni_add("client-1").await, Reply::NotEnrolled);
    assert_eq!(w.cni_add("old-1").await, Reply::NotEnrolled);

    // Labelled with no proxy connected: an ADD cannot be enrolled and fails, so the runtime
    // retries it. The agent learns of the label through its watch, so an ADD sent before
    // the watch delivers it is still (rightly) not enrolled: repeat it until the agent
    // answers otherwise.
    label(&w.admin, "shop", true);
    let deadline = tokio::time::Instant::now() + LONG;
    let reply = loop {
        let reply = w.cni_add("client-2").await;
        if reply != Reply::NotEnrolled || tokio::time::Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(matches!(reply, Reply::Failed { .. }), "{reply:?}");

    // The proxy connects: both pods with known sandboxes are handed over before any rule
    // or annotation.
    let netns = w
        .pods
        .iter()
        .filter(|p| p.namespace == "shop")
        .map(|p| (p.name.to_owned(), p.netns.clone()))
        .collect();
    let (seen, proxy) = stand_in_proxy(&w.api, &w.zds_socket, "shop", netns);
    w.seen = seen;
    w.proxy = Some(proxy);
    let added = w
        .distinct(2, |seen| match seen {
            Seen::Add {
                name,
                rules_installed,
                annotation,
            } => {
                assert!(!rules_installed, "{name}: rules before the proxy held it");
                assert_ne!(
                    annotation.as_deref(),
                    Some("enabled"),
                    "{name}: enabled too early"
                );
                name
            }
            other => panic!("unexpected {other:?}"),
        })
        .await;
    assert_eq!(added, ["client-1", "client-2"]);
    for name in ["client-1", "client-2"] {
        let ns = &w.pod(name).ns;
        wait_for(&format!("rules in {name}"), LONG, || rules_installed(ns)).await;
        w.wait_hbone(name, true).await;
        wait_annotation(&w.api, "shop", name, Some("enabled")).await;
    }
    assert!(
        !rules_installed(&w.pod("old-1").ns),
        "legacy is not labelled"
    );
    assert_eq!(annotation(&w.api, "legacy", "old-1").await, None);
    assert_eq!(w.hbone("old-1"), Some(false));

    // The runtime retries the ADD that failed: enrolled now, answered at once.
    assert_eq!(w.cni_add("client-2").await, Reply::Done);
}

/// A pod started in an enrolled namespace is answered only once enrolled; a pod of another
/// node is HBONE only while its node's agent says `enabled`.
async fn new_pod_and_other_nodes(w: &mut World<'_>) {
    let p = w.pod("client-3");
    let uid = w
        .admin
        .create_pod("shop", "client-3", "client-3", "n1", p.ip)
        .unwrap();
    w.uids.insert("client-3", uid.clone());
    let reply = cni_event(
        &w.cni_socket,
        EventKind::Add,
        ("shop", "client-3", &uid),
        &p.netns,
        p.ip,
    )
    .await;
    assert_eq!(reply, Reply::Done);
    assert!(rules_installed(&p.ns), "done only with the rules in place");
    assert_eq!(w.hbone("client-3"), Some(true), "and advertised");
    loop {
        match w.next_seen().await {
            Seen::Add {
                name,
                rules_installed,
                ..
            } if name == "client-3" => {
                assert!(!rules_installed);
                break;
            }
            Seen::Add {
                rules_installed: false,
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    w.drain_adds();

    assert_eq!(w.hbone("server-1"), Some(false));
    annotate(&w.api, "shop", "server-1", Some("enabled")).await;
    w.wait_hbone("server-1", true).await;
    annotate(&w.api, "shop", "server-1", Some("pending")).await;
    w.wait_hbone("server-1", false).await;
    annotate(&w.api, "shop", "server-1", Some("enabled")).await;
    w.wait_hbone("server-1", true).await;
}

/// A Service and its EndpointSlice, and an AuthorizationPolicy, reach xDS.
async fn services_and_policies(w: &World<'_>) {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}], "selector": {"app": "client-1"}}
    }))
    .unwrap();
    let svc = Api::<Service>::namespaced(w.api.clone(), "shop")
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let vip: IpAddr = svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [w.pod("client-1").ip.to_string()],
                       "targetRef": {"kind": "Pod", "namespace": "shop", "name": "client-1", "uid": w.uid("client-1")}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(w.api.clone(), "shop")
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();
    let key = NamespacedHostname::new("shop", "web.shop.svc.cluster.local");
    wait_for("the service over xDS", LONG, || {
        w.store
            .service_by_vip(&NetworkAddress::new("", vip))
            .is_some_and(|s| s.key() == key)
    })
    .await;
    wait_for("the endpoint's service ports", LONG, || {
        w.store
            .workload_by_uid(&w.uid("client-1"))
            .is_some_and(|wl| wl.services.get(&key) == Some(&vec![Port::new(80, 8080)]))
    })
    .await;
    assert_eq!(w.store.endpoints(&key).len(), 1);

    let policy = json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-intruder", "namespace": "shop"},
        "spec": {"action": "DENY", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/intruder"]}}]}]}
    });
    policies(&w.api, "shop")
        .create(
            &PostParams::default(),
            &serde_json::from_value(policy).unwrap(),
        )
        .await
        .unwrap();
    wait_for("the policy over xDS", LONG, || {
        w.store.policy("shop/deny-intruder").is_some()
    })
    .await;
    let policy = w.store.policy("shop/deny-intruder").unwrap();
    assert_eq!(policy.action, PolicyAction::Deny);
    let target = w.store.workload_by_uid(&w.uid("client-1")).unwrap();
    let from = |sa: &str| {
        ConnectionInfo::new(
            w.pod("client-2").ip,
            SocketAddr::new(w.pod("client-1").ip, 8080),
            Some(Identity::new("cluster.local", "shop", sa)),
        )
    };
    assert!(
        !w.store
            .authorize(&from("intruder"), &target)
            .decision
            .is_allowed()
    );
    assert!(
        w.store
            .authorize(&from("client-2"), &target)
            .decision
            .is_allowed()
    );
}

/// `io.cilium/mtls-mode: strict` on an enrolled Namespace publishes its strict mutual-TLS
/// policy (plaintext into its pods denied, mTLS allowed); removing the label withdraws it.
async fn strict_namespace(w: &World<'_>) {
    let set_mode = |mode: serde_json::Value| async move {
        Api::<Namespace>::all(w.api.clone())
            .patch(
                "shop",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"io.cilium/mtls-mode": mode}}})),
            )
            .await
            .unwrap();
    };
    const KEY: &str = "shop/istio_converted_static_strict";
    set_mode(json!("strict")).await;
    wait_for("the strict policy over xDS", LONG, || {
        w.store.policy(KEY).is_some()
    })
    .await;
    let target = w.store.workload_by_uid(&w.uid("client-1")).unwrap();
    assert!(w.store.requires_mtls(&target));
    let dst = SocketAddr::new(w.pod("client-1").ip, 8080);
    let plaintext = ConnectionInfo::new(w.pod("old-1").ip, dst, None);
    assert!(!w.store.authorize(&plaintext, &target).decision.is_allowed());
    let mtls = ConnectionInfo::new(
        w.pod("client-2").ip,
        dst,
        Some(Identity::new("cluster.local", "shop", "client-2")),
    );
    assert!(w.store.authorize(&mtls, &target).decision.is_allowed());
    let old = w.store.workload_by_uid(&w.uid("old-1")).unwrap();
    assert!(
        !w.store.requires_mtls(&old),
        "the legacy namespace stays permissive"
    );

    set_mode(json!(null)).await;
    wait_for("the strict policy withdrawn", LONG, || {
        w.store.policy(KEY).is_none()
    })
    .await;
}

/// An agent restart keeps every pod: the same sandboxes (from its state file), no delete,
/// rules and annotations untouched; the proxy is handed its pods again.
async fn agent_restart(w: &mut World<'_>, restart: impl FnOnce()) {
    restart();
    let readded = w
        .distinct(3, |seen| match seen {
            Seen::Add {
                name,
                rules_installed,
                annotation,
            } => {
                assert!(rules_installed, "{name}: rules gone across the restart");
                assert_eq!(annotation.as_deref(), Some("enabled"), "{name}");
                name
            }
            other => panic!("unexpected across the restart: {other:?}"),
        })
        .await;
    assert_eq!(readded, ["client-1", "client-2", "client-3"]);
    for name in ["client-1", "client-2", "client-3"] {
        assert_eq!(
            annotation(&w.api, "shop", name).await.as_deref(),
            Some("enabled")
        );
        w.wait_hbone(name, true).await;
    }
    let log = std::fs::read_to_string(&w.log).unwrap();
    assert!(
        !log.contains("redirection rules removed"),
        "rules were removed across the restart"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok(event) = w.seen.try_recv() {
        assert!(matches!(event, Seen::Add { .. }), "{event:?}");
    }
}

/// An API server outage unenrolls nothing; the agent resyncs after it.
async fn api_server_outage(w: &mut World<'_>, kube_server: &mut testbed::KubeApiServer) {
    kube_server.stop_apiserver();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        w.seen.try_recv().is_err(),
        "the proxy was told something during the outage"
    );
    for name in ["client-1", "client-2", "client-3"] {
        assert!(
            rules_installed(&w.pod(name).ns),
            "{name} lost its rules during the outage"
        );
        assert_eq!(
            w.hbone(name),
            Some(true),
            "{name} lost HBONE during the outage"
        );
    }
    assert_eq!(w.hbone("server-1"), Some(true));
    assert!(w.store.policy("shop/deny-intruder").is_some());
    let m = metrics_text(w.metrics).await;
    assert_eq!(metric(&m, "meshwire_agent_enrolled_pods"), Some(3.0), "{m}");
    assert!(
        metric(
            &m,
            "meshwire_agent_failures_total{cause=\"kubernetes_watch\"}"
        ) >= Some(1.0),
        "{m}"
    );
    assert_eq!(
        w.cni_add("client-1").await,
        Reply::Done,
        "a known, enrolled sandbox"
    );

    // Back: a change made after the restart is picked up.
    kube_server.start_apiserver().unwrap();
    policies(&w.api, "shop")
        .delete("deny-intruder", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the policy withdrawn after the restart", LONG, || {
        w.store.policy("shop/deny-intruder").is_none()
    })
    .await;
}

/// Unlabelling unenrolls in order: the annotation and the rules are gone before the proxy
/// lets go.
async fn unlabel(w: &mut World<'_>) {
    label(&w.admin, "shop", false);
    let released = w
        .distinct(3, |seen| match seen {
            Seen::Del {
                name,
                rules_installed,
                annotation,
            } => {
                assert!(!rules_installed, "{name}: rules still there at the delete");
                assert_eq!(annotation, None, "{name}: still annotated at the delete");
                name
            }
            other => panic!("unexpected {other:?}"),
        })
        .await;
    assert_eq!(released, ["client-1", "client-2", "client-3"]);
    for name in ["client-1", "client-2", "client-3", "server-1"] {
        w.wait_hbone(name, false).await;
    }
}
