//! The one-command demo: two nodes of real network namespaces, an agent and a proxy on each,
//! traffic along every path, a table of what happened, and a clean-up (also on Ctrl-C).
//!
//! Run it as root from the repository: `sudo cargo run --release -p demo`; add `-- --spire`
//! to have a real SPIRE server and agent issue the workload certificates.

use std::time::Duration;

use anyhow::Result;
use demo::launch::step;
use demo::{Cluster, ClusterOptions, ENROLLED_NS, Role};

fn main() {
    demo::launch::exit_with("demo", run());
}

fn run() -> Result<()> {
    let binaries = demo::launch::prepare("demo")?;
    // `--spire`: SPIRE issues the workload certificates (a real SPIRE server and agent).
    let spire = std::env::args().skip(1).any(|a| a == "--spire");

    step("building two nodes and five pods (network namespaces, veth pairs, bridges)");
    let mut cluster = Cluster::start(ClusterOptions {
        binaries,
        log: "info".into(),
        reconcile_interval: Duration::from_secs(2),
        rules: "istio",
        proxy_env: Vec::new(),
        spire,
    })?;
    println!(
        "    agent + proxy running on node-1 and node-2; state and logs in {}",
        cluster.dir().display()
    );
    println!(
        "    namespace `{ENROLLED_NS}` is enrolled (label io.cilium/mtls-enabled=\"true\"); `legacy` is not"
    );

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

    step(&format!("removing the label from `{ENROLLED_NS}`"));
    cluster.set_enrolled(ENROLLED_NS, false)?;
    cluster.wait_enrolled(Duration::from_secs(30))?;
    rows.push((
        "after unenrolling: direct".to_owned(),
        cluster.flow(Role::Client, Role::ServerFar, &payload(64 * 1024))?,
    ));

    step(&format!("adding the label back to `{ENROLLED_NS}`"));
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
