//! The node-level benchmark: throughput, CPU per byte, request/response latency, connection
//! rate and memory of the real agent and proxy on the two-node cluster, each path next to
//! the same pods talking directly.
//!
//! [`measure`] runs one round over the three paths on a started [`Cluster`]; [`report`]
//! turns several rounds into medians, a table and JSON.

use std::net::{IpAddr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{Cluster, ENROLLED_NS, Role};

mod procstat;
pub mod report;
mod traffic;

pub use procstat::{cpu_time, rss_kib};
use traffic::FirstClose;
pub use traffic::Servers;

/// How long and how often to measure.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Length of each throughput measurement; latency and each connection rate take half
    /// of it.
    pub duration: Duration,
    /// Idle tunnels held open for the memory figure.
    pub idle_tunnels: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(2),
            idle_tunnels: 1000,
        }
    }
}

/// A path through the cluster, from `shop/client` on node 1 to a pod on node 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    /// `shop/client` → `shop/server-far` with `shop` not enrolled: no proxy at all.
    Direct,
    /// `shop/client` → `legacy/legacy`: the source proxy passes plain TCP through.
    Passthrough,
    /// `shop/client` → `shop/server-far`: HBONE between the two proxies.
    Hbone,
}

impl Path {
    /// The three paths, direct first.
    pub const ALL: [Self; 3] = [Self::Direct, Self::Passthrough, Self::Hbone];

    /// A short name (also the JSON key).
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Passthrough => "passthrough",
            Self::Hbone => "hbone",
        }
    }

    fn destination(self) -> Role {
        match self {
            Self::Passthrough => Role::Legacy,
            Self::Direct | Self::Hbone => Role::ServerFar,
        }
    }
}

/// What one round measured on one path.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PathFigures {
    /// Throughput of one stream, Gbit/s.
    pub gbps_1: f64,
    /// Throughput of eight streams together, Gbit/s.
    pub gbps_8: f64,
    /// CPU seconds of both proxies per GB carried, one stream.
    pub cpu_s_per_gb_1: f64,
    /// CPU seconds of both proxies per GB carried, eight streams.
    pub cpu_s_per_gb_8: f64,
    /// One-byte request/response round trip, median, microseconds.
    pub rr_p50_us: f64,
    /// One-byte request/response round trip, 99th percentile, microseconds.
    pub rr_p99_us: f64,
    /// New connections per second (for HBONE: over the warm pool).
    pub conns_per_s: f64,
    /// HBONE: TLS connections the source proxy opened per new connection while
    /// `conns_per_s` was measured (about 0: the pooled connection carried them all).
    pub handshakes_per_conn: Option<f64>,
    /// New connections per second with a cold pool, the client closing first (so that a
    /// connection starts only after the previous one has ended in the source proxy). HBONE:
    /// the source proxy releases each connection with its tunnel
    /// (`POOL_UNUSED_RELEASE_TIMEOUT=0s`), so every new connection makes its own TLS
    /// handshake. Direct: the same connections without a proxy, the base of the ratio.
    /// Passthrough: not measured.
    pub cold_conns_per_s: Option<f64>,
    /// HBONE: TLS connections the source proxy opened per new connection while
    /// `cold_conns_per_s` was measured (1.0 when each one made its own handshake).
    pub cold_handshakes_per_conn: Option<f64>,
}

/// Resident memory of the two proxies, KiB.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct MemoryFigures {
    /// Both proxies with no connections.
    pub idle_kib: [u64; 2],
    /// Both proxies holding the idle tunnels.
    pub loaded_kib: [u64; 2],
    /// How many idle tunnels were open.
    pub tunnels: usize,
}

impl MemoryFigures {
    /// Bytes per idle tunnel, both proxies together.
    pub fn bytes_per_tunnel(&self) -> f64 {
        let idle: u64 = self.idle_kib.iter().sum();
        let loaded: u64 = self.loaded_kib.iter().sum();
        if self.tunnels == 0 {
            return 0.0;
        }
        loaded.saturating_sub(idle) as f64 * 1024.0 / self.tunnels as f64
    }
}

/// One round over every path.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Round {
    /// Per path, in [`Path::ALL`] order.
    pub paths: Vec<(Path, PathFigures)>,
    /// Proxy memory, idle and with idle HBONE tunnels.
    pub memory: MemoryFigures,
}

impl Round {
    /// The figures of `path`.
    pub fn path(&self, path: Path) -> Option<&PathFigures> {
        self.paths.iter().find(|(p, _)| *p == path).map(|(_, f)| f)
    }
}

/// One round: the enrolled paths (passthrough, HBONE) and the proxies' memory, the HBONE
/// connection rate with a cold pool (the source's proxy restarted for it, see
/// [`PathFigures::cold_conns_per_s`]), then `shop` unenrolled for the direct path, then
/// enrolled again. Only the first round's memory figure means much: in later rounds the
/// destination's proxy holds what its allocator kept from the earlier ones, and the
/// source's was restarted by the cold-pool measurement. The benchmark servers must run in
/// `shop/server-far` and `legacy/legacy` ([`Servers::start`]).
pub fn measure(cluster: &mut Cluster, opts: &Options) -> Result<Round> {
    let mut round = Round::default();
    for path in [Path::Passthrough, Path::Hbone] {
        round.paths.push((path, measure_path(cluster, path, opts)?));
    }
    round.memory = measure_memory(cluster, opts)?;
    let (rate, handshakes) = measure_cold_pool(cluster, opts)?;
    if let Some((_, hbone)) = round.paths.iter_mut().find(|(p, _)| *p == Path::Hbone) {
        hbone.cold_conns_per_s = Some(rate);
        hbone.cold_handshakes_per_conn = handshakes;
    }
    cluster.set_enrolled(ENROLLED_NS, false)?;
    cluster.wait_enrolled(Duration::from_secs(60))?;
    let direct = measure_path(cluster, Path::Direct, opts);
    cluster.set_enrolled(ENROLLED_NS, true)?;
    cluster.wait_enrolled(Duration::from_secs(60))?;
    round.paths.insert(0, (Path::Direct, direct?));
    Ok(round)
}

fn address(cluster: &Cluster, role: Role, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(cluster.pod(role).ipv4()), port)
}

/// Both proxies' CPU time so far.
fn proxies_cpu(cluster: &Cluster) -> Result<Duration> {
    let mut total = Duration::ZERO;
    for i in 0..2 {
        let Some(pid) = cluster.proxy_pid(i) else {
            bail!("the proxy of node-{} is not running", i + 1)
        };
        total += cpu_time(pid)?;
    }
    Ok(total)
}

fn measure_path(cluster: &Cluster, path: Path, opts: &Options) -> Result<PathFigures> {
    let client = cluster.pod(Role::Client);
    let to = path.destination();
    let mut f = PathFigures::default();
    for (streams, gbps, cpu) in [
        (1, &mut f.gbps_1, &mut f.cpu_s_per_gb_1),
        (8, &mut f.gbps_8, &mut f.cpu_s_per_gb_8),
    ] {
        let cpu_before = proxies_cpu(cluster)?;
        let (bytes, elapsed) = traffic::throughput(
            client,
            address(cluster, to, traffic::SINK_PORT),
            streams,
            opts.duration,
        )?;
        let cpu_used = proxies_cpu(cluster)?.saturating_sub(cpu_before);
        *gbps = bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9;
        *cpu = if bytes == 0 {
            0.0
        } else {
            cpu_used.as_secs_f64() / (bytes as f64 / 1e9)
        };
    }
    let mut rtts = traffic::request_response(
        client,
        address(cluster, to, traffic::RR_PORT),
        opts.duration / 2,
    )?;
    rtts.sort_unstable();
    f.rr_p50_us = percentile_us(&rtts, 50.0);
    f.rr_p99_us = percentile_us(&rtts, 99.0);
    let rate = |first_close| connection_rate(cluster, path, opts.duration / 2, first_close);
    (f.conns_per_s, f.handshakes_per_conn) = rate(FirstClose::Server)?;
    if path == Path::Direct {
        // The base of the cold HBONE connections: the same exchange.
        f.cold_conns_per_s = Some(rate(FirstClose::Client)?.0);
    }
    Ok(f)
}

/// New connections per second on `path`, and for HBONE the TLS connections the source
/// proxy opened per new connection meanwhile.
fn connection_rate(
    cluster: &Cluster,
    path: Path,
    duration: Duration,
    first_close: FirstClose,
) -> Result<(f64, Option<f64>)> {
    let opened = || cluster.hbone_connections_opened(Role::Client);
    let before = if path == Path::Hbone {
        Some(opened()?)
    } else {
        None
    };
    let (n, elapsed) = traffic::connection_rate(
        cluster.pod(Role::Client),
        address(cluster, path.destination(), traffic::ONCE_PORT),
        duration,
        first_close,
    )?;
    let handshakes = match before {
        // Every connection's dial completed before its exchange, so all are counted.
        Some(before) => Some(opened()?.saturating_sub(before) as f64 / n.max(1) as f64),
        None => None,
    };
    Ok((n as f64 / elapsed.as_secs_f64(), handshakes))
}

/// The HBONE connection rate with a cold pool: the source's proxy restarted with
/// `POOL_UNUSED_RELEASE_TIMEOUT=0s`, so that it closes each HBONE connection with its
/// tunnel, and the client closing first, so that each connection starts after the previous
/// tunnel ended: every new connection makes its own TLS handshake. Then the proxy is
/// restarted as before. Only the source's proxy dials, so the destination's keeps running.
fn measure_cold_pool(cluster: &mut Cluster, opts: &Options) -> Result<(f64, Option<f64>)> {
    let node = Role::Client.node();
    let measured = cluster
        .restart_proxy_with_env(node, &[("POOL_UNUSED_RELEASE_TIMEOUT", "0s")])
        .and_then(|()| wait_for_hbone(cluster))
        .and_then(|()| {
            connection_rate(cluster, Path::Hbone, opts.duration / 2, FirstClose::Client)
        });
    // Restored whatever happened, and a failed measurement is reported before a failed
    // restore.
    let restored = cluster
        .restart_proxy_with_env(node, &[])
        .context("restarting the source's proxy with its usual environment");
    let measured = measured.context("the cold-pool connection rate")?;
    restored?;
    Ok(measured)
}

/// Waits until a connection goes through on the HBONE path (after a proxy restart: its
/// listeners, xDS and the pod's certificate).
fn wait_for_hbone(cluster: &Cluster) -> Result<()> {
    let to = address(cluster, Path::Hbone.destination(), traffic::ONCE_PORT);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match traffic::one_connection(cluster.pod(Role::Client), to) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context("no HBONE connection after the proxy restart"));
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn measure_memory(cluster: &Cluster, opts: &Options) -> Result<MemoryFigures> {
    let rss = |cluster: &Cluster| -> Result<[u64; 2]> {
        let mut out = [0; 2];
        for (i, o) in out.iter_mut().enumerate() {
            let Some(pid) = cluster.proxy_pid(i) else {
                bail!("the proxy of node-{} is not running", i + 1)
            };
            *o = rss_kib(pid)?;
        }
        Ok(out)
    };
    // Let the connections of the earlier measurements close.
    thread::sleep(Duration::from_millis(500));
    let idle_kib = rss(cluster)?;
    let conns = traffic::open_idle(
        cluster.pod(Role::Client),
        address(cluster, Role::ServerFar, traffic::RR_PORT),
        opts.idle_tunnels,
    )?;
    thread::sleep(Duration::from_millis(500));
    let loaded_kib = rss(cluster)?;
    drop(conns);
    Ok(MemoryFigures {
        idle_kib,
        loaded_kib,
        tunnels: opts.idle_tunnels,
    })
}

/// The `p`th percentile of sorted samples, in microseconds.
fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1e6
}
