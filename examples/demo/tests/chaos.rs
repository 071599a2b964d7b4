//! Chaos soak on the real binaries: steady traffic between enrolled pods on two nodes, every
//! payload checked byte for byte, while the harness at random kills a proxy or an agent
//! (and with the agent the node's CA) with SIGKILL and restarts it, deletes and recreates a
//! pod's network namespace, and flips the enrollment label of the other namespace. A capture between the nodes runs throughout.
//!
//! Every connection ends in one of these outcomes:
//! - intact: the whole payload came back unchanged;
//! - failed cleanly: refused, reset, or closed early with a prefix of the payload (the
//!   application sees that it got less than it sent), within the socket deadline;
//! - hung: no progress within the socket deadline (must be 0);
//! - corrupted: bytes came back that are not a prefix of what was sent (must be 0).
//!
//! At the end no payload of an enrolled pair appeared in clear between the nodes, and the
//! proxies' descriptors and tasks, and every pod's rules, are back at their baseline.
//!
//! Bounded by default (`MESHWIRE_SOAK_SECONDS`, 45 s); set it higher for a longer run. Needs
//! what `e2e.rs` needs (root, `ip`, `iptables`, `tcpdump`).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use demo::{Binaries, Cluster, ClusterOptions, ECHO_PORT, PLAIN_NS, Role};
use meshwire_netns::NetNs;

/// The mark every enrolled-pair payload starts with; it must never cross the fabric in clear.
const MARKER: &[u8] = b"SOAK-ENROLLED-c41f0e";
/// How long a socket may make no progress before the connection counts as hung.
const DEADLINE: Duration = Duration::from_secs(15);

#[derive(Default)]
struct Outcomes {
    attempted: AtomicU64,
    intact: AtomicU64,
    failed_cleanly: AtomicU64,
    hung: AtomicU64,
    corrupted: AtomicU64,
}

/// A small xorshift generator: the run prints its seed, so a failing order can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn payload(rng: &mut Rng, seq: u64) -> Vec<u8> {
    let len = 1024 + rng.below(15 * 1024) as usize;
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(MARKER);
    p.extend_from_slice(format!("-{seq:012}-").as_bytes());
    while p.len() < len {
        p.extend_from_slice(&rng.next().to_le_bytes());
    }
    p.truncate(len);
    p
}

/// One connection from `from` to `dst`: send, half-close, read the echo, classify.
/// The source namespace is opened by path for every connection, so a recreated pod sends
/// from its new namespace.
fn one_connection(from: &Path, dst: SocketAddr, data: &[u8], out: &Outcomes) {
    out.attempted.fetch_add(1, Ordering::Relaxed);
    let result = NetNs::from_path(from)
        .and_then(|ns| ns.run_on_thread(move || TcpStream::connect_timeout(&dst, DEADLINE)))
        .expect("enter the pod's namespace")
        .and_then(|mut s| {
            s.set_read_timeout(Some(DEADLINE))?;
            s.set_write_timeout(Some(DEADLINE))?;
            let mut reader = s.try_clone()?;
            let reading = std::thread::spawn(move || {
                let mut echo = Vec::new();
                reader.read_to_end(&mut echo).map(|_| echo)
            });
            let written = s.write_all(data).and_then(|()| s.shutdown(Shutdown::Write));
            let echo = reading
                .join()
                .map_err(|_| std::io::Error::other("reader panicked"))??;
            // A write that failed after the echo was read: the reset is what counts.
            written.map(|()| echo)
        });
    let counter = match result {
        Ok(echo) if echo == data => &out.intact,
        Ok(echo) if data.starts_with(&echo) => &out.failed_cleanly,
        Ok(echo) => {
            eprintln!(
                "corrupted: sent {} bytes, got {} that differ",
                data.len(),
                echo.len()
            );
            &out.corrupted
        }
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            eprintln!("hung: {e}");
            &out.hung
        }
        Err(_) => &out.failed_cleanly,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Steady traffic from `from` to `to` until `stop`.
fn traffic(
    c: &Cluster,
    from: Role,
    to: Role,
    seed: u64,
    stop: Arc<AtomicBool>,
    out: Arc<Outcomes>,
) -> impl FnOnce() + Send + use<> {
    let ns = c.pod(from).ns().path().to_owned();
    let dst = SocketAddr::new(c.pod(to).ipv4().into(), ECHO_PORT);
    move || {
        let mut rng = Rng(seed);
        let mut seq = 0;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let data = payload(&mut rng, seq);
            one_connection(&ns, dst, &data, &out);
            std::thread::sleep(Duration::from_millis(20 + rng.below(30)));
        }
    }
}

fn tasks_alive(c: &Cluster, node: usize) -> f64 {
    c.proxy_metrics(node)
        .expect("proxy metrics")
        .sum("meshwire_tasks_alive", &[])
}

#[test]
fn chaos_soak_loses_nothing_and_leaks_nothing() {
    if testbed::require_privileged("chaos_soak_loses_nothing_and_leaks_nothing").is_none() {
        return;
    }
    let seconds: u64 = std::env::var("MESHWIRE_SOAK_SECONDS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("MESHWIRE_SOAK_SECONDS is a number of seconds")
        })
        .unwrap_or(45);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("chaos soak: {seconds} s, seed {seed}");
    let mut c = Cluster::start(ClusterOptions {
        binaries: Binaries::beside_test().expect("agent and proxy binaries"),
        log: "info".into(),
        reconcile_interval: Duration::from_millis(500),
        rules: "istio",
        proxy_env: Vec::new(),
        spire: false,
        source: demo::Source::File,
    })
    .unwrap_or_else(|e| panic!("cannot start the cluster: {e:#}"));

    // Baseline, after one warm-up connection per path.
    for to in [Role::ServerFar, Role::ServerNear, Role::Legacy] {
        assert!(c.flow(Role::Client, to, b"warm-up").unwrap().echoed);
    }
    std::thread::sleep(Duration::from_secs(1));
    let base_fds: Vec<usize> = (0..2)
        .map(|i| Cluster::open_fds(c.proxy_pid(i).unwrap()).unwrap())
        .collect();
    let base_tasks: Vec<f64> = (0..2).map(|i| tasks_alive(&c, i)).collect();
    let base_rules: Vec<usize> = Role::ALL
        .iter()
        .map(|r| c.rule_count(*r).unwrap())
        .collect();

    let mut capture = c.capture_fabric("soak").unwrap();
    let started = Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Outcomes::default());
    let workers: Vec<_> = [
        (Role::Client, Role::ServerFar),
        (Role::Client, Role::ServerNear),
        (Role::ServerNear, Role::ServerFar),
    ]
    .into_iter()
    .enumerate()
    .map(|(k, (from, to))| {
        std::thread::spawn(traffic(
            &c,
            from,
            to,
            seed.wrapping_add(k as u64 * 7919) | 1,
            stop.clone(),
            out.clone(),
        ))
    })
    .collect();

    let mut rng = Rng(seed);
    let mut actions = Vec::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1500 + rng.below(2500)));
        let node = rng.below(2) as usize;
        // Every kind of fault comes round in each cycle of six; the node is random.
        let action = match actions.len() % 6 {
            0 | 3 => {
                c.crash_proxy(node).unwrap();
                format!("SIGKILL proxy node-{}", node + 1)
            }
            1 | 4 => {
                c.crash_agent(node).unwrap();
                format!("SIGKILL agent (and CA) node-{}", node + 1)
            }
            2 => {
                // Only a destination: a recreated source pod would send before its rules
                // are back, which a CNI plugin prevents on a real node and this harness
                // does not.
                c.recreate_pod_netns(Role::ServerFar).unwrap();
                format!("recreate the netns of {}", Role::ServerFar.label())
            }
            _ => {
                let on = !c.is_enrolled(PLAIN_NS);
                c.set_enrolled(PLAIN_NS, on).unwrap();
                format!("label {PLAIN_NS} enrolled={on}")
            }
        };
        println!("[{:>5.1}s] {action}", started.elapsed().as_secs_f64());
        actions.push(action);
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let raw = capture.stop().unwrap();

    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "{} actions; connections attempted {}, intact {}, failed cleanly {}, hung {}, corrupted {}",
        actions.len(),
        get(&out.attempted),
        get(&out.intact),
        get(&out.failed_cleanly),
        get(&out.hung),
        get(&out.corrupted)
    );
    assert_eq!(get(&out.hung), 0, "hung connections\n{}", c.log_tail(40));
    assert_eq!(get(&out.corrupted), 0, "corrupted connections");
    assert_eq!(
        get(&out.attempted),
        get(&out.intact) + get(&out.failed_cleanly)
    );
    assert!(
        get(&out.intact) * 2 > get(&out.attempted),
        "most connections should get through between the faults"
    );

    println!("capture: {} bytes", raw.len());
    assert!(raw.len() > 1024 * 1024, "the capture holds the traffic");
    assert!(
        !demo::contains(&raw, MARKER),
        "an enrolled pair's payload crossed the fabric in clear"
    );

    // Back to the start: labels as they were, everything enrolled again, then baselines.
    if c.is_enrolled(PLAIN_NS) {
        c.set_enrolled(PLAIN_NS, false).unwrap();
    }
    c.wait_enrolled(Duration::from_secs(60)).unwrap();
    for to in [Role::ServerFar, Role::ServerNear, Role::Legacy] {
        let f = c.flow(Role::Client, to, b"after the soak").unwrap();
        assert!(f.echoed, "{f:?}\n{}", c.log_tail(40));
    }
    let rules: Vec<usize> = Role::ALL
        .iter()
        .map(|r| c.rule_count(*r).unwrap())
        .collect();
    assert_eq!(rules, base_rules, "rules per pod before and after");
    let settle = Instant::now() + Duration::from_secs(30);
    loop {
        let fds: Vec<usize> = (0..2)
            .map(|i| Cluster::open_fds(c.proxy_pid(i).unwrap()).unwrap())
            .collect();
        let tasks: Vec<f64> = (0..2).map(|i| tasks_alive(&c, i)).collect();
        let ok = fds.iter().zip(&base_fds).all(|(a, b)| *a <= b + 8)
            && tasks.iter().zip(&base_tasks).all(|(a, b)| *a <= b + 8.0);
        if ok {
            println!(
                "after: proxy fds {fds:?} (baseline {base_fds:?}), tasks {tasks:?} (baseline {base_tasks:?}), rules {rules:?}"
            );
            break;
        }
        assert!(
            Instant::now() < settle,
            "fds {fds:?} (baseline {base_fds:?}), tasks {tasks:?} (baseline {base_tasks:?})"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
