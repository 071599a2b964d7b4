//! The `agent` binary started without its pod state file on a node where an earlier run left
//! redirection rules in a pod whose namespace was unenrolled meanwhile: the agent finds them
//! at start-up and removes them, and leaves alone the rules of a pod it is to enroll.
//!
//! Privileged (root, `ip`, iptables): fails loudly without them unless
//! `MESHWIRE_SKIP_PRIVILEGED=1` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshwire_netns::NetNs;
use meshwire_netns::rules::RuleSet;

mod common;

/// Whether anything of the istio preset is in `ns`: one of its chains in any table (IPv4 or
/// IPv6), or its fwmark routing rule.
fn any_of_our_rules(ns: &NetNs) -> bool {
    ns.run_on_thread(|| {
        let out = |program: &str, args: &[&str]| {
            let o = Command::new(program).args(args).output().unwrap();
            assert!(o.status.success(), "{program} {args:?} failed");
            String::from_utf8(o.stdout).unwrap()
        };
        let tables = out("iptables-save", &[]) + &out("ip6tables-save", &[]);
        let routing = out("ip", &["-4", "rule", "show"]) + &out("ip", &["-6", "rule", "show"]);
        tables.contains("ISTIO_PRERT")
            || tables.contains("ISTIO_OUTPUT")
            || routing
                .lines()
                .any(|l| l.contains("fwmark") && l.contains("lookup 100"))
    })
    .unwrap()
}

#[test]
fn rules_left_in_an_unenrolled_pod_are_removed_at_start_up_without_a_state_file() {
    let Some(_privileged) = testbed::require_privileged("leftover_rules") else {
        return;
    };
    let tb = testbed::Testbed::build(testbed::TestbedOptions::new(), &[2]).unwrap();
    let node = tb.nodes()[0].ns().clone();
    let (enrolled, unenrolled) = (tb.pods()[0].ns(), tb.pods()[1].ns());
    let enrolled_ns = enrolled.open().unwrap();
    let unenrolled_ns = unenrolled.open().unwrap();

    // An earlier run enrolled both pods; then `legacy` was unenrolled while the agent was
    // away, and its state file is lost.
    RuleSet::istio().apply(&enrolled_ns).unwrap();
    RuleSet::istio().apply(&unenrolled_ns).unwrap();
    assert!(any_of_our_rules(&unenrolled_ns));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("workloads.yaml");
    // `shop` (client-1) is enrolled, `legacy` (old-1) is not.
    let pods = [("client", enrolled.path()), ("old", unenrolled.path())];
    std::fs::write(&file, common::workloads(true, &pods)).unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("agent.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent"));
    cmd.args(["--workloads", file.to_str().unwrap(), "--node-name", "n1"])
        .args([
            "--zds-socket",
            dir.path().join("ztunnel.sock").to_str().unwrap(),
        ])
        .args(["--state-dir", state.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut agent = node.spawn(&mut cmd).unwrap();
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(20);
    while any_of_our_rules(&unenrolled_ns) {
        if let Some(status) = agent.child_mut().unwrap().try_wait().unwrap() {
            panic!("agent exited with {status}\n{}", show_log());
        }
        assert!(
            Instant::now() < deadline,
            "the leftover rules of the unenrolled pod were not removed\n{}",
            show_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The agent logs the removal once its rules command returned: give the line a moment.
    let logged =
        |t: &str| t.contains("left by an earlier run") && t.contains("redirection rules removed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logged(&show_log()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = show_log();
    assert!(logged(&text), "{text}");
    // The pod to enroll keeps its rules: with no proxy connected it is only offered.
    assert!(
        RuleSet::istio().verify(&enrolled_ns).unwrap().is_clean(),
        "the rules of the pod to enroll were touched\n{text}"
    );
    assert!(
        agent.child_mut().unwrap().try_wait().unwrap().is_none(),
        "agent still running\n{text}"
    );
    agent.kill().unwrap();
}
