//! `meshwire-cni install` / `uninstall` against a node's configuration directory.

// Helpers outside #[test] functions: a failed step should abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshwire-cni"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn install_appends_to_the_primary_config_atomically_and_uninstall_removes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (conf, bin) = (tmp.path().join("net.d"), tmp.path().join("bin"));
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    // The primary network's single-plugin .conf sorts first; a later .conflist is ignored.
    std::fs::write(
        conf.join("10-bridge.conf"),
        r#"{"cniVersion":"1.0.0","name":"pods","type":"bridge","bridge":"cni0"}"#,
    )
    .unwrap();
    std::fs::write(
        conf.join("99-other.conflist"),
        r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#,
    )
    .unwrap();

    let args = [
        "install",
        "--conf-dir",
        conf.to_str().unwrap(),
        "--bin-dir",
        bin.to_str().unwrap(),
        "--agent-socket",
        "/run/test/cni.sock",
    ];
    for _ in 0..2 {
        let out = run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(bin.join("meshwire-cni").is_file());
    assert!(
        !conf.join("10-bridge.conf").exists(),
        "the .conf became a .conflist"
    );
    let list: Value =
        serde_json::from_slice(&std::fs::read(conf.join("10-bridge.conflist")).unwrap()).unwrap();
    let plugins = list["plugins"].as_array().unwrap();
    assert_eq!(
        plugins.len(),
        2,
        "installed once, even when run twice: {list}"
    );
    assert_eq!(plugins[0]["type"], "bridge");
    assert_eq!(plugins[1]["type"], "meshwire-cni");
    assert_eq!(plugins[1]["agent_socket"], "/run/test/cni.sock");
    assert_eq!(list["name"], "pods");
    let other: Value =
        serde_json::from_slice(&std::fs::read(conf.join("99-other.conflist")).unwrap()).unwrap();
    assert_eq!(other["plugins"].as_array().unwrap().len(), 0);
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(&conf)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    let out = run(&["uninstall", "--conf-dir", conf.to_str().unwrap()]);
    assert!(out.status.success());
    let list: Value =
        serde_json::from_slice(&std::fs::read(conf.join("10-bridge.conflist")).unwrap()).unwrap();
    assert_eq!(list["plugins"].as_array().unwrap().len(), 1);
}

#[test]
fn install_without_a_network_config_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&[
        "install",
        "--conf-dir",
        tmp.path().to_str().unwrap(),
        "--bin-dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no CNI network configuration"));
}
