//! The `proxy` binary's command line as the e2e contract fixes it, and its shutdown.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn proxy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxy"));
    // The contract's environment variables must not leak in from the caller.
    for var in [
        "INPOD_UDS",
        "XDS_ADDRESS",
        "XDS_ROOT_CA",
        "CA_ADDRESS",
        "CA_ROOT_CA",
        "NODE_NAME",
        "CLUSTER_ID",
        "AUTH_TOKEN",
        "PACKET_MARK",
        "SECRET_TTL",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn help_lists_the_contract_flags_env_and_defaults() {
    let out = proxy().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, env, default) in [
        (
            "--zds-socket",
            Some("INPOD_UDS"),
            Some("/var/run/ztunnel/ztunnel.sock"),
        ),
        (
            "--xds-address",
            Some("XDS_ADDRESS"),
            Some("https://127.0.0.1:15012"),
        ),
        (
            "--xds-root-ca",
            Some("XDS_ROOT_CA"),
            Some("/var/run/meshwire/agent/root-cert.pem"),
        ),
        ("--ca-address", Some("CA_ADDRESS"), None),
        ("--ca-root-ca", Some("CA_ROOT_CA"), None),
        ("--node-name", Some("NODE_NAME"), None),
        ("--cluster-id", Some("CLUSTER_ID"), Some("Kubernetes")),
        ("--auth-token-file", Some("AUTH_TOKEN"), None),
        ("--packet-mark", Some("PACKET_MARK"), Some("1337")),
        ("--metrics-address", None, Some("[::]:15020")),
        ("--readiness-address", None, Some("[::]:15021")),
        ("--admin-address", None, Some("127.0.0.1:15000")),
        ("--secret-ttl", Some("SECRET_TTL"), Some("24h")),
    ] {
        let block = option_block(&help, flag)
            .unwrap_or_else(|| panic!("{flag} missing from --help:\n{help}"));
        if let Some(env) = env {
            assert!(block.contains(&format!("[env: {env}=")), "{flag}: {block}");
        }
        if let Some(default) = default {
            assert!(
                block.contains(&format!("[default: {default}]")),
                "{flag}: {block}"
            );
        }
    }
}

/// The text of one option in `--help`: its header line and the indented lines below it.
fn option_block(help: &str, flag: &str) -> Option<String> {
    let mut lines = help.lines().skip_while(|l| {
        let t = l.trim_start();
        !(t.starts_with(flag) && t[flag.len()..].starts_with([' ', '<']) && l.len() - t.len() <= 6)
    });
    let head = lines.next()?;
    let body: Vec<&str> = lines
        .take_while(|l| {
            let t = l.trim_start();
            t.is_empty() || l.len() - t.len() > 6
        })
        .collect();
    Some(format!("{head}\n{}", body.join("\n")))
}

#[test]
fn node_name_is_required() {
    let out = proxy().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--node-name"), "{err}");
}

#[test]
fn sigterm_while_waiting_for_the_control_plane_exits_cleanly() {
    if std::env::var("MESHWIRE_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("skipping: MESHWIRE_SKIP_PRIVILEGED=1");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = proxy()
        .args(["--node-name", "node-test"])
        .args(["--metrics-address", "127.0.0.1:0"])
        .args(["--readiness-address", "127.0.0.1:0"])
        .args(["--admin-address", "127.0.0.1:0"])
        .arg("--xds-root-ca")
        .arg(dir.path().join("not-yet.pem"))
        .arg("--zds-socket")
        .arg(dir.path().join("zds.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    if let Some(status) = child.try_wait().unwrap() {
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        panic!("proxy exited early ({status}); it needs root to mark sockets:\n{err}");
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no exit 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status}\n{err}");
    assert!(
        err.contains("waiting for the control-plane root certificate"),
        "{err}"
    );
    assert!(err.contains("SIGTERM"), "{err}");
}

/// The binary allocates with jemalloc, with the options `main.rs` sets (one arena, background
/// purging, 1 s decay): jemalloc lists its options on exit when asked through the environment.
#[test]
fn allocator_is_jemalloc_with_the_idle_memory_options() {
    let out = proxy()
        .arg("--help")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    for option in [
        "opt.narenas: 1",
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 1000",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(
            stats.contains(option),
            "{option} not in jemalloc's stats:\n{stats}"
        );
    }
}
