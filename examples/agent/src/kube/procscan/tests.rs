//! The scan over a `/proc` laid out by the test (each process's `cgroup`, `stat` and a
//! `ns/net` link to a real network namespace), and the address check on real namespaces.

use std::os::unix::fs::symlink;

use super::*;

const UID_A: &str = "2c48913c-b29f-11e7-9350-020968147796";
const UID_B: &str = "72f7f152-440c-66ac-9084-e0fc1d8a910c";
const UID_C: &str = "daa5c7ee-3484-4533-af39-3591564fd03e";

/// A namespace whose loopback holds `ip`.
fn namespace_with(ip: &str) -> testbed::Namespace {
    let ns = testbed::Namespace::new().unwrap();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])
        .unwrap();
    ns
}

/// Lays out `/proc/<pid>` for a process of pod `uid` started at `start` in `netns`.
fn process(proc_dir: &Path, pid: u32, start: u64, uid: &str, netns: &Path) {
    let dir = proc_dir.join(pid.to_string());
    std::fs::create_dir_all(dir.join("ns")).unwrap();
    symlink(netns, dir.join("ns/net")).unwrap();
    // After the command: the state and 18 more fields, then the start time (field 22).
    let middle: Vec<String> = (0..18).map(|i| i.to_string()).collect();
    std::fs::write(
        dir.join("stat"),
        format!("{pid} (pause (x) y) S {} {start} 0 0\n", middle.join(" ")),
    )
    .unwrap();
    std::fs::write(
        dir.join("cgroup"),
        format!(
            "0::/kubepods.slice/kubepods-besteffort-pod{}.slice/cri-containerd-c{pid}.scope\n",
            uid.replace('-', "_")
        ),
    )
    .unwrap();
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn start_times_are_read_after_the_command_name() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Path::new("/proc/self/ns/net");
    process(dir.path(), 7, 4242, UID_A, ns);
    assert_eq!(start_time(dir.path(), "7"), Some(4242));
    assert_eq!(start_time(dir.path(), "8"), None);
}

#[test]
fn a_namespace_counts_only_if_it_holds_a_pod_address() {
    let Some(_privileged) = testbed::require_privileged("kube::procscan::holds_any") else {
        return;
    };
    let ns = namespace_with("10.77.0.5");
    assert_eq!(holds_any(ns.path(), &[ip("10.77.0.5")]), Ok(true));
    assert_eq!(
        holds_any(ns.path(), &[ip("10.77.0.9"), ip("10.77.0.5")]),
        Ok(true)
    );
    assert_eq!(holds_any(ns.path(), &[ip("10.77.0.6")]), Ok(false));
    assert_eq!(holds_any(ns.path(), &[]), Ok(false));
    let file = tempfile::NamedTempFile::new().unwrap();
    assert!(
        holds_any(file.path(), &[ip("10.77.0.5")]).is_err(),
        "not a namespace"
    );
}

#[test]
fn scan_finds_each_pod_in_the_namespace_that_holds_its_address() {
    let Some(_privileged) = testbed::require_privileged("kube::procscan::scan") else {
        return;
    };
    let a = namespace_with("10.77.1.2");
    let b = namespace_with("10.77.1.3");
    let c = namespace_with("10.77.1.4");
    let proc_dir = tempfile::tempdir().unwrap();
    let p = proc_dir.path();
    // PID 1: the host.
    std::fs::create_dir_all(p.join("1/ns")).unwrap();
    symlink("/proc/1/ns/net", p.join("1/ns/net")).unwrap();
    // Pod A: its oldest process visits B's namespace (which lacks A's address), the next
    // one is in A's own.
    process(p, 10, 100, UID_A, b.path());
    process(p, 11, 200, UID_A, a.path());
    process(p, 12, 300, UID_A, a.path());
    // Pod B in its namespace; a process of B on the host network is ignored.
    process(p, 20, 150, UID_B, Path::new("/proc/1/ns/net"));
    process(p, 21, 400, UID_B, b.path());
    // Pod C runs, but nobody asks for it.
    process(p, 30, 50, UID_C, c.path());
    std::fs::create_dir_all(p.join("self")).unwrap();
    std::fs::write(p.join("uptime"), "1 1").unwrap();

    let wanted = BTreeMap::from([
        (UID_A.to_owned(), vec![ip("10.77.1.2")]),
        (UID_B.to_owned(), vec![ip("10.77.1.3")]),
        (
            "11111111-2222-3333-4444-555555555555".to_owned(),
            vec![ip("10.77.1.9")],
        ),
    ]);
    let found = scan(p, &wanted);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        found[UID_A].netns,
        p.join("11/ns/net"),
        "the oldest process with A's address"
    );
    assert_eq!(found[UID_A].ips, vec![ip("10.77.1.2")]);
    assert_eq!(found[UID_B].netns, p.join("21/ns/net"));

    // A missing directory finds nothing.
    assert!(scan(&p.join("nope"), &wanted).is_empty());
}
