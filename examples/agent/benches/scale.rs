//! Scale of the Kubernetes source: the `agent` binary against a real API server (etcd +
//! kube-apiserver from `testbed`) holding 1,000 running pods in 100 namespaces on ten
//! nodes. This node (`n1`) runs 100 of them, in real network namespaces; the others only
//! reach the agent's xDS. The proxy's xDS client authenticates with a pod-bound token that
//! the agent reviews, as in a cluster. Half of this node's namespaces are enrolled before the agent
//! starts.
//!
//! Measured, and printed as a table and JSON (several runs, medians; nothing is asserted):
//! - from the agent's start to a proxy's first complete xDS snapshot (all 1,000 workloads);
//! - from the agent's start to every enrolled local pod advertised as HBONE;
//! - from a namespace's label change to all ten of its local pods enrolled (rules in place,
//!   HBONE in xDS);
//! - the agent's resident memory at the end and its peak.
//!
//! `cargo bench -p agent --bench scale [-- --runs N]` as root (it builds namespaces and
//! iptables rules), after `bash testbed/peers/build.sh kube`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failures abort the run

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshwire_cni::event::EventKind;
use meshwire_xds_workload::WorkloadStore;
use meshwire_xds_workload::workload::TunnelProtocol;

use common::kube::{cni_event, label, proxy_token};
use common::{channel, free_port, xds_client};

const NAMESPACES: usize = 100;
const PODS_PER_NAMESPACE: usize = 10;
const NODES: usize = 10;
/// This node's namespaces (all ten pods of each run here): `ns-000` … `ns-009`.
const LOCAL_NAMESPACES: usize = 10;
/// Of them, enrolled before the agent starts: `ns-000` … `ns-004`.
const ENROLLED_AT_START: usize = 5;
/// The namespace whose label the run flips.
const FLIPPED: usize = 9;
const LONG: Duration = Duration::from_secs(120);

fn ns_name(i: usize) -> String {
    format!("ns-{i:03}")
}

/// Pod `j` of namespace `i`: its node and address. Local pods take the test bed's addresses.
fn placement(i: usize, j: usize, local: &[IpAddr]) -> (String, IpAddr) {
    if i < LOCAL_NAMESPACES {
        ("n1".into(), local[i * PODS_PER_NAMESPACE + j])
    } else {
        let node = 2 + i % (NODES - 1);
        let ip = Ipv4Addr::new(10, 100 + node as u8, i as u8, j as u8 + 2);
        (format!("n{node}"), IpAddr::V4(ip))
    }
}

/// The agent's resident set and its peak, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < LONG, "{what}: not within {LONG:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

fn hbone_count(store: &WorkloadStore, uids: &BTreeSet<String>) -> usize {
    uids.iter()
        .filter(|u| {
            store
                .workload_by_uid(u)
                .is_some_and(|w| w.protocol == TunnelProtocol::Hbone)
        })
        .count()
}

struct Run {
    snapshot: Duration,
    enrolled_at_start: Duration,
    label_change: Duration,
    rss_mib: f64,
    peak_mib: f64,
}

/// One run on a fresh API server and test bed.
fn run_once() -> Run {
    let kube_server = testbed::KubeApiServer::start().unwrap();
    let tb = testbed::Testbed::build(
        testbed::TestbedOptions::new().ipv6(false).clone(),
        &[LOCAL_NAMESPACES * PODS_PER_NAMESPACE],
    )
    .unwrap();
    let local_ips: Vec<IpAddr> = tb.pods().iter().map(|p| IpAddr::V4(p.ipv4())).collect();
    let dir = tempfile::tempdir().unwrap();
    let (zds_socket, cni_socket) = (dir.path().join("ztunnel.sock"), dir.path().join("cni.sock"));
    let state = dir.path().join("state");
    let xds: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let kubeconfig = kube_server.kubeconfig();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The cluster as it is before the agent starts.
    let setup = Instant::now();
    let admin = kube_server.admin();
    let (start_uids, flipped_uids, token) = {
        let mut start = BTreeSet::new();
        let mut flipped = BTreeSet::new();
        for i in 0..NAMESPACES {
            let ns = ns_name(i);
            admin.create_namespace(&ns).unwrap();
            let enrolled = i < ENROLLED_AT_START || i >= LOCAL_NAMESPACES && i % 2 == 0;
            if enrolled {
                label(&admin, &ns, true);
            }
            for j in 0..PODS_PER_NAMESPACE {
                let (node, ip) = placement(i, j, &local_ips);
                let name = format!("pod-{j}");
                let uid = admin.create_pod(&ns, &name, &name, &node, ip).unwrap();
                if i < ENROLLED_AT_START {
                    start.insert(uid);
                } else if i == FLIPPED {
                    flipped.insert(uid);
                }
            }
        }
        (start, flipped, proxy_token(&admin, "n1"))
    };
    eprintln!(
        "  {} pods in {NAMESPACES} namespaces created in {:.1?}",
        NAMESPACES * PODS_PER_NAMESPACE,
        setup.elapsed()
    );

    let started = Instant::now();
    let mut agent = spawn_agent(&kubeconfig, &zds_socket, &cni_socket, &state, xds);
    let result = rt.block_on(async {
        // This node's proxy: acknowledges every pod it is handed.
        let mut config = meshwire_zds::client::ClientConfig::default();
        config.path = zds_socket.clone();
        let proxy = meshwire_zds::client::Client::new(config, |_| async { Ok::<(), String>(()) });
        let proxy = tokio::spawn(async move {
            let _ = proxy.run().await;
        });
        // The runtime tells the agent of every local sandbox, as the CNI plugin does.
        let root = state.join("root-cert.pem");
        wait_until("the agent's CNI socket and root", || {
            cni_socket.exists() && root.exists()
        })
        .await;
        let sandboxes: Vec<(String, String, std::path::PathBuf, IpAddr)> = tb
            .pods()
            .iter()
            .enumerate()
            .map(|(k, pod)| {
                let (i, j) = (k / PODS_PER_NAMESPACE, k % PODS_PER_NAMESPACE);
                (
                    ns_name(i),
                    format!("pod-{j}"),
                    pod.ns().path().to_owned(),
                    local_ips[k],
                )
            })
            .collect();
        let socket = cni_socket.clone();
        let cni = tokio::spawn(async move {
            for (ns, name, netns, ip) in sandboxes {
                cni_event(&socket, EventKind::Add, (&ns, &name, ""), &netns, ip).await;
            }
        });
        let (store, xds_task) = xds_client(channel(xds, &root), "n1", Some(token)).await;
        let total = NAMESPACES * PODS_PER_NAMESPACE;
        wait_until("a complete xDS snapshot", || {
            store.workload_count() >= total
        })
        .await;
        let snapshot = started.elapsed();
        wait_until("the enrolled local pods as HBONE", || {
            hbone_count(&store, &start_uids) == start_uids.len()
        })
        .await;
        let enrolled_at_start = started.elapsed();

        let flip = Instant::now();
        label(&admin, &ns_name(FLIPPED), true);
        wait_until("the flipped namespace's pods as HBONE", || {
            hbone_count(&store, &flipped_uids) == flipped_uids.len()
        })
        .await;
        let label_change = flip.elapsed();
        cni.await.unwrap();
        xds_task.abort();
        proxy.abort();
        (snapshot, enrolled_at_start, label_change)
    });
    let (rss_mib, peak_mib) = memory_mib(agent.id());
    let _ = agent.kill();
    let _ = agent.wait();
    Run {
        snapshot: result.0,
        enrolled_at_start: result.1,
        label_change: result.2,
        rss_mib,
        peak_mib,
    }
}

fn spawn_agent(
    kubeconfig: &Path,
    zds_socket: &Path,
    cni_socket: &Path,
    state: &Path,
    xds: SocketAddr,
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["--source", "kubernetes", "--node-name", "n1"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--zds-socket")
        .arg(zds_socket)
        .arg("--cni-socket")
        .arg(cni_socket)
        .arg("--state-dir")
        .arg(state)
        .args(["--xds-address", &xds.to_string()])
        .args(["--metrics-address", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--ca-trusted-node-accounts",
            "meshwire-system/meshwire-proxy",
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; only `--runs N` is ours.
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map_or(3, |n| n.parse().expect("--runs takes a number"));
    if testbed::require_privileged("scale benchmark").is_none() {
        return;
    }
    let mut all = Vec::new();
    for r in 1..=runs {
        eprintln!("run {r} of {runs}");
        let run = run_once();
        eprintln!(
            "  snapshot {:.0?}, enrolled at start {:.0?}, label change {:.0?}, agent RSS {:.1} MiB (peak {:.1})",
            run.snapshot, run.enrolled_at_start, run.label_change, run.rss_mib, run.peak_mib
        );
        all.push(run);
    }
    let ms =
        |f: fn(&Run) -> Duration| median(all.iter().map(|r| f(r).as_secs_f64() * 1e3).collect());
    let mib = |f: fn(&Run) -> f64| median(all.iter().map(f).collect());
    let rows = [
        (
            "agent start -> first complete xDS snapshot (1,000 workloads)",
            ms(|r| r.snapshot),
            "ms",
            Some(2000.0),
        ),
        (
            "agent start -> 50 enrolled local pods HBONE",
            ms(|r| r.enrolled_at_start),
            "ms",
            None,
        ),
        (
            "label change -> 10 pods of the namespace enrolled",
            ms(|r| r.label_change),
            "ms",
            Some(2000.0),
        ),
        (
            "agent resident memory at the end",
            mib(|r| r.rss_mib),
            "MiB",
            Some(100.0),
        ),
        (
            "agent peak resident memory",
            mib(|r| r.peak_mib),
            "MiB",
            Some(100.0),
        ),
    ];
    println!(
        "\nmedians of {runs} runs (1,000 pods, 100 namespaces, 10 nodes; 100 pods on this node)"
    );
    println!("{:<62} {:>10} {:>10}", "measure", "median", "target");
    for (name, value, unit, target) in &rows {
        let target = target.map_or_else(|| "-".to_owned(), |t| format!("< {t} {unit}"));
        println!("{name:<62} {value:>7.1} {unit:<3} {target:>10}");
    }
    let json: serde_json::Value = rows
        .iter()
        .map(|(name, value, unit, _)| {
            (
                name.to_string(),
                serde_json::json!({"median": value, "unit": unit}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    println!("{json}");
}
