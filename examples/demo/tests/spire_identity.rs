//! End-to-end tests of SPIRE as the identity provider with a real SPIRE server and agent:
//! the proxies in PID mode (`SPIRE_SUBJECT=pid`), a pod without a SPIRE entry failing closed,
//! and how soon a rotated SVID reaches new HBONE connections, next to the built-in CA.
//!
//! They need root, `ip`, `iptables`, `tcpdump` and the SPIRE binaries (`MESHWIRE_PEERS_DIR`,
//! see `testbed::peers`); without root they fail unless `MESHWIRE_SKIP_PRIVILEGED=1` is set.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

mod common;

use common::{mtls_flow, payload, retry_until_encrypted};
use demo::{Binaries, Cluster, ClusterOptions, PresentedCert, Role};

/// The clusters are heavy; run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The proxies' `SPIRE_TIMEOUT` here (short, so that failures show quickly).
const SPIRE_TIMEOUT: Duration = Duration::from_secs(4);
/// The X.509-SVID lifetime of the test's entries (SPIRE back-dates NotBefore by 10 s more).
const SVID_TTL: Duration = Duration::from_secs(30);
/// SPIRE's NotBefore cushion.
const SPIRE_BACKDATE: Duration = Duration::from_secs(10);
/// The built-in CA's back-dating of NotBefore (`CaConfig::backdate`).
const CA_BACKDATE: Duration = Duration::from_secs(60);
/// The users the pods' processes run as (SPIRE's `unix:uid:<uid>` selectors). Both server
/// pods share the `server` service account and so one uid; the intruder's uid has no entry.
const CLIENT_UID: u32 = 4001;
const SERVER_UID: u32 = 4002;
const INTRUDER_UID: u32 = 4003;

fn start(
    test: &str,
    spire: bool,
    proxy_env: &[(&str, &str)],
) -> Option<(std::sync::MutexGuard<'static, ()>, Cluster)> {
    testbed::require_privileged(test)?;
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut options = ClusterOptions::new(Binaries::beside_test().expect("binaries"));
    options.spire = spire;
    // The SVID stream's items and the PID chosen for each identity, for the measurements.
    options.log = "info,meshwire_svid::spire=debug,proxy::spire_pid=debug".into();
    options.proxy_env = proxy_env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let cluster =
        Cluster::start(options).unwrap_or_else(|e| panic!("cannot start the cluster: {e:#}"));
    Some((guard, cluster))
}

/// A cluster with SPIRE whose proxies identify pods by PID, and the pods' processes.
struct PidCluster {
    cluster: Cluster,
    /// The process of each enrolled pod (killed on drop).
    processes: Vec<(Role, testbed::Process)>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// A cluster with SPIRE whose proxies identify pods by PID, with a process of its own
/// user in every enrolled pod, and an entry (parented to the SPIRE agent's node ID) for the
/// client's and the servers' users but none for the intruder's.
fn pid_mode_cluster(test: &str) -> Option<PidCluster> {
    let timeout = format!("{}s", SPIRE_TIMEOUT.as_secs());
    let (guard, c) = start(
        test,
        true,
        &[("SPIRE_SUBJECT", "pid"), ("SPIRE_TIMEOUT", &timeout)],
    )?;
    let procs = [
        (Role::Client, CLIENT_UID),
        (Role::ServerNear, SERVER_UID),
        (Role::ServerFar, SERVER_UID),
        (Role::Intruder, INTRUDER_UID),
    ]
    .into_iter()
    .map(|(role, uid)| (role, c.spawn_in_pod(role, uid).unwrap()))
    .collect();
    let spire = c.spire().unwrap();
    for (id, uid) in [
        (Role::Client.spiffe_id(), CLIENT_UID),
        (Role::ServerFar.spiffe_id(), SERVER_UID),
    ] {
        spire
            .server_cli(&[
                "entry",
                "create",
                "-parentID",
                &spire.node_id(),
                "-spiffeID",
                &id,
                "-selector",
                &format!("unix:uid:{uid}"),
                "-x509SVIDTTL",
                &SVID_TTL.as_secs().to_string(),
            ])
            .unwrap();
    }
    Some(PidCluster {
        cluster: c,
        processes: procs,
        _serial: guard,
    })
}

#[test]
fn spire_pid_mode_issues_each_pods_svid_and_fails_closed_without_an_entry() {
    let test = "spire_pid_mode_issues_each_pods_svid_and_fails_closed_without_an_entry";
    let Some(pid_cluster) = pid_mode_cluster(test) else {
        return;
    };
    let c = &pid_cluster.cluster;

    // Item 1: the proxies obtain the pods' SVIDs by PID, across nodes.
    let f = retry_until_encrypted(c, Role::Client, Role::ServerFar);
    assert_eq!(
        f.peer_identity.as_deref(),
        Some(Role::Client.spiffe_id().as_str())
    );
    assert_eq!(
        f.server_identity.as_deref(),
        Some(Role::ServerFar.spiffe_id().as_str())
    );
    // The certificates come from the uid entries (30 s plus the 10 s cushion), not from
    // the registrar's `k8s:ns`/`k8s:sa` entries (the server's default of 1 h), which a PID
    // never matches.
    for role in [Role::Client, Role::ServerFar] {
        let cert = c.presented_certificate(role).unwrap();
        assert_eq!(cert.spiffe_id, role.spiffe_id());
        assert_eq!(
            cert.not_after.duration_since(cert.not_before).unwrap(),
            SVID_TTL + SPIRE_BACKDATE,
            "{} presents {cert:?}",
            role.label()
        );
    }
    // Each proxy asked by the PID of the pod's own process, found by its network namespace.
    for (role, proc) in &pid_cluster.processes {
        if matches!(role, Role::Client | Role::ServerFar) {
            let log = c.proxy_log(role.node());
            let wanted = format!("identity={} pid={}", role.spiffe_id(), proc.id());
            assert!(
                log.lines()
                    .any(|l| l.contains("asking SPIRE by PID") && l.contains(&wanted)),
                "no `{wanted}` in node-{}'s proxy log:\n{}",
                role.node() + 1,
                c.log_tail(30)
            );
        }
    }

    // Item 2: the intruder's process matches no entry. Its outbound HBONE connection is
    // closed by its proxy, never carried in plaintext, and nothing of it crosses the fabric.
    let intruder_ip = c.pod(Role::Intruder).ipv4().to_string();
    let marker = "NO-SVID-PLAINTEXT-MARKER-3e9d";
    let mut capture = c.capture_fabric("no-entry").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let no_entry_line = |c: &Cluster| {
        c.proxy_log(0)
            .lines()
            .rev()
            .find(|l| {
                l.contains("connection failed")
                    && l.contains(&Role::Intruder.spiffe_id())
                    && l.contains("no SPIRE registration entry matches")
            })
            .map(str::to_owned)
    };
    let (line, took) = loop {
        let started = Instant::now();
        let result = c.exchange(Role::Intruder, Role::ServerFar, &payload(marker, 4096));
        let took = started.elapsed();
        let err = result.expect_err("the intruder's connection was carried");
        let text = format!("{err:#}");
        assert!(
            !text.contains("temporarily unavailable") && !text.contains("timed out"),
            "the connection hung instead of being closed: {text}"
        );
        if let Some(line) = no_entry_line(c) {
            break (line, took);
        }
        assert!(
            Instant::now() < deadline,
            "no log line about the missing SPIRE entry:\n{}",
            c.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let raw = capture.stop().unwrap();
    assert!(
        !demo::contains(&raw, marker.as_bytes()),
        "the payload crossed the fabric"
    );
    let from_intruder = capture
        .read(&["-n", &format!("host {intruder_ip}")])
        .unwrap();
    assert_eq!(
        from_intruder.lines().count(),
        0,
        "packets of the intruder crossed the fabric:\n{from_intruder}"
    );
    // The source proxy counted it as a failed outbound connection for want of a
    // certificate, nothing as plaintext; the destination's proxy never saw it.
    let m = c.proxy_metrics(0).unwrap();
    assert!(
        m.sum(
            "meshwire_connection_failures_total",
            &[("direction", "outbound"), ("reason", "no certificate")]
        ) >= 1.0,
        "{}",
        c.log_tail(30)
    );
    assert_eq!(
        m.sum(
            "meshwire_connections_total",
            &[("direction", "outbound"), ("security", "plaintext")]
        ),
        0.0
    );
    let far = c.proxy_metrics(1).unwrap();
    assert_eq!(far.sum("meshwire_policy_denials_total", &[]), 0.0);
    eprintln!(
        "no SPIRE entry: connection closed after {took:?} (SPIRE_TIMEOUT {SPIRE_TIMEOUT:?}); {line}"
    );
}

/// How soon a rotated certificate reached a new HBONE connection.
#[derive(Debug)]
struct Rotation {
    /// From the issue of the new certificate (NotBefore + back-dating; whole seconds, so up
    /// to 1 s early) to the first new connection presenting it.
    from_issue: Duration,
    /// From the SVID stream's item carrying it (SPIRE only) to the same.
    from_stream_item: Option<Duration>,
    /// Connections carried while waiting, none failed.
    carried: usize,
}

/// Waits for server-far's certificate to rotate while the client keeps connecting to it,
/// and measures when a new TLS connection to server-far's HBONE port first presents the new
/// one. Panics if a connection fails meanwhile.
fn measure_rotation(c: &Cluster, backdate: Duration) -> Rotation {
    let first = c.presented_certificate(Role::ServerFar).unwrap();
    let stop = AtomicBool::new(false);
    let (rotated, seen_at, (carried, failures)) = std::thread::scope(|s| {
        let traffic = s.spawn(|| {
            let data = payload("rotation", 2048);
            let (mut carried, mut failures) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match c.exchange(Role::Client, Role::ServerFar, &data) {
                    Ok(echo) if echo == data => carried += 1,
                    Ok(echo) => failures.push(format!("echo of {} bytes", echo.len())),
                    Err(e) => failures.push(format!("{e:#}")),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (carried, failures)
        });
        let deadline = Instant::now() + 3 * SVID_TTL;
        let (rotated, seen_at) = loop {
            let now = SystemTime::now();
            let cert = c.presented_certificate(Role::ServerFar).unwrap();
            if cert.serial != first.serial {
                break (cert, now);
            }
            assert!(Instant::now() < deadline, "no rotation of {first:?}");
            std::thread::sleep(Duration::from_millis(100));
        };
        stop.store(true, Ordering::Relaxed);
        (rotated, seen_at, traffic.join().unwrap())
    });
    assert!(
        failures.is_empty(),
        "connections failed during the rotation: {failures:?}\n{}",
        c.log_tail(30)
    );
    assert!(carried > 0, "no connection was made during the rotation");
    assert_eq!(rotated.spiffe_id, first.spiffe_id);
    Rotation {
        from_issue: seen_at
            .duration_since(rotated.not_before + backdate)
            .unwrap_or_default(),
        from_stream_item: stream_item_time(c, &rotated)
            .map(|t| seen_at.duration_since(t).unwrap_or_default()),
        carried,
    }
}

/// When server-far's proxy logged the SVID stream item carrying `cert`.
fn stream_item_time(c: &Cluster, cert: &PresentedCert) -> Option<SystemTime> {
    let id = cert.spiffe_id.as_str();
    let expiry = cert
        .not_after
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let wanted = format!("tv_sec: {expiry},");
    c.proxy_log(Role::ServerFar.node())
        .lines()
        .find(|l| l.contains("SPIRE pushed an SVID") && l.contains(id) && l.contains(&wanted))
        .and_then(demo::log_time)
}

#[test]
fn rotated_certificates_reach_new_connections_with_spire_and_the_builtin_ca() {
    let test = "rotated_certificates_reach_new_connections_with_spire_and_the_builtin_ca";
    // The built-in CA as the baseline, with a rotation as soon as SPIRE's: its leaves start
    // 60 s before issue, so an 80 s SECRET_TTL puts the half-life 10 s after issue, where a
    // 30 s SPIRE SVID (starting 10 s before issue) has its own.
    let Some((g, ca)) = start(test, false, &[("SECRET_TTL", "80s")]) else {
        return;
    };
    mtls_flow(&ca, Role::Client, Role::ServerFar, "ca", 2048);
    let builtin = measure_rotation(&ca, CA_BACKDATE);
    drop(ca);
    drop(g);

    let Some(pid_cluster) = pid_mode_cluster(test) else {
        return;
    };
    let c = &pid_cluster.cluster;
    retry_until_encrypted(c, Role::Client, Role::ServerFar);
    let spire = measure_rotation(c, SPIRE_BACKDATE);
    eprintln!(
        "rotation -> first new HBONE connection presenting the new certificate: \
         SPIRE {:?} after issue (NotBefore + 10 s), {:?} after the SVID stream item \
         ({} connections meanwhile, none failed); built-in CA {:?} after issue \
         (NotBefore + 60 s; {} connections, none failed)",
        spire.from_issue,
        spire.from_stream_item,
        spire.carried,
        builtin.from_issue,
        builtin.carried
    );
}
