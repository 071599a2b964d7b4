//! The one-command demo: two nodes of real network namespaces, an agent and a proxy on each,
//! traffic along every path, a table of what happened, and a clean-up (also on Ctrl-C).
//!
//! Run it as root from the repository: `sudo cargo run --release -p demo`; with
//! `-- --kubernetes` the cluster lives in a real Kubernetes API server (see the README).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use demo::{Binaries, Cluster, ClusterOptions, ENROLLED_NS, Role, Source};

/// Set once Ctrl-C or SIGTERM arrived: errors after that are the interruption's doing.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() {
    match run() {
        Ok(()) => {}
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            // `run` dropped the cluster on its way out: everything is cleaned up.
            eprintln!("interrupted: cleaned up");
            std::process::exit(130);
        }
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The source chosen on the command line: `--kubernetes` or nothing.
fn source_from_args() -> Result<Source> {
    let mut source = Source::File;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--kubernetes" => source = Source::Kubernetes,
            "-h" | "--help" => {
                println!(
                    "usage: demo [--kubernetes]\n\n  --kubernetes  run the cluster from a real Kubernetes API server (etcd and\n                kube-apiserver from MESHWIRE_PEERS_DIR, or built with Go) instead of\n                a workloads file"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (usage: demo [--kubernetes])"),
        }
    }
    Ok(source)
}

fn run() -> Result<()> {
    let source = source_from_args()?;
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the demo builds network namespaces and iptables rules, so it must run as root: run `cargo run --release -p demo` from a root shell"
        );
    }
    if testbed::check_privileges().is_err() {
        install_packages()?;
    }
    if let Err(e) = testbed::check_privileges() {
        bail!(
            "{e} (the demo needs the iptables and iproute2 packages: apt-get install -y iptables iproute2)"
        );
    }
    install_interrupt_handler()?;
    let binaries = build_binaries()?;

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
        source,
    })?;
    println!(
        "    agent + proxy running on node-1 and node-2; state and logs in {}",
        cluster.dir().display()
    );
    println!(
        "    namespace `{ENROLLED_NS}` is enrolled (label io.cilium/mtls-enabled=\"true\"); `legacy` is not"
    );
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

/// Installs `iptables` and `iproute2` with apt-get, the one thing the demo needs beyond the
/// Rust toolchain.
fn install_packages() -> Result<()> {
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "iptables or iproute2 is missing and there is no apt-get to install them: install the iptables and iproute2 packages, then run the demo again"
        );
    }
    step("installing iptables and iproute2 (apt-get)");
    let update = Command::new("apt-get").args(["update", "-qq"]).status()?;
    let install = Command::new("apt-get")
        .args(["install", "-y", "-qq", "iptables", "iproute2"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !update.success() || !install.success() {
        bail!(
            "apt-get could not install iptables and iproute2; install them, then run the demo again"
        );
    }
    Ok(())
}

fn step(what: &str) {
    println!("==> {what}");
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| b"meshwire-demo-"[i % 14]).collect()
}

/// Builds the agent and proxy with the same profile as this binary, when run through cargo.
fn build_binaries() -> Result<Binaries> {
    let exe = std::env::current_exe().context("cannot find the demo executable")?;
    let dir: PathBuf = exe
        .parent()
        .context("the demo executable has no directory")?
        .to_owned();
    if let Some(cargo) = std::env::var_os("CARGO") {
        step("building the agent and proxy binaries");
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "agent", "-p", "proxy"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().context("cannot run cargo build")?;
        if !status.success() {
            bail!("cargo build -p agent -p proxy failed");
        }
    }
    Binaries::in_dir(&dir)
}

/// On Ctrl-C or SIGTERM: stop the children and delete this process's namespaces, then exit.
fn install_interrupt_handler() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal runtime")?;
    // Register the handlers before returning, so no signal is missed once the demo runs.
    let mut term = rt
        .block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        })
        .context("cannot install the SIGTERM handler")?;
    let mut int = rt
        .block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        })
        .context("cannot install the SIGINT handler")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let name = rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => "interrupted",
                    _ = term.recv() => "terminated",
                }
            });
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("\n{name}: cleaning up");
            // The agents and proxies share our process group: on Ctrl-C the terminal
            // signalled them too; on SIGTERM do it here. Our own handler absorbs it.
            let _ =
                nix::sys::signal::killpg(nix::unistd::getpgrp(), nix::sys::signal::Signal::SIGTERM);
            std::thread::sleep(Duration::from_millis(500));
            testbed::delete_own_namespaces();
            demo::remove_own_state_dirs();
            std::process::exit(130);
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
