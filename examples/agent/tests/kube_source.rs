//! The `agent` binary with `--source kubernetes` against a real API server (etcd +
//! kube-apiserver from `testbed`), on real pod network namespaces. The test plays the
//! kubelet (creates Pods with `spec.nodeName`, sets their addresses), the CNI plugin (sends
//! its events to the agent's socket), the node proxy (a ZDS client that checks the rules
//! and the pod's annotation whenever it is handed a pod or loses one), and a proxy's xDS
//! client.
//!
//! Privileged (root, `ip`, iptables): fails loudly without them unless
//! `MESHWIRE_SKIP_PRIVILEGED=1` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use meshwire_cni::event::{EventKind, PodEvent, Reply};
use meshwire_netns::NetNs;
use meshwire_xds_workload::authorization::{ConnectionInfo, PolicyAction};
use meshwire_xds_workload::workload::{NamespacedHostname, Port, TunnelProtocol};
use meshwire_xds_workload::{Identity, NetworkAddress, WorkloadStore};
use meshwire_zds::Update;
use serde_json::json;
use tokio::sync::mpsc;

use support::{free_port, metric, metrics_text, rules_installed, wait_for, xds_client};

const LABEL: &str = "io.cilium/mtls-enabled";
const ANNOTATION: &str = "ambient.istio.io/redirection";
const LONG: Duration = Duration::from_secs(30);

/// What the stand-in proxy saw, with the state of the pod at that moment.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Add {
        name: String,
        rules_installed: bool,
        annotation: Option<String>,
    },
    Del {
        name: String,
        rules_installed: bool,
        annotation: Option<String>,
    },
}

async fn client(kubeconfig: &Path) -> kube::Client {
    let file = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

async fn create_namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

async fn label(client: &kube::Client, namespace: &str, on: bool) {
    let value = if on { json!("true") } else { json!(null) };
    Api::<Namespace>::all(client.clone())
        .patch(
            namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {LABEL: value}}})),
        )
        .await
        .unwrap();
}

/// Creates a running pod on `node` with `ip` (as the scheduler and the kubelet would);
/// returns its uid.
async fn create_pod(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    node: &str,
    ip: IpAddr,
) -> String {
    let api = Api::<Pod>::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "serviceAccountName": name,
            "containers": [{"name": "app", "image": "example.invalid/app:1"}]
        }
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &pod).await.unwrap();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running",
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}]
        }})),
    )
    .await
    .unwrap();
    created.metadata.uid.unwrap()
}

async fn annotation(client: &kube::Client, namespace: &str, name: &str) -> Option<String> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .unwrap();
    pod.metadata.annotations?.get(ANNOTATION).cloned()
}

async fn annotate(client: &kube::Client, namespace: &str, name: &str, value: Option<&str>) {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ANNOTATION: value}}})),
        )
        .await
        .unwrap();
}

/// Sends the CNI plugin's event to the agent, as the plugin does.
async fn cni(
    socket: &Path,
    kind: EventKind,
    pod: (&str, &str, &str),
    netns: &Path,
    ip: IpAddr,
) -> Reply {
    let event = PodEvent::new(
        kind,
        format!("sandbox-{}", pod.1),
        netns.display().to_string(),
        pod.0,
        pod.1,
        pod.2,
        vec![ip],
    );
    let socket = socket.to_owned();
    tokio::task::spawn_blocking(move || {
        meshwire_cni::event::send(&socket, &event, Duration::from_secs(5)).unwrap()
    })
    .await
    .unwrap()
}

/// The AuthorizationPolicy CRD, as far as the API server needs it to store the objects.
async fn install_policy_crd(client: &kube::Client) {
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "authorizationpolicies.security.istio.io"},
        "spec": {
            "group": "security.istio.io",
            "scope": "Namespaced",
            "names": {"plural": "authorizationpolicies", "singular": "authorizationpolicy", "kind": "AuthorizationPolicy", "listKind": "AuthorizationPolicyList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }}}
            }]
        }
    });
    let api: Api<kube::api::DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
        )),
    );
    api.create(
        &PostParams::default(),
        &serde_json::from_value(crd).unwrap(),
    )
    .await
    .unwrap();
    // Served once established.
    let policies = policy_api(client, "default");
    let deadline = Instant::now() + LONG;
    while policies.list(&Default::default()).await.is_err() {
        assert!(Instant::now() < deadline, "the CRD is never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn policy_api(client: &kube::Client, namespace: &str) -> Api<kube::api::DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        namespace,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("security.istio.io", "v1", "AuthorizationPolicy"),
            "authorizationpolicies",
        ),
    )
}

fn hbone(store: &WorkloadStore, uid: &str) -> Option<bool> {
    store
        .workload_by_uid(uid)
        .map(|w| w.protocol == TunnelProtocol::Hbone)
}

#[test]
fn kubernetes_source_enrolls_by_label_publishes_services_and_policies_and_rides_out_outages() {
    let Some(_privileged) = testbed::require_privileged("kube_source") else {
        return;
    };
    let mut kube_server = testbed::KubeApiServer::start().unwrap();
    // client-1, old-1, client-2, client-3 on node n1.
    let tb = testbed::Testbed::build(testbed::TestbedOptions::new(), &[4]).unwrap();
    let pods: Vec<(PathBuf, IpAddr, NetNs)> = tb
        .pods()
        .iter()
        .map(|p| {
            (
                p.ns().path().to_owned(),
                IpAddr::V4(p.ipv4()),
                p.ns().open().unwrap(),
            )
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
    let uids: BTreeMap<&str, String> = rt.block_on(async {
        create_namespace(&api, "shop").await;
        create_namespace(&api, "legacy").await;
        install_policy_crd(&api).await;
        let mut uids = BTreeMap::new();
        uids.insert(
            "client-1",
            create_pod(&api, "shop", "client-1", "n1", pods[0].1).await,
        );
        uids.insert(
            "old-1",
            create_pod(&api, "legacy", "old-1", "n1", pods[1].1).await,
        );
        uids.insert(
            "client-2",
            create_pod(&api, "shop", "client-2", "n1", pods[2].1).await,
        );
        uids.insert(
            "server-1",
            create_pod(&api, "shop", "server-1", "n2", "10.10.2.2".parse().unwrap()).await,
        );
        uids
    });

    let mut agent = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["--source", "kubernetes", "--node-name", "n1"])
        .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
        .args(["--zds-socket", zds_socket.to_str().unwrap()])
        .args(["--cni-socket", cni_socket.to_str().unwrap()])
        .args(["--state-dir", state.to_str().unwrap()])
        .args(["--xds-address", &xds.to_string()])
        .args(["--metrics-address", &metrics.to_string()])
        .args(["--reconcile-interval", "1s"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(scenario(
            &mut kube_server,
            &api,
            &uids,
            &pods,
            &zds_socket,
            &cni_socket,
            &state,
            xds,
            metrics,
        ));
    }));
    if let Err(panic) = outcome {
        let _ = agent.kill();
        eprintln!("agent log:\n{}", show_log());
        eprintln!("API server log tail:\n{}", kube_server.log_tail(30));
        std::panic::resume_unwind(panic);
    }

    // SIGTERM: a clean exit.
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
            "agent did not stop\n{}",
            show_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "agent exit status {status}\n{}",
        show_log()
    );
    let text = show_log();
    for line in [
        "Kubernetes objects listed",
        "watch failed",
        "watch resumed",
        "CNI event answered",
    ] {
        assert!(text.contains(line), "log lacks {line:?}:\n{text}");
    }
}

#[allow(clippy::too_many_arguments)]
async fn scenario(
    kube_server: &mut testbed::KubeApiServer,
    api: &kube::Client,
    uids: &BTreeMap<&str, String>,
    pods: &[(PathBuf, IpAddr, NetNs)],
    zds_socket: &Path,
    cni_socket: &Path,
    state: &Path,
    xds: SocketAddr,
    metrics: SocketAddr,
) {
    let mut uids = uids.clone();
    let uid = |name: &str| uids[name].clone();
    let root = state.join("root-cert.pem");
    wait_for("the agent's root certificate", LONG, || root.exists()).await;
    wait_for("the CNI socket", LONG, || cni_socket.exists()).await;
    let (store, xds_task) = xds_client(xds, &root, "n1").await;
    wait_for("every pod over xDS", LONG, || {
        ["client-1", "old-1", "client-2", "server-1"]
            .iter()
            .all(|n| store.workload_by_uid(&uid(n)).is_some())
    })
    .await;
    assert_eq!(
        hbone(&store, &uid("client-1")),
        Some(false),
        "not labelled yet"
    );
    let w = store.workload_by_uid(&uid("client-1")).unwrap();
    assert_eq!(w.addresses, vec![pods[0].1]);
    assert_eq!(w.service_account, "client-1");
    assert_eq!(w.node, "n1");

    // The CNI plugin reports the sandboxes; nothing is enrolled yet.
    let shop = |name: &'static str| ("shop", name, "");
    let reply = cni(
        cni_socket,
        EventKind::Add,
        shop("client-1"),
        &pods[0].0,
        pods[0].1,
    )
    .await;
    assert_eq!(reply, Reply::NotEnrolled);
    let reply = cni(
        cni_socket,
        EventKind::Add,
        ("legacy", "old-1", ""),
        &pods[1].0,
        pods[1].1,
    )
    .await;
    assert_eq!(reply, Reply::NotEnrolled);

    // Labelled with no proxy connected: an ADD cannot be enrolled and fails, so the runtime
    // would retry it.
    label(api, "shop", true).await;
    let reply = cni(
        cni_socket,
        EventKind::Add,
        shop("client-2"),
        &pods[2].0,
        pods[2].1,
    )
    .await;
    assert!(matches!(reply, Reply::Failed { .. }), "{reply:?}");

    // The stand-in proxy: records what it is handed, with the pod's rules and annotation.
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let names: BTreeMap<String, (String, PathBuf)> = [
        ("client-1", &pods[0].0),
        ("old-1", &pods[1].0),
        ("client-2", &pods[2].0),
        ("client-3", &pods[3].0),
    ]
    .into_iter()
    .map(|(n, p)| (n.to_owned(), (n.to_owned(), p.clone())))
    .collect();
    let handler_api = api.clone();
    let mut config = meshwire_zds::client::ClientConfig::default();
    config.path = zds_socket.to_owned();
    let proxy = meshwire_zds::client::Client::new(config, move |u: Update| {
        let seen_tx = seen_tx.clone();
        let api = handler_api.clone();
        let names = names.clone();
        async move {
            let (name, path, add) = match &u {
                Update::Add { workload, .. } => {
                    (workload.name.clone(), names[&workload.name].1.clone(), true)
                }
                Update::Del { uid } => {
                    // The test's uids are the API server's; map back by asking it.
                    let pods = Api::<Pod>::all(api.clone())
                        .list(&Default::default())
                        .await
                        .unwrap();
                    let name = pods
                        .items
                        .iter()
                        .find(|p| p.metadata.uid.as_deref() == Some(uid))
                        .and_then(|p| p.metadata.name.clone())
                        .unwrap();
                    let path = names[&name].1.clone();
                    (name, path, false)
                }
                _ => return Ok::<(), String>(()),
            };
            let installed = tokio::task::spawn_blocking(move || {
                rules_installed(&NetNs::from_path(path).unwrap())
            })
            .await
            .unwrap();
            let annotation = annotation(&api, "shop", &name).await;
            let event = if add {
                Seen::Add {
                    name,
                    rules_installed: installed,
                    annotation,
                }
            } else {
                Seen::Del {
                    name,
                    rules_installed: installed,
                    annotation,
                }
            };
            let _ = seen_tx.send(event);
            Ok(())
        }
    });
    let proxy_task = tokio::spawn(proxy.run());

    // Both labelled pods with known sandboxes are handed over before any rule or annotation.
    let mut added = Vec::new();
    while added.len() < 2 {
        match tokio::time::timeout(LONG, seen.recv())
            .await
            .unwrap()
            .unwrap()
        {
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
                if !added.contains(&name) {
                    added.push(name);
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    added.sort();
    assert_eq!(added, ["client-1", "client-2"]);
    for (name, ns) in [("client-1", &pods[0].2), ("client-2", &pods[2].2)] {
        wait_for(&format!("rules in {name}"), LONG, || rules_installed(ns)).await;
        wait_for(&format!("HBONE for {name}"), LONG, || {
            hbone(&store, &uid(name)) == Some(true)
        })
        .await;
    }
    for name in ["client-1", "client-2"] {
        let deadline = Instant::now() + LONG;
        while annotation(api, "shop", name).await.as_deref() != Some("enabled") {
            assert!(Instant::now() < deadline, "{name} never annotated enabled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(!rules_installed(&pods[1].2), "legacy is not labelled");
    assert_eq!(annotation(api, "legacy", "old-1").await, None);
    assert_eq!(hbone(&store, &uid("old-1")), Some(false));

    // The runtime retries the ADD that failed: enrolled now, answered at once.
    let reply = cni(
        cni_socket,
        EventKind::Add,
        shop("client-2"),
        &pods[2].0,
        pods[2].1,
    )
    .await;
    assert_eq!(reply, Reply::Done);

    // A new pod: its ADD is answered only once it is enrolled.
    let uid3 = create_pod(api, "shop", "client-3", "n1", pods[3].1).await;
    uids.insert("client-3", uid3.clone());
    let uid = |name: &str| uids[name].clone();
    let reply = cni(
        cni_socket,
        EventKind::Add,
        ("shop", "client-3", &uid3),
        &pods[3].0,
        pods[3].1,
    )
    .await;
    assert_eq!(reply, Reply::Done);
    assert!(
        rules_installed(&pods[3].2),
        "done only with the rules in place"
    );
    // (client-1 and client-2 went out in the proxy's snapshot and once more when the agent
    // retried them; every add came before their rules.)
    loop {
        match tokio::time::timeout(LONG, seen.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Seen::Add {
                name,
                rules_installed,
                ..
            } if name == "client-3" => {
                assert!(!rules_installed);
                break;
            }
            Seen::Add {
                name,
                rules_installed: false,
                ..
            } if name.starts_with("client-") => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    // A pod of another node is HBONE only while its node's agent says `enabled`.
    assert_eq!(hbone(&store, &uid("server-1")), Some(false));
    annotate(api, "shop", "server-1", Some("enabled")).await;
    wait_for("HBONE for the remote pod", LONG, || {
        hbone(&store, &uid("server-1")) == Some(true)
    })
    .await;
    annotate(api, "shop", "server-1", Some("pending")).await;
    wait_for("no HBONE for a pending remote pod", LONG, || {
        hbone(&store, &uid("server-1")) == Some(false)
    })
    .await;
    annotate(api, "shop", "server-1", Some("enabled")).await;

    // A Service and its EndpointSlice: the VIP and the endpoint's ports in xDS.
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}], "selector": {"app": "client-1"}}
    }))
    .unwrap();
    let svc = Api::<Service>::namespaced(api.clone(), "shop")
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let vip: IpAddr = svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [pods[0].1.to_string()],
                       "targetRef": {"kind": "Pod", "namespace": "shop", "name": "client-1", "uid": uid("client-1")}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(api.clone(), "shop")
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();
    let key = NamespacedHostname::new("shop", "web.shop.svc.cluster.local");
    wait_for("the service over xDS", LONG, || {
        store
            .service_by_vip(&NetworkAddress::new("", vip))
            .is_some_and(|s| s.key() == key)
    })
    .await;
    wait_for("the endpoint's service ports", LONG, || {
        store
            .workload_by_uid(&uid("client-1"))
            .is_some_and(|w| w.services.get(&key) == Some(&vec![Port::new(80, 8080)]))
    })
    .await;
    assert_eq!(store.endpoints(&key).len(), 1);

    // An AuthorizationPolicy: a DENY of one service account, as an xDS policy.
    let policy = json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-intruder", "namespace": "shop"},
        "spec": {"action": "DENY", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/intruder"]}}]}]}
    });
    policy_api(api, "shop")
        .create(
            &PostParams::default(),
            &serde_json::from_value(policy).unwrap(),
        )
        .await
        .unwrap();
    wait_for("the policy over xDS", LONG, || {
        store.policy("shop/deny-intruder").is_some()
    })
    .await;
    assert_eq!(
        store.policy("shop/deny-intruder").unwrap().action,
        PolicyAction::Deny
    );
    let target = store.workload_by_uid(&uid("client-1")).unwrap();
    let from = |sa: &str| {
        ConnectionInfo::new(
            pods[2].1,
            SocketAddr::new(pods[0].1, 8080),
            Some(Identity::new("cluster.local", "shop", sa)),
        )
    };
    assert!(
        !store
            .authorize(&from("intruder"), &target)
            .decision
            .is_allowed()
    );
    assert!(
        store
            .authorize(&from("client-2"), &target)
            .decision
            .is_allowed()
    );

    // An API server outage unenrolls nothing.
    while let Ok(event) = seen.try_recv() {
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
    kube_server.stop_apiserver();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        seen.try_recv().is_err(),
        "the proxy was told something during the outage"
    );
    for (name, ns) in [
        ("client-1", &pods[0].2),
        ("client-2", &pods[2].2),
        ("client-3", &pods[3].2),
    ] {
        assert!(
            rules_installed(ns),
            "{name} lost its rules during the outage"
        );
        assert_eq!(
            hbone(&store, &uid(name)),
            Some(true),
            "{name} lost HBONE during the outage"
        );
    }
    assert_eq!(hbone(&store, &uid("server-1")), Some(true));
    assert!(store.policy("shop/deny-intruder").is_some());
    let m = metrics_text(metrics).await;
    assert_eq!(metric(&m, "meshwire_agent_enrolled_pods"), Some(3.0), "{m}");
    assert!(
        metric(
            &m,
            "meshwire_agent_failures_total{cause=\"kubernetes_watch\"}"
        ) >= Some(1.0),
        "{m}"
    );
    let reply = cni(
        cni_socket,
        EventKind::Add,
        shop("client-1"),
        &pods[0].0,
        pods[0].1,
    )
    .await;
    assert_eq!(
        reply,
        Reply::Done,
        "a known, enrolled sandbox is still answered"
    );

    // Back: a change made after the restart is picked up. Unlabelling unenrolls in order:
    // annotation and rules gone before the proxy lets go.
    kube_server.start_apiserver().unwrap();
    policy_api(api, "shop")
        .delete("deny-intruder", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the policy withdrawn after the restart", LONG, || {
        store.policy("shop/deny-intruder").is_none()
    })
    .await;
    label(api, "shop", false).await;
    let mut released = Vec::new();
    while released.len() < 3 {
        match tokio::time::timeout(LONG, seen.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Seen::Del {
                name,
                rules_installed,
                annotation,
            } => {
                assert!(!rules_installed, "{name}: rules still there at the delete");
                assert_eq!(annotation, None, "{name}: still annotated at the delete");
                released.push(name);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    released.sort();
    assert_eq!(released, ["client-1", "client-2", "client-3"]);
    for name in ["client-1", "client-2", "client-3", "server-1"] {
        wait_for(&format!("{name} no longer HBONE"), LONG, || {
            hbone(&store, &uid(name)) == Some(false)
        })
        .await;
    }
    xds_task.abort();
    proxy_task.abort();
}
