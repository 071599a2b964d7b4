//! The `agent` binary with its built-in CA turned off (`--ca none`, for SPIRE): workload
//! xDS on the unix socket only, no TLS endpoint, and no key or root certificate anywhere in
//! its state.
//!
//! Privileged (root, `ip`, iptables; the agent runs in a namespace of its own): fails loudly
//! without them unless `MESHWIRE_SKIP_PRIVILEGED=1` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{block_on, stop, wait_for, workloads, xds_client};

/// Every file below `dir`, recursively.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_below(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn without_the_ca_xds_is_on_the_unix_socket_only_and_no_key_exists() {
    let Some(_privileged) = testbed::require_privileged("no_ca") else {
        return;
    };
    let node = testbed::Namespace::new().unwrap();
    let pods = [
        testbed::Namespace::new().unwrap(),
        testbed::Namespace::new().unwrap(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("workloads.yaml");
    let state = dir.path().join("state");
    let xds_socket = dir.path().join("xds").join("xds.sock");
    let log = dir.path().join("agent.log");
    std::fs::write(
        &file,
        workloads(
            false,
            &[("client", pods[0].path()), ("old", pods[1].path())],
        ),
    )
    .unwrap();
    // The root an earlier run with the CA on left behind: removed at start.
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("root-cert.pem"),
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent"));
    cmd.args(["--workloads", file.to_str().unwrap(), "--node-name", "n1"])
        .args(["--ca", "none"])
        .arg("--xds-unix-socket")
        .arg(&xds_socket)
        .arg("--zds-socket")
        .arg(dir.path().join("zds.sock"))
        .arg("--state-dir")
        .arg(&state)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut agent = node.spawn(&mut cmd).unwrap();
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let socket = xds_socket.clone();
    let result = node.run(move || {
        block_on(async move {
            // xDS over the plaintext socket: the workloads of the file arrive.
            let channel = meshwire_svid::uds::channel(socket, Duration::from_secs(5));
            let (store, ads_task) =
                tokio::time::timeout(Duration::from_secs(30), xds_client(channel, "n1", None))
                    .await
                    .expect("xDS on the unix socket");
            wait_for("the workloads over xDS", Duration::from_secs(20), || {
                store.workload_by_uid("uid-client").is_some()
            })
            .await;
            ads_task.abort();
            // Nothing listens on the TLS address: neither xDS nor the certificate service.
            let tls = tokio::net::TcpStream::connect("127.0.0.1:15012").await;
            assert_eq!(
                tls.map(|_| ()).map_err(|e| e.kind()),
                Err(std::io::ErrorKind::ConnectionRefused),
                "the TLS endpoint is not opened without the CA"
            );
        });
    });
    if let Err(e) = result {
        panic!("test thread failed: {e}\nagent log:\n{}", show_log());
    }
    stop(agent.child_mut().unwrap(), &show_log);

    // No CA material: no key, no root, nothing holding a private key.
    assert!(state.is_dir());
    for f in files_below(dir.path()) {
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(
            !name.ends_with(".pem"),
            "{} written without the CA",
            f.display()
        );
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
            "{} holds a private key",
            f.display()
        );
    }
    assert!(show_log().contains("built-in CA off"), "{}", show_log());
}
