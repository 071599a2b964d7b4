//! The agent's SPIRE registrar role (`--spire-server-socket`) against a real SPIRE server:
//! enrolling a namespace in the workloads file registers one entry per service account of
//! its pods (on every node), parented to the proxies' ID; unenrolling deletes them.
//!
//! Privileged (root, `ip`, iptables; the agent runs in a namespace of its own): fails loudly
//! without them unless `MESHWIRE_SKIP_PRIVILEGED=1` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::path::Path;
use std::process::{Command, Stdio};

use testbed::{Spire, SpireConfig};

mod common;
use common::spire::wait_registered;
use common::{stop, workloads};

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn agent_registers_spire_entries_for_enrolled_namespaces() {
    let Some(_privileged) = testbed::require_privileged("spire_registrar") else {
        return;
    };
    let spire = Spire::start(SpireConfig::default()).unwrap();
    let node = testbed::Namespace::new().unwrap();
    let pods = [
        testbed::Namespace::new().unwrap(),
        testbed::Namespace::new().unwrap(),
    ];
    let pod_list = [("client", pods[0].path()), ("old", pods[1].path())];

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("workloads.yaml");
    let log = dir.path().join("agent.log");
    write_atomic(&file, &workloads(true, &pod_list));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent"));
    cmd.args(["--workloads", file.to_str().unwrap(), "--node-name", "n1"])
        .args(["--trust-domain", "example.org"])
        .args([
            "--zds-socket",
            dir.path().join("zds.sock").to_str().unwrap(),
        ])
        .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
        .args(["--reconcile-interval", "1s"])
        .arg("--spire-server-socket")
        .arg(spire.server_socket())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut agent = node.spawn(&mut cmd).unwrap();
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // `shop` is enrolled: its pods' service accounts, on this node and on n2.
    wait_registered(
        &spire,
        &[
            "spiffe://example.org/ns/shop/sa/client",
            "spiffe://example.org/ns/shop/sa/server",
        ],
        &show_log,
    );

    // Unenrolled: the entries go.
    write_atomic(&file, &workloads(false, &pod_list));
    wait_registered(&spire, &[], &show_log);
    assert!(
        show_log().contains("SPIRE entries reconciled"),
        "{}",
        show_log()
    );

    stop(agent.child_mut().unwrap(), &show_log);
}
