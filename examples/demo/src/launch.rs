//! What the demo and the benchmark do before they build a cluster: check for root and the
//! packages they need, build the agent and proxy binaries, and clean up on Ctrl-C.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::Binaries;

/// Set once Ctrl-C or SIGTERM arrived: errors after that are the interruption's doing.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C or SIGTERM arrived (the handler of [`prepare`] then cleans up and exits).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Everything before the cluster: checks for root, installs `iptables` and `iproute2` if
/// they are missing, installs the clean-up handler for Ctrl-C and SIGTERM, and builds the
/// agent and proxy (with the profile of the running executable, when run through cargo).
/// `what` names the program in the error message about root.
pub fn prepare(what: &str) -> Result<Binaries> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the {what} builds network namespaces and iptables rules, so it must run as root: run it from a root shell"
        );
    }
    if testbed::check_privileges().is_err() {
        install_packages()?;
    }
    if let Err(e) = testbed::check_privileges() {
        bail!(
            "{e} (the {what} needs the iptables and iproute2 packages: apt-get install -y iptables iproute2)"
        );
    }
    install_interrupt_handler()?;
    build_binaries()
}

/// Ends the program with the outcome of its run: 0, 130 after Ctrl-C or SIGTERM (the run
/// dropped its cluster on the way out, so everything is cleaned up), or 1 with the error.
pub fn exit_with(what: &str, result: Result<()>) {
    match result {
        Ok(()) => {}
        Err(_) if interrupted() => {
            eprintln!("interrupted: cleaned up");
            std::process::exit(130);
        }
        Err(e) => {
            eprintln!("{what} failed: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Prints a step of the program's progress.
pub fn step(what: &str) {
    println!("==> {what}");
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
            crate::remove_own_state_dirs();
            std::process::exit(130);
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
