//! Flood test on the real binaries: 10,000 idle TCP connections to one pod's 15008 and 1,000
//! to its node proxy's 15020. While they are open, an enrolled pod still reaches that pod
//! through HBONE, the proxy holds no more descriptors than its limits allow, and once the
//! flood goes away descriptors and tasks return to their baseline.
//!
//! Needs what `e2e.rs` needs (root, `ip`, `iptables`), and `prlimit` to raise this process's
//! descriptor limit.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use demo::{Binaries, Cluster, ClusterOptions, Role};

const HBONE_FLOOD: usize = 10_000;
const HTTP_FLOOD: usize = 1_000;
const PER_POD: usize = 200;
const HBONE_TOTAL: usize = 400;
const HTTP_MAX: usize = 64;
/// Descriptors the proxy may use beyond its bounds (listeners, pooled connections, files).
const SLACK: usize = 64;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Raises this process's descriptor limit to at least `want` (the hard limit permitting).
fn raise_fd_limit(want: usize) {
    let pid = std::process::id().to_string();
    let status = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={want}:{want}")])
        .status()
        .expect("prlimit (util-linux) is needed to raise RLIMIT_NOFILE");
    assert!(status.success(), "cannot raise RLIMIT_NOFILE to {want}");
}

/// Opens `n` TCP connections to `addr` from inside `ns` on `threads` threads; returns the
/// open ones and how many failed.
fn open_idle(
    ns: &testbed::Namespace,
    addr: SocketAddr,
    n: usize,
    threads: usize,
) -> (Vec<TcpStream>, usize) {
    let per = n.div_ceil(threads);
    let parts: Vec<(Vec<TcpStream>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let count = per.min(n.saturating_sub(t * per));
                s.spawn(move || {
                    ns.run(move || {
                        let mut open = Vec::with_capacity(count);
                        let mut failed = 0;
                        for _ in 0..count {
                            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                                Ok(c) => open.push(c),
                                Err(_) => failed += 1,
                            }
                        }
                        (open, failed)
                    })
                    .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failed = parts.iter().map(|p| p.1).sum();
    (parts.into_iter().flat_map(|p| p.0).collect(), failed)
}

fn tasks_alive(c: &Cluster, node: usize) -> f64 {
    c.proxy_metrics(node)
        .expect("proxy metrics")
        .sum("meshwire_tasks_alive", &[])
}

/// Polls `read` until it is at most `bound`, for up to `within`; returns the last value.
fn settles(within: Duration, bound: f64, mut read: impl FnMut() -> f64) -> f64 {
    let end = Instant::now() + within;
    loop {
        let v = read();
        if v <= bound || Instant::now() > end {
            return v;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn idle_floods_do_not_lock_out_real_clients_or_leak() {
    if testbed::require_privileged("idle_floods_do_not_lock_out_real_clients_or_leak").is_none() {
        return;
    }
    raise_fd_limit(HBONE_FLOOD + HTTP_FLOOD + 2048);
    let c = Cluster::start(ClusterOptions {
        binaries: Binaries::beside_test().expect("agent and proxy binaries"),
        log: "info".into(),
        reconcile_interval: Duration::from_millis(500),
        rules: "istio",
        proxy_env: env(&[
            ("HBONE_MAX_CONNECTIONS_PER_POD", &PER_POD.to_string()),
            ("HBONE_MAX_CONNECTIONS", &HBONE_TOTAL.to_string()),
            // Long enough that the limit, not the deadline, is what keeps the pod reachable.
            ("HBONE_ACCEPT_TIMEOUT", "2m"),
            ("HTTP_MAX_CONNECTIONS", &HTTP_MAX.to_string()),
            ("HTTP_HEADER_READ_TIMEOUT", "2m"),
        ]),
        spire: false,
        source: demo::Source::File,
    })
    .unwrap_or_else(|e| panic!("cannot start the cluster: {e:#}"));
    let target = Role::ServerFar;
    let node = target.node();
    let pid = c.proxy_pid(node).unwrap();

    // Warm up the path once, then take the baseline.
    assert!(c.flow(Role::Client, target, b"warm-up").unwrap().echoed);
    let base_fds = Cluster::open_fds(pid).unwrap();
    let base_tasks = tasks_alive(&c, node);

    let hbone = SocketAddr::new(c.pod(target).ipv4().into(), 15008);
    let metrics = SocketAddr::from(([127, 0, 0, 1], 15020));
    let started = Instant::now();
    let (hbone_conns, hbone_failed) = open_idle(c.node_ns(node), hbone, HBONE_FLOOD, 4);
    let (http_conns, http_failed) = open_idle(c.node_ns(node), metrics, HTTP_FLOOD, 2);
    println!(
        "flood: {} of {HBONE_FLOOD} to {hbone} and {} of {HTTP_FLOOD} to {metrics} open after {:?} ({hbone_failed} and {http_failed} failed)",
        hbone_conns.len(),
        http_conns.len(),
        started.elapsed()
    );

    // While they are open: a real HBONE client gets through, and the endpoints answer.
    let mut peak_fds = Cluster::open_fds(pid).unwrap();
    let t = Instant::now();
    let flow = c.flow(Role::Client, target, b"during-the-flood").unwrap();
    let latency = t.elapsed();
    peak_fds = peak_fds.max(Cluster::open_fds(pid).unwrap());
    let during_tasks = tasks_alive(&c, node);
    peak_fds = peak_fds.max(Cluster::open_fds(pid).unwrap());
    let (ready, _) = c.http_get(node, 15021, "/healthz/ready").unwrap();
    peak_fds = peak_fds.max(Cluster::open_fds(pid).unwrap());
    println!(
        "during the flood: real client {latency:?} (echoed: {}), proxy fds {peak_fds} (baseline {base_fds}), tasks {during_tasks} (baseline {base_tasks}), readiness HTTP {ready}",
        flow.echoed
    );
    assert!(flow.echoed, "real client locked out: {flow:?}");
    assert!(
        latency < Duration::from_secs(1),
        "real client took {latency:?} during the flood"
    );
    assert_eq!(ready, 200);
    let bound = base_fds + HBONE_TOTAL + HTTP_MAX + SLACK;
    assert!(
        peak_fds <= bound,
        "proxy held {peak_fds} fds during the flood (bound {bound})"
    );

    // The flood goes away: descriptors and tasks come back to their baseline.
    drop(hbone_conns);
    drop(http_conns);
    let after_fds = settles(Duration::from_secs(30), (base_fds + 4) as f64, || {
        Cluster::open_fds(pid).unwrap() as f64
    });
    let after_tasks = settles(Duration::from_secs(30), base_tasks + 4.0, || {
        tasks_alive(&c, node)
    });
    println!(
        "after the flood: proxy fds {after_fds} (baseline {base_fds}), tasks {after_tasks} (baseline {base_tasks})"
    );
    assert!(
        after_fds <= (base_fds + 4) as f64,
        "fds stayed at {after_fds}"
    );
    assert!(
        after_tasks <= base_tasks + 4.0,
        "tasks stayed at {after_tasks}"
    );
    let dropped = c
        .proxy_metrics(node)
        .unwrap()
        .sum("meshwire_connections_dropped_total", &[]);
    println!("meshwire_connections_dropped_total: {dropped}");
    assert!(dropped > 0.0);
}
