//! The `agent` binary on real network namespaces, with this test standing in for the node
//! proxy: a ZDS client that inspects the pod's rules whenever the agent hands it a pod or
//! takes one back, an xDS client, and a CA client.
//!
//! Privileged (root, `ip`, iptables): fails loudly without them unless
//! `MESHWIRE_SKIP_PRIVILEGED=1` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use meshwire_netns::NetNs;
use meshwire_svid::SpiffeId;
use meshwire_svid::service::client::{CaClient, CaClientConfig};
use meshwire_xds_workload::workload::TunnelProtocol;
use meshwire_zds::Update;
use tokio::sync::mpsc;

mod common;
use common::{
    block_on, channel, metric, metrics_text, rules_installed, stop, wait_for, workloads, xds_client,
};

/// What the stand-in proxy saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// An add, whether the pod's redirection rules were already installed and whether it
    /// was already advertised as HBONE (over xDS or in the node's pod status file).
    Add {
        uid: String,
        rules_installed: bool,
        advertised: bool,
    },
    /// A delete, whether the rules were still installed and whether the node's pod status
    /// file still listed the pod.
    Del {
        uid: String,
        rules_installed: bool,
        listed: bool,
    },
}

/// Whether `<dir>/<node>.json` lists `uid`.
fn status_lists(dir: &Path, node: &str, uid: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(format!("{node}.json"))) else {
        return false;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["node"], node, "{text}");
    v["pods"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p.as_str() == Some(uid))
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn agent_enrolls_in_order_serves_xds_and_signs_only_local_identities() {
    let Some(_privileged) = testbed::require_privileged("agent_binary") else {
        return;
    };
    let tb = testbed::Testbed::build(testbed::TestbedOptions::new(), &[2]).unwrap();
    let node = tb.nodes()[0].ns().clone();
    let pod_paths: Vec<PathBuf> = tb.pods().iter().map(|p| p.ns().path().to_owned()).collect();
    let pod_ns: Vec<NetNs> = tb.pods().iter().map(|p| p.ns().open().unwrap()).collect();
    let client_pod = tb.pods()[0].ns().open().unwrap();
    let paths: BTreeMap<String, PathBuf> = [
        ("uid-client".to_owned(), pod_paths[0].clone()),
        ("uid-old".to_owned(), pod_paths[1].clone()),
    ]
    .into();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("workloads.yaml");
    let state = dir.path().join("state");
    let zds_socket = dir.path().join("ztunnel.sock");
    let log = dir.path().join("agent.log");
    // The default: next to the workloads file.
    let status_dir = dir.path().join("workloads.yaml.status");
    let pods = [
        ("client", pod_paths[0].as_path()),
        ("old", pod_paths[1].as_path()),
    ];
    write_atomic(&file, &workloads(true, &pods));

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent"));
    cmd.args(["--workloads", file.to_str().unwrap(), "--node-name", "n1"])
        .args(["--zds-socket", zds_socket.to_str().unwrap()])
        .args(["--state-dir", state.to_str().unwrap()])
        .args(["--reconcile-interval", "1s"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut agent = node.spawn(&mut cmd).unwrap();
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let result = node.run(move || {
        block_on(async move {
            let root = state.join("root-cert.pem");
            wait_for("the root certificate", Duration::from_secs(20), || {
                root.exists()
            })
            .await;

            // xDS client.
            let channel = channel("127.0.0.1:15012".parse().unwrap(), &root);
            let (store, ads_task) = xds_client(channel.clone(), "n1", None).await;
            let hbone = |uid: &str| {
                store
                    .workload_by_uid(uid)
                    .map(|w| w.protocol == TunnelProtocol::Hbone)
            };
            assert_eq!(hbone("uid-old"), Some(false), "namespace not enrolled");
            assert_eq!(
                hbone("uid-server"),
                Some(false),
                "remote pod of an enrolled namespace before its node reports it enrolled"
            );
            // Node n2's agent reports its pod enrolled.
            write_atomic(
                &status_dir.join("n2.json"),
                r#"{"node": "n2", "pods": ["uid-server"]}"#,
            );
            wait_for(
                "HBONE for the remote pod its node lists",
                Duration::from_secs(10),
                || hbone("uid-server") == Some(true),
            )
            .await;

            // Stand-in proxy over ZDS.
            let (seen_tx, mut seen) = mpsc::unbounded_channel();
            let handler_store = store.clone();
            let handler_paths = paths.clone();
            let handler_status = status_dir.clone();
            let mut zds_config = meshwire_zds::client::ClientConfig::default();
            zds_config.path = zds_socket.clone();
            let client = meshwire_zds::client::Client::new(zds_config, move |u: Update| {
                let seen_tx = seen_tx.clone();
                let store = handler_store.clone();
                let paths = handler_paths.clone();
                let status_dir = handler_status.clone();
                async move {
                    match u {
                        Update::Add { workload, netns } => {
                            let ns = NetNs::from_fd(netns).map_err(|e| e.to_string())?;
                            let installed =
                                tokio::task::spawn_blocking(move || rules_installed(&ns))
                                    .await
                                    .unwrap();
                            let advertised = store
                                .workload_by_uid(&workload.uid)
                                .is_some_and(|w| w.protocol == TunnelProtocol::Hbone)
                                || status_lists(&status_dir, "n1", &workload.uid);
                            let _ = seen_tx.send(Seen::Add {
                                uid: workload.uid,
                                rules_installed: installed,
                                advertised,
                            });
                        }
                        Update::Del { uid } => {
                            let path = paths[&uid].clone();
                            let installed = tokio::task::spawn_blocking(move || {
                                rules_installed(&NetNs::from_path(path).unwrap())
                            })
                            .await
                            .unwrap();
                            let listed = status_lists(&status_dir, "n1", &uid);
                            let _ = seen_tx.send(Seen::Del {
                                uid,
                                rules_installed: installed,
                                listed,
                            });
                        }
                        _ => {}
                    }
                    Ok::<(), String>(())
                }
            });
            let zds_task = tokio::spawn(client.run());

            // Enrollment: the add comes before any rule, the rules follow the ack, then HBONE.
            let first = tokio::time::timeout(Duration::from_secs(20), seen.recv())
                .await
                .unwrap()
                .unwrap();
            // No rules and no HBONE before the proxy acknowledged the pod.
            assert_eq!(
                first,
                Seen::Add {
                    uid: "uid-client".into(),
                    rules_installed: false,
                    advertised: false
                }
            );
            let client_ns = pod_ns[0].try_clone().unwrap();
            wait_for("rules in the enrolled pod", Duration::from_secs(10), || {
                rules_installed(&client_ns)
            })
            .await;
            wait_for(
                "HBONE for the enrolled pod",
                Duration::from_secs(10),
                || hbone("uid-client") == Some(true),
            )
            .await;
            assert!(
                status_lists(&status_dir, "n1", "uid-client"),
                "the agent reports its enrolled pod in its status file"
            );
            assert!(!status_lists(&status_dir, "n1", "uid-old"));
            assert!(
                !rules_installed(&pod_ns[1]),
                "no rules in the pod of the unlabelled namespace"
            );

            // Certificates: only identities of enrolled pods on this node.
            let mut ca_config = CaClientConfig::default();
            ca_config.impersonate = true;
            let ca = CaClient::new(channel.clone(), ca_config);
            let id = |s: &str| SpiffeId::new(s).unwrap();
            let ok = ca
                .fetch(&id("spiffe://cluster.local/ns/shop/sa/client"))
                .await
                .unwrap();
            assert_eq!(
                ok.svid.spiffe_id(),
                &id("spiffe://cluster.local/ns/shop/sa/client")
            );
            for refused in [
                "spiffe://cluster.local/ns/shop/sa/server", // runs on n2
                "spiffe://cluster.local/ns/legacy/sa/default", // not enrolled
                "spiffe://cluster.local/ns/shop/sa/nobody", // no such pod
            ] {
                match ca.fetch(&id(refused)).await {
                    Err(meshwire_svid::service::client::CaClientError::Status(s)) => {
                        assert_eq!(s.code(), tonic::Code::PermissionDenied, "{refused}: {s}");
                    }
                    other => panic!("{refused}: expected a refusal, got {other:?}"),
                }
            }

            let m = metrics_text("127.0.0.1:9964".parse().unwrap()).await;
            assert_eq!(metric(&m, "meshwire_agent_enrolled_pods"), Some(1.0), "{m}");
            assert_eq!(
                metric(&m, "meshwire_agent_connected_proxies"),
                Some(1.0),
                "{m}"
            );
            assert!(
                metric(&m, "meshwire_agent_enrollments_total") >= Some(1.0),
                "{m}"
            );

            // Drift: a jump deleted by hand comes back on the next periodic check.
            let jumps = |ns: &NetNs| {
                let out = ns
                    .run_on_thread(|| {
                        Command::new("iptables-save")
                            .args(["-t", "nat"])
                            .output()
                            .unwrap()
                    })
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).contains("-A OUTPUT -j ISTIO_OUTPUT")
            };
            pod_ns[0]
                .run_on_thread(|| {
                    let st = Command::new("iptables")
                        .args(["-t", "nat", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT"])
                        .status()
                        .unwrap();
                    assert!(st.success());
                })
                .unwrap();
            assert!(!jumps(&pod_ns[0]));
            wait_for("the repaired jump", Duration::from_secs(10), || {
                jumps(&client_ns)
            })
            .await;

            // Unenroll: HBONE withdrawn, rules removed before the delete reaches the proxy.
            write_atomic(&file, &workloads(false, &pods));
            // The first pass offered the pod before the proxy connected, so it arrived in
            // the snapshot and once more when the agent retried; both came before any rule.
            let del = loop {
                let event = tokio::time::timeout(Duration::from_secs(10), seen.recv())
                    .await
                    .unwrap()
                    .unwrap();
                match event {
                    Seen::Add {
                        ref uid,
                        rules_installed: false,
                        advertised: false,
                    } if uid == "uid-client" => {}
                    other => break other,
                }
            };
            assert_eq!(
                del,
                Seen::Del {
                    uid: "uid-client".into(),
                    rules_installed: false,
                    listed: false,
                }
            );
            wait_for("HBONE withdrawn", Duration::from_secs(10), || {
                hbone("uid-client") == Some(false)
            })
            .await;
            assert_eq!(
                hbone("uid-server"),
                Some(false),
                "remote pods follow the label too"
            );
            assert!(!status_lists(&status_dir, "n1", "uid-client"));

            // Re-enroll.
            write_atomic(&file, &workloads(true, &pods));
            let again = tokio::time::timeout(Duration::from_secs(10), seen.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                again,
                Seen::Add {
                    uid: "uid-client".into(),
                    rules_installed: false,
                    advertised: false
                }
            );
            wait_for("rules again", Duration::from_secs(10), || {
                rules_installed(&client_ns)
            })
            .await;
            wait_for(
                "HBONE again, local and remote",
                Duration::from_secs(10),
                || hbone("uid-client") == Some(true) && hbone("uid-server") == Some(true),
            )
            .await;
            // n2's agent drops its pod (unenrolling it there): no longer HBONE here.
            write_atomic(&status_dir.join("n2.json"), r#"{"node": "n2", "pods": []}"#);
            wait_for(
                "HBONE withdrawn for the remote pod its node dropped",
                Duration::from_secs(10),
                || hbone("uid-server") == Some(false),
            )
            .await;

            ads_task.abort();
            zds_task.abort();
        });
    });
    if let Err(e) = result {
        panic!("test thread failed: {e}\nagent log:\n{}", show_log());
    }

    // SIGTERM: a clean exit that leaves the rules in place.
    stop(agent.child_mut().unwrap(), &show_log);
    assert!(
        rules_installed(&client_pod),
        "rules stay after the agent stops"
    );
    let text = show_log();
    for line in [
        "enrolling pod",
        "proxy acknowledged pod",
        "redirection rules installed",
        "pod enrolled",
        "shutting down",
    ] {
        assert!(text.contains(line), "log lacks {line:?}:\n{text}");
    }
}
