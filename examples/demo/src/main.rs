//! The one-command demo: two nodes of real network namespaces, an agent and a proxy on each,
//! traffic along every path, a table of what happened, and a clean-up (also on Ctrl-C).
//!
//! Run it as root from the repository: `sudo cargo run --release -p demo`; add `-- --spire`
//! to have a real SPIRE server and agent issue the workload certificates, or
//! `-- --kubernetes` to hold the cluster in a real Kubernetes API server (see the README).

use std::time::Duration;

use anyhow::{Result, bail};
use demo::launch::step;
use demo::{Cluster, ClusterOptions, ENROLLED_NS, Role, Source};

fn main() {
    demo::launch::exit_with("demo", run());
}

/// The options chosen on the command line: where the cluster lives (`--kubernetes`, or the
/// workloads file) and whether SPIRE issues the certificates (`--spire`).
fn options_from_args() -> Result<(Source, bool)> {
    const USAGE: &str = "usage: demo [--kubernetes] [--spire]";
    let (mut source, mut spire) = (Source::File, false);
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--kubernetes" => source = Source::Kubernetes,
            "--spire" => spire = true,
            "-h" | "--help" => {
                println!(
                    "{USAGE}\n\n  --kubernetes  run the cluster from a real Kubernetes API server (etcd and\n                kube-apiserver from MESHWIRE_PEERS_DIR, or built with Go) instead of\n                a workloads file\n  --spire       a real SPIRE server and agent issue the workload certificates"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} ({USAGE})"),
        }
    }
    Ok((source, spire))
}

fn run() -> Result<()> {
    let (source, spire) = options_from_args()?;
    let binaries = demo::launch::prepare("demo")?;

    step("building two nodes and five pods (network namespaces, veth pairs, bridges)");
    if source == Source::Kubernetes {
        step(
            "starting a Kubernetes API server (etcd, kube-apiserver) with the pods and the policy",
        );
    }
    let mut cluster = Cluster::start(ClusterOptions {
        binaries,
        log: "info".into(),
        reconcile_interval: Duration::from_secs(2),
        rules: "istio",
        proxy_env: Vec::new(),
        spire,
        source,
    })?;
    println!(
        "    agent + proxy running on node-1 and node-2; state and logs in {}",
        cluster.dir().display()
    );
    println!(
        "    namespace `{ENROLLED_NS}` is enrolled (label io.cilium/mtls-enabled=\"true\"); `legacy` is not"
    );
    if spire {
        println!(
            "    SPIRE issues the workload certificates; the agents run without a CA (--ca none: no key on any node) and serve xDS on a unix socket only"
        );
    }
    if let Some(server) = cluster.api_server() {
        println!(
            "    while it runs: kubectl --kubeconfig {} get namespaces,pods,authorizationpolicies -A",
            server.kubeconfig().display()
        );
    }

    let mut rows = Vec::new();
    step("sending traffic along every path");
    let paths = [
        (
            Role::Client,
            Role::ServerFar,
            "enrolled -> enrolled, other node",
        ),
        (
            Role::Client,
            Role::ServerNear,
            "enrolled -> enrolled, same node",
        ),
        (Role::Client, Role::Legacy, "enrolled -> not enrolled"),
        (Role::Legacy, Role::ServerFar, "not enrolled -> enrolled"),
        (
            Role::Intruder,
            Role::ServerFar,
            "denied by policy (sa intruder)",
        ),
    ];
    for (from, to, what) in paths {
        rows.push((
            what.to_owned(),
            cluster.flow(from, to, &payload(64 * 1024))?,
        ));
    }

    let how = if source == Source::Kubernetes {
        " (on the Namespace: kubectl label namespace)"
    } else {
        " (workloads file)"
    };
    step(&format!("removing the label from `{ENROLLED_NS}`{how}"));
    cluster.set_enrolled(ENROLLED_NS, false)?;
    cluster.wait_enrolled(Duration::from_secs(30))?;
    rows.push((
        "after unenrolling: direct".to_owned(),
        cluster.flow(Role::Client, Role::ServerFar, &payload(64 * 1024))?,
    ));

    step(&format!("adding the label back to `{ENROLLED_NS}`{how}"));
    cluster.set_enrolled(ENROLLED_NS, true)?;
    cluster.wait_enrolled(Duration::from_secs(30))?;
    rows.push((
        "after re-enrolling".to_owned(),
        cluster.flow(Role::Client, Role::ServerFar, &payload(64 * 1024))?,
    ));

    print!("{}", demo::table(&rows));
    step("cleaning up (processes, namespaces, rules, state directory)");
    drop(cluster);
    println!("done.");
    Ok(())
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| b"meshwire-demo-"[i % 14]).collect()
}
