//! Privileged tests of the test bed itself: real namespaces, links and routes.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use testbed::{Testbed, TestbedOptions, require_privileged};

/// Connects from `client` to a listener in `server` at `addr` and checks the server
/// sees the client's own address (no NAT on the way) and data passes.
fn connect_across(client: &testbed::Pod, server: &testbed::Pod, addr: SocketAddr) -> IpAddr {
    let listener = server
        .ns()
        .run(move || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    let mut stream = client
        .ns()
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    let (mut conn, peer) = listener.accept().unwrap();
    assert_eq!(peer, stream.local_addr().unwrap());
    stream.write_all(b"ping").unwrap();
    let mut buf = [0; 4];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    peer.ip()
}

#[test]
fn pods_reach_each_other_across_nodes_on_both_families() {
    let Some(_p) = require_privileged("pods_reach_each_other_across_nodes_on_both_families") else {
        return;
    };
    let tb = Testbed::build(TestbedOptions::default(), &[2, 1]).unwrap();
    let [a1, a2, b1] = tb.pods() else {
        panic!("expected three pods")
    };
    assert_eq!(
        (a1.node_index(), a2.node_index(), b1.node_index()),
        (1, 1, 2)
    );
    // Across nodes, both families; and between two pods of one node.
    let peer = connect_across(a1, b1, (b1.ipv4(), 8080).into());
    assert_eq!(peer, IpAddr::V4(a1.ipv4()));
    let peer = connect_across(b1, a1, (a1.ipv6().unwrap(), 8080).into());
    assert_eq!(peer, IpAddr::V6(b1.ipv6().unwrap()));
    let peer = connect_across(a2, a1, (a1.ipv4(), 8081).into());
    assert_eq!(peer, IpAddr::V4(a2.ipv4()));
}

#[test]
fn a_recreated_pod_has_a_new_namespace_at_the_same_path_and_is_reachable_at_once() {
    let Some(_p) = require_privileged(
        "a_recreated_pod_has_a_new_namespace_at_the_same_path_and_is_reachable_at_once",
    ) else {
        return;
    };
    let inode =
        |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let mut tb = Testbed::build(TestbedOptions::default(), &[1, 1]).unwrap();
    let (a, b) = (tb.pods()[0].clone(), tb.pods()[1].clone());
    // Traffic both ways first, so both nodes know the old interface's MAC.
    connect_across(&a, &b, (b.ipv4(), 8080).into());
    connect_across(&b, &a, (a.ipv4(), 8081).into());
    let path = a.ns().path().to_owned();
    let old_inode = inode(&path);

    let a = tb.recreate_pod(a).unwrap();
    assert_eq!(a.ns().path(), path);
    assert_ne!(
        inode(&path),
        old_inode,
        "a new namespace under the old path"
    );
    assert_eq!(tb.pods().len(), 2);
    // Reachable right away, both ways, on both families.
    let peer = connect_across(&b, &a, (a.ipv4(), 8082).into());
    assert_eq!(peer, IpAddr::V4(b.ipv4()));
    let peer = connect_across(&a, &b, (b.ipv6().unwrap(), 8083).into());
    assert_eq!(peer, IpAddr::V6(a.ipv6().unwrap()));

    // A clone still held keeps a pod from being recreated.
    let held = b.clone();
    assert!(matches!(
        tb.recreate_pod(b),
        Err(testbed::Error::Shared { .. })
    ));
    drop(held);
}

#[test]
fn host_namespace_is_untouched_and_names_are_short() {
    let Some(_p) = require_privileged("host_namespace_is_untouched_and_names_are_short") else {
        return;
    };
    let before = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap()
        .stdout;
    let tb = Testbed::build(TestbedOptions::default(), &[1]).unwrap();
    let after = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(
        before, after,
        "the host namespace gained or lost interfaces"
    );
    let pod = &tb.pods()[0];
    assert!(pod.ns().path().exists());
    assert!(pod.ns().path().starts_with(testbed::NETNS_DIR));
    for ns in [pod.ns(), tb.nodes()[0].ns(), tb.fabric()] {
        let links = ns.ip(&["-o", "link"]).unwrap();
        for line in links.lines() {
            let name = line.split(':').nth(1).unwrap().trim();
            let name = name.split('@').next().unwrap();
            assert!(name.len() <= 15, "interface name {name} too long");
        }
    }
    let addrs = pod.ns().ip(&["-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(addrs.contains(&pod.ipv4().to_string()), "{addrs}");
    assert!(addrs.contains(&pod.ipv6().unwrap().to_string()), "{addrs}");
}

#[test]
fn ipv4_only_test_bed_has_no_ipv6_addresses() {
    let Some(_p) = require_privileged("ipv4_only_test_bed_has_no_ipv6_addresses") else {
        return;
    };
    let mut opts = TestbedOptions::new();
    opts.ipv6(false);
    let tb = Testbed::build(opts, &[1, 1]).unwrap();
    let pod = &tb.pods()[0];
    assert_eq!(pod.ipv6(), None);
    let addrs = pod
        .ns()
        .ip(&["-o", "-6", "addr", "show", "dev", "eth0", "scope", "global"])
        .unwrap();
    assert_eq!(addrs.trim(), "");
    connect_across(pod, &tb.pods()[1], (tb.pods()[1].ipv4(), 9000).into());
}

#[test]
fn everything_is_deleted_on_drop_and_on_panic() {
    let Some(_p) = require_privileged("everything_is_deleted_on_drop_and_on_panic") else {
        return;
    };
    let paths = |tb: &Testbed| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = tb.pods().iter().map(|p| p.ns().path().to_owned()).collect();
        v.extend(tb.nodes().iter().map(|n| n.ns().path().to_owned()));
        v.push(tb.fabric().path().to_owned());
        v
    };
    let tb = Testbed::build(TestbedOptions::default(), &[1, 1]).unwrap();
    let created = paths(&tb);
    assert_eq!(created.len(), 5);
    assert!(created.iter().all(|p| p.exists()));
    drop(tb);
    assert!(
        created.iter().all(|p| !p.exists()),
        "left behind: {created:?}"
    );

    let mut created = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let tb = Testbed::build(TestbedOptions::default(), &[1]).unwrap();
        created = paths(&tb);
        panic!("a failing test");
    }));
    assert!(result.is_err());
    assert_eq!(created.len(), 3);
    assert!(
        created.iter().all(|p| !p.exists()),
        "left behind: {created:?}"
    );
}

#[test]
fn commands_and_processes_run_inside_the_namespace() {
    let Some(_p) = require_privileged("commands_and_processes_run_inside_the_namespace") else {
        return;
    };
    let mut tb = Testbed::build(TestbedOptions::default(), &[1]).unwrap();
    let pod = tb.pods()[0].clone();

    let out = pod
        .ns()
        .exec("ip", &["-o", "-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(out.contains(&format!("{}/24", pod.ipv4())), "{out}");
    let err = pod
        .ns()
        .exec("ip", &["link", "show", "dev", "nonexistent0"])
        .unwrap_err();
    assert!(matches!(err, testbed::Error::Command { .. }), "{err}");
    let err = pod
        .ns()
        .exec("meshwire-no-such-program", &["x"])
        .unwrap_err();
    assert!(matches!(err, testbed::Error::ToolMissing { .. }), "{err}");

    let out = pod
        .ns()
        .command("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("eth0"));

    let mut proc = pod.ns().spawn(Command::new("sleep").arg("30")).unwrap();
    let pid = proc.id();
    let ns_of_child = meshwire_netns::NetNs::from_pid(pid as i32).unwrap();
    assert_eq!(ns_of_child.id(), pod.ns().netns().id());
    assert_ne!(
        ns_of_child.id(),
        meshwire_netns::NetNs::current().unwrap().id()
    );
    proc.kill().unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

    let extra = tb.add_namespace().unwrap();
    extra.sysctl("net/ipv4/ip_forward", "1").unwrap();
    let value = extra
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))
        .unwrap();
    assert_eq!(value.unwrap().trim(), "1");
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let pod_value = pod
        .ns()
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"));
    assert_eq!(pod_value.unwrap().unwrap().trim(), "0", "host has {host}");
}

/// Run by the tests below as a child process; as an ordinary test it checks that
/// privileged tests can run here.
#[test]
fn privilege_probe() {
    let outcome = require_privileged("privilege_probe");
    println!("probe-result: {}", outcome.is_some());
}

fn run_probe(configure: impl FnOnce(&mut Command)) -> (bool, String) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "privilege_probe",
        "--nocapture",
        "--test-threads=1",
    ])
    .env_remove(testbed::SKIP_ENV);
    configure(&mut cmd);
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn skip_variable_skips_loudly() {
    let (ok, text) = run_probe(|c| {
        c.env(testbed::SKIP_ENV, "1");
    });
    assert!(ok, "{text}");
    assert!(
        text.contains("skipped: privilege_probe (MESHWIRE_SKIP_PRIVILEGED=1)"),
        "{text}"
    );
    assert!(text.contains("probe-result: false"), "{text}");
}

#[test]
fn privileged_tests_fail_without_root_or_tools() {
    let Some(_p) = require_privileged("privileged_tests_fail_without_root_or_tools") else {
        return;
    };
    use std::os::unix::process::CommandExt;
    let (ok, text) = run_probe(|c| {
        c.uid(65534).gid(65534);
    });
    assert!(!ok, "a non-root run passed: {text}");
    assert!(text.contains("cannot run: not root"), "{text}");
    assert!(text.contains("MESHWIRE_SKIP_PRIVILEGED=1"), "{text}");

    let (ok, text) = run_probe(|c| {
        c.env("PATH", "/nonexistent");
    });
    assert!(!ok, "a run without tools passed: {text}");
    assert!(text.contains("`ip` not found"), "{text}");

    let (ok, text) = run_probe(|_| {});
    assert!(ok, "{text}");
    assert!(text.contains("probe-result: true"), "{text}");
}

#[test]
fn namespaces_of_dead_test_processes_are_reaped() {
    let Some(_p) = require_privileged("namespaces_of_dead_test_processes_are_reaped") else {
        return;
    };
    let dead_pid = 0x3f_fffe_u32;
    assert!(!std::path::Path::new(&format!("/proc/{dead_pid}")).exists());
    let stale = format!("mwtb{dead_pid:x}-0p");
    let foreign = format!("mwt{:x}-keep", std::process::id());
    for name in [&stale, &foreign] {
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let dir = std::path::Path::new(testbed::NETNS_DIR);
    let _tb = Testbed::new().unwrap();
    let stale_gone = !dir.join(&stale).exists();
    let foreign_kept = dir.join(&foreign).exists();
    let _ = Command::new("ip").args(["netns", "del", &foreign]).output();
    let _ = Command::new("ip").args(["netns", "del", &stale]).output();
    assert!(stale_gone, "stale namespace {stale} was not reaped");
    assert!(foreign_kept, "a namespace that is not ours was deleted");
}

#[test]
fn a_namespace_of_its_own_can_be_recreated_under_the_same_path() {
    let Some(_p) =
        require_privileged("a_namespace_of_its_own_can_be_recreated_under_the_same_path")
    else {
        return;
    };
    let ns = testbed::Namespace::new().unwrap();
    let (name, path) = (ns.name().to_owned(), ns.path().to_owned());
    assert!(path.exists());
    assert!(ns.ip(&["link", "show", "lo"]).unwrap().contains("UP"));
    let old = ns.open().unwrap();

    // A clone blocks recreation, and nothing is deleted.
    let clone = ns.clone();
    let e = clone.recreate().unwrap_err();
    assert!(matches!(e, testbed::Error::Shared { .. }), "{e}");
    assert!(path.exists());

    let ns = ns.recreate().unwrap();
    assert_eq!((ns.name(), ns.path()), (name.as_str(), path.as_path()));
    assert_ne!(
        ns.netns().id(),
        old.id(),
        "a new namespace under the same path"
    );
    assert!(ns.ip(&["link", "show", "lo"]).unwrap().contains("UP"));
    drop(ns);
    assert!(!path.exists(), "deleted on drop");
}
