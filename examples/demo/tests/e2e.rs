//! End-to-end tests: the real `agent` and `proxy` binaries on two nodes of real network
//! namespaces, real iptables rules, traffic checked on the wire.
//!
//! They need root, `ip`, `iptables` and `tcpdump`; without them they fail, unless
//! `MESHWIRE_SKIP_PRIVILEGED=1` is set. The binaries come from the same target directory
//! (`cargo test --workspace` builds them, because their packages have integration tests).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;

use common::{check, mtls_flow, payload, retry_until_encrypted};
use demo::{Binaries, Cluster, ClusterOptions, ENROLLED_NS, Role};

/// The clusters are heavy (8 processes each); run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn binaries() -> Binaries {
    Binaries::beside_test().expect("agent and proxy binaries")
}

fn cluster(test: &str) -> Option<(std::sync::MutexGuard<'static, ()>, Cluster)> {
    cluster_with(test, "istio")
}

fn cluster_with(
    test: &str,
    rules: &'static str,
) -> Option<(std::sync::MutexGuard<'static, ()>, Cluster)> {
    cluster_full(test, rules, false)
}

fn cluster_full(
    test: &str,
    rules: &'static str,
    spire: bool,
) -> Option<(std::sync::MutexGuard<'static, ()>, Cluster)> {
    testbed::require_privileged(test)?;
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cluster = Cluster::start(ClusterOptions {
        binaries: binaries(),
        log: "info".into(),
        reconcile_interval: Duration::from_millis(500),
        rules,
        proxy_env: Vec::new(),
        spire,
        source: demo::Source::File,
    })
    .unwrap_or_else(|e| panic!("cannot start the cluster: {e:#}"));
    Some((guard, cluster))
}

#[test]
fn every_path_works_with_the_right_security() {
    let Some((_g, c)) = cluster("every_path_works_with_the_right_security") else {
        return;
    };

    // enrolled -> enrolled on another node, with a capture between the nodes.
    let marker = "PLAINTEXT-MARKER-7f3a91";
    let mut capture = c.capture_fabric("fabric").unwrap();
    let f = c
        .flow(Role::Client, Role::ServerFar, &payload(marker, 256 * 1024))
        .unwrap();
    let raw = capture.stop().unwrap();
    check(&c, &f);
    assert!(f.encrypted(), "{f:?}");
    assert_eq!(
        f.server_identity.as_deref(),
        Some(Role::ServerFar.spiffe_id().as_str()),
        "the client's proxy verified the server's identity"
    );
    assert_eq!(
        f.peer_identity.as_deref(),
        Some(Role::Client.spiffe_id().as_str()),
        "the server's proxy saw the client's identity"
    );
    assert!(
        raw.len() > 24 + 256 * 1024,
        "the capture holds the transfer"
    );
    assert!(
        !demo::contains(&raw, marker.as_bytes()),
        "the payload crossed the fabric in plaintext"
    );
    let text = capture.read(&[]).unwrap();
    let hbone = capture.read(&["tcp port 15008"]).unwrap();
    let app = capture.read(&["tcp port 8080"]).unwrap();
    assert!(
        hbone.lines().count() > 10,
        "HBONE packets on 15008:\n{text}"
    );
    assert_eq!(app.lines().count(), 0, "no plaintext app traffic:\n{app}");
    let tls = capture
        .read(&[
            "-x",
            "tcp dst port 15008 and (tcp[tcpflags] & tcp-push != 0)",
        ])
        .unwrap();
    assert!(
        tls.contains("1603 01") || tls.contains("1603 03"),
        "the first data on 15008 is a TLS handshake record:\n{tls:.2000}"
    );

    // enrolled -> enrolled on the same node.
    mtls_flow(&c, Role::Client, Role::ServerNear, "near", 10_000);

    // enrolled -> not enrolled: plaintext passthrough from the source proxy.
    let f = c
        .flow(Role::Client, Role::Legacy, &payload("legacy", 10_000))
        .unwrap();
    check(&c, &f);
    assert!(!f.encrypted());
    assert_eq!(f.outbound_plain, 1.0, "{f:?}");

    // not enrolled -> enrolled: plaintext inbound on 15006.
    let f = c
        .flow(Role::Legacy, Role::ServerFar, &payload("inbound", 10_000))
        .unwrap();
    check(&c, &f);
    assert!(!f.encrypted());
    assert_eq!(f.inbound_plain, 1.0, "{f:?}");

    // The deny policy blocks the intruder's service account and nobody else.
    let f = c
        .flow(Role::Intruder, Role::ServerFar, &payload("intruder", 1000))
        .unwrap();
    assert!(!f.echoed, "the intruder got through: {f:?}");
    assert!(f.denied >= 1.0, "{f:?}\n{}", c.log_tail(30));
    let f = c
        .flow(Role::Client, Role::ServerFar, &payload("allowed", 1000))
        .unwrap();
    check(&c, &f);
}

#[test]
fn cilium_rules_carry_the_same_traffic() {
    let Some((_g, c)) = cluster_with("cilium_rules_carry_the_same_traffic", "cilium") else {
        return;
    };
    let rules = c
        .pod(Role::Client)
        .ns()
        .exec("iptables-save", &[] as &[&str])
        .unwrap();
    assert!(rules.contains("CILIUM_"), "Cilium-style chains:\n{rules}");
    assert!(!rules.contains("ISTIO_"), "no Istio-style chains:\n{rules}");
    mtls_flow(&c, Role::Client, Role::ServerFar, "cilium", 20_000);
    let f = c
        .flow(
            Role::Legacy,
            Role::ServerNear,
            &payload("cilium-in", 20_000),
        )
        .unwrap();
    check(&c, &f);
    assert_eq!(f.inbound_plain, 1.0, "{f:?}");
    let f = c
        .flow(Role::Client, Role::Legacy, &payload("cilium-out", 20_000))
        .unwrap();
    check(&c, &f);
    assert_eq!(f.outbound_plain, 1.0, "{f:?}");
}

#[test]
fn labels_enroll_and_unenroll_live() {
    let Some((_g, mut c)) = cluster("labels_enroll_and_unenroll_live") else {
        return;
    };
    assert!(c.has_rules(Role::Client).unwrap());
    assert!(!c.has_rules(Role::Legacy).unwrap());

    c.set_enrolled(ENROLLED_NS, false).unwrap();
    c.wait_enrolled(Duration::from_secs(30)).unwrap();
    for r in [
        Role::Client,
        Role::ServerFar,
        Role::ServerNear,
        Role::Intruder,
    ] {
        assert!(!c.has_rules(r).unwrap(), "rules left in {}", r.label());
    }
    let f = c
        .flow(Role::Client, Role::ServerFar, &payload("direct", 5000))
        .unwrap();
    check(&c, &f);
    assert!(f.direct(), "traffic still goes through a proxy: {f:?}");

    c.set_enrolled(ENROLLED_NS, true).unwrap();
    c.wait_enrolled(Duration::from_secs(30)).unwrap();
    let f = retry_until_encrypted(&c, Role::Client, Role::ServerFar);
    assert!(f.encrypted(), "{f:?}");

    // Enrolling the other namespace too: legacy -> server becomes mTLS.
    c.set_enrolled(demo::PLAIN_NS, true).unwrap();
    c.wait_enrolled(Duration::from_secs(30)).unwrap();
    let f = retry_until_encrypted(&c, Role::Legacy, Role::ServerFar);
    assert!(f.encrypted(), "{f:?}");
    assert_eq!(
        f.peer_identity.as_deref(),
        Some(Role::Legacy.spiffe_id().as_str())
    );
}

#[test]
fn strict_namespace_refuses_plaintext_and_carries_only_mtls() {
    let Some((_g, mut c)) = cluster("strict_namespace_refuses_plaintext_and_carries_only_mtls")
    else {
        return;
    };
    // Permissive (the default): the pod outside the mesh reaches an enrolled pod in plaintext.
    let f = c
        .flow(Role::Legacy, Role::ServerFar, &payload("before", 1000))
        .unwrap();
    check(&c, &f);
    assert_eq!(f.inbound_plain, 1.0, "{f:?}");

    c.set_strict(ENROLLED_NS, true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let f = c
            .flow(Role::Legacy, Role::ServerFar, &payload("strict", 1000))
            .unwrap();
        // A connection accepted just before the policy arrived and then closed by the
        // re-check of open connections is not the refusal at accept this waits for.
        let refused_at_accept = !f.echoed && f.inbound_plain == 0.0;
        if refused_at_accept || Instant::now() > deadline {
            break f;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(!refused.echoed, "plaintext still accepted: {refused:?}");
    assert!(refused.denied >= 1.0, "{refused:?}\n{}", c.log_tail(30));
    assert_eq!(refused.inbound_plain, 0.0, "{refused:?}");

    // Between strict pods: mTLS only, nothing of the payload on the wire between the nodes.
    let marker = "STRICT-PLAINTEXT-MARKER-51c0";
    let mut capture = c.capture_fabric("strict").unwrap();
    let f = mtls_flow(&c, Role::Client, Role::ServerFar, marker, 64 * 1024);
    assert_eq!(f.outbound_plain, 0.0, "{f:?}");
    let raw = capture.stop().unwrap();
    assert!(raw.len() > 24 + 64 * 1024, "the capture holds the transfer");
    assert!(
        !demo::contains(&raw, marker.as_bytes()),
        "the payload crossed the fabric in plaintext"
    );
    let app = capture.read(&["tcp port 8080"]).unwrap();
    assert_eq!(app.lines().count(), 0, "no plaintext app traffic:\n{app}");

    // Back to permissive: plaintext from outside the mesh is accepted again.
    c.set_strict(ENROLLED_NS, false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = c
            .flow(Role::Legacy, Role::ServerFar, &payload("after", 1000))
            .unwrap();
        if f.echoed || Instant::now() > deadline {
            check(&c, &f);
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn restarts_keep_traffic_flowing() {
    let Some((_g, mut c)) = cluster("restarts_keep_traffic_flowing") else {
        return;
    };
    check(
        &c,
        &c.flow(Role::Client, Role::ServerFar, &payload("before", 5000))
            .unwrap(),
    );

    // Restart the proxy of the server's node: the agent re-sends its snapshot.
    c.restart_proxy(1).unwrap();
    let f = retry_until_encrypted(&c, Role::Client, Role::ServerFar);
    assert!(f.encrypted(), "{f:?}");

    // Stop the agent of the client's node: the pods keep working without it.
    c.stop_agent(0).unwrap();
    let f = c
        .flow(Role::Client, Role::ServerFar, &payload("agentless", 5000))
        .unwrap();
    check(&c, &f);
    assert!(f.encrypted(), "{f:?}");
    assert!(
        c.has_rules(Role::Client).unwrap(),
        "rules stay when the agent stops"
    );

    c.start_agent_again(0).unwrap();
    c.wait_enrolled(Duration::from_secs(30)).unwrap();
    let f = c
        .flow(Role::Client, Role::ServerFar, &payload("after", 5000))
        .unwrap();
    check(&c, &f);
    assert!(f.encrypted(), "{f:?}");
}

#[test]
fn proxy_does_not_leak_fds_over_a_thousand_connections() {
    let Some((_g, c)) = cluster("proxy_does_not_leak_fds_over_a_thousand_connections") else {
        return;
    };
    // Warm up: certificates, pooled connections.
    check(
        &c,
        &c.flow(Role::Client, Role::ServerFar, &payload("warm", 100))
            .unwrap(),
    );
    check(
        &c,
        &c.flow(Role::Client, Role::Legacy, &payload("warm", 100))
            .unwrap(),
    );
    let pids = [c.proxy_pid(0).unwrap(), c.proxy_pid(1).unwrap()];
    let tasks = |m: &demo::Metrics| m.sum("meshwire_tasks_alive", &[]);
    std::thread::sleep(Duration::from_secs(1));
    let fds_before: Vec<usize> = pids
        .iter()
        .map(|p| Cluster::open_fds(*p).unwrap())
        .collect();
    let tasks_before: Vec<f64> = (0..2)
        .map(|i| tasks(&c.proxy_metrics(i).unwrap()))
        .collect();

    let data = payload("leak", 512);
    for i in 0..1000 {
        let to = match i % 3 {
            0 => Role::ServerFar,
            1 => Role::ServerNear,
            _ => Role::Legacy,
        };
        let echo = c
            .exchange(Role::Client, to, &data)
            .unwrap_or_else(|e| panic!("connection {i}: {e:#}\n{}", c.log_tail(30)));
        assert_eq!(echo, data);
    }

    // Connections close asynchronously; give the proxies a moment to settle.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let fds: Vec<usize> = pids
            .iter()
            .map(|p| Cluster::open_fds(*p).unwrap())
            .collect();
        let t: Vec<f64> = (0..2)
            .map(|i| tasks(&c.proxy_metrics(i).unwrap()))
            .collect();
        // Pooled HBONE connections may add a few fds; a leak adds ~1000.
        let ok = fds.iter().zip(&fds_before).all(|(a, b)| *a <= b + 8)
            && t.iter().zip(&tasks_before).all(|(a, b)| *a <= b + 8.0);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fds before {fds_before:?}, after {fds:?}; tasks before {tasks_before:?}, after {t:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Seconds since midnight of a log line's timestamp (`2026-01-02T03:04:05.678901Z …`).
fn log_time(line: &str) -> Option<f64> {
    let t = line.get(11..)?.split(['Z', ' ']).next()?;
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// For every pod of node `i` the proxy added: the time from its ZDS add ("pod added") to the
/// first "workload certificate ready" of its identity, from the proxy's log.
fn add_to_first_svid(c: &Cluster, i: usize) -> Vec<(String, f64)> {
    let text = std::fs::read_to_string(c.dir().join(format!("node-{}/proxy.log", i + 1)))
        .unwrap_or_default();
    let mut out = Vec::new();
    for role in Role::ALL.into_iter().filter(|r| r.node() == i) {
        let name = format!("pod={}", role.name());
        let added = text
            .lines()
            .find(|l| l.contains("pod added") && l.contains(&name))
            .and_then(log_time);
        let ready = text
            .lines()
            .find(|l| {
                l.contains("workload certificate ready")
                    && l.contains(&format!("identity={}", role.spiffe_id()))
            })
            .and_then(log_time);
        if let (Some(a), Some(r)) = (added, ready) {
            out.push((role.name().to_owned(), r - a));
        }
    }
    out
}

/// The files below `dir` (except SPIRE's own, below `spire`) that are named like a key or
/// hold a PEM private key.
fn files_holding_private_keys(dir: &std::path::Path, spire: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.starts_with(spire) {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let named_key = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains("key"));
            let text = std::fs::read(&path).unwrap_or_default();
            if named_key || String::from_utf8_lossy(&text).contains("PRIVATE KEY") {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// The lifetime of each certificate node `i`'s proxy holds, from `/config_dump`.
fn held_lifetimes(c: &Cluster, i: usize) -> Vec<(String, u64)> {
    let (code, body) = c.http_get(i, 15000, "/config_dump").unwrap();
    assert_eq!(code, 200, "{body}");
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    dump["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|cert| {
            Some((
                cert["identity"].as_str()?.to_owned(),
                cert["not_after"].as_u64()? - cert["not_before"].as_u64()?,
            ))
        })
        .collect()
}

#[test]
fn spire_issues_the_workload_certificates() {
    // The built-in CA first, as the baseline of the measurement.
    let Some((g, baseline)) = cluster("spire_issues_the_workload_certificates") else {
        return;
    };
    mtls_flow(&baseline, Role::Client, Role::ServerFar, "ca", 20_000);
    let ca_times = add_to_first_svid(&baseline, 0);
    drop(baseline);
    drop(g);

    let Some((_g, c)) = cluster_full("spire_issues_the_workload_certificates", "istio", true)
    else {
        return;
    };
    // Across nodes and on one node, both identities checked by the proxies.
    mtls_flow(&c, Role::Client, Role::ServerFar, "spire-far", 20_000);
    let f = mtls_flow(&c, Role::Client, Role::ServerNear, "spire-near", 20_000);
    assert_eq!(
        f.server_identity.as_deref(),
        Some(Role::ServerNear.spiffe_id().as_str())
    );
    // The certificates are SPIRE's (its default lifetime is 1 h plus the 10 s back-dating
    // of NotBefore), not the built-in CA's 24 h ones.
    for i in 0..2 {
        let lifetimes = held_lifetimes(&c, i);
        assert!(!lifetimes.is_empty(), "{}", c.log_tail(30));
        for (id, secs) in &lifetimes {
            assert!(*secs <= 3600 + 60, "{id} lives {secs} s: not a SPIRE SVID");
        }
    }
    // The registrar wrote one entry per service account of the enrolled namespace.
    let spire = c.spire().unwrap();
    let entries: Vec<String> = spire
        .entries_under(testbed::spire::DELEGATE_PATH)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for role in [
        Role::Client,
        Role::ServerNear,
        Role::ServerFar,
        Role::Intruder,
    ] {
        assert!(entries.contains(&role.spiffe_id()), "{entries:?}");
    }
    assert!(!entries.contains(&Role::Legacy.spiffe_id()), "{entries:?}");
    // No node holds a CA key: the agents run without their CA, so no key file (nor any file
    // holding a private key) exists in the cluster's state, and their TLS port (xDS and the
    // certificate service) is closed; xDS reached the proxies over the unix socket.
    let keys = files_holding_private_keys(c.dir(), spire.dir());
    assert!(keys.is_empty(), "private keys on the nodes: {keys:?}");
    for i in 0..2 {
        assert!(
            !c.agent_state_dir(i).join("root-cert.pem").exists(),
            "node-{} has a CA root",
            i + 1
        );
        let tls = c
            .node_ns(i)
            .run(|| std::net::TcpStream::connect("127.0.0.1:15012").map(drop))
            .unwrap();
        assert_eq!(
            tls.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionRefused),
            "node-{}'s agent listens on its TLS port",
            i + 1
        );
    }
    let spire_times = add_to_first_svid(&c, 0);
    eprintln!(
        "SPIRE fixture start {:?}; ZDS add -> first SVID (node-1): built-in CA {ca_times:?}, SPIRE {spire_times:?}",
        spire.startup_time()
    );
}
