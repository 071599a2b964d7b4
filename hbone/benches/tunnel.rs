//! HBONE data-path benchmark on loopback, printed as JSON.
//!
//! Two paths carry the same traffic between a client and an application server, both
//! with two userspace hops:
//!
//! * `hbone`: client → TCP → client proxy (pool, `copy_bidirectional`) → HBONE (TLS 1.3 +
//!   HTTP/2 CONNECT) → server handler (dials the app, `copy_bidirectional`) → TCP → app;
//! * `tcp_relay`: client → TCP → relay A → TCP → relay B → TCP → app, relays copying with
//!   `tokio::io::copy_bidirectional_with_sizes` (256 KiB buffers).
//!
//! Measured in one run: single-stream and 8-stream throughput, 1-byte request/response
//! latency on an established connection (p50/p99), and new connections per second
//! (HBONE over a warm pool, and with a fresh TLS connection per tunnel). Every HBONE
//! figure is reported next to the relay figure with their ratio.
//!
//! Run: `cargo bench -p meshwire-hbone --bench tunnel` (add `-- --quick` for a short run).

// A benchmark binary: any setup failure should abort the run loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshwire_hbone::client::{
    ClientConnection, Pool, PoolConfig, PoolKey, SvidClientTls, TcpConnector,
};
use meshwire_hbone::server::{IncomingTunnel, ServeConfig, Server};
use meshwire_hbone::{ConnectRequest, Http2Config};
use meshwire_svid::ca::{CaConfig, CertificateAuthority};
use meshwire_svid::{IdentityPolicy, SpiffeId, TrustBundleSet, TrustDomain};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MODE_SINK: u8 = b'S';
const MODE_ECHO: u8 = b'E';
const MODE_PING: u8 = b'P';

struct Sizes {
    single_bytes: u64,
    multi_streams: usize,
    multi_bytes_each: u64,
    latency_iters: usize,
    warm_conns: usize,
    fresh_conns: usize,
}

/// The application server: the first byte selects sink, echo or ping.
async fn app_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if s.read_exact(&mut mode).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 256 * 1024];
                match mode[0] {
                    MODE_SINK => {
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                        }
                        let _ = s.write_all(b"k").await;
                    }
                    MODE_ECHO => {
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                    _ => {
                        if s.read_exact(&mut mode).await.is_ok() {
                            let _ = s.write_all(&mode).await;
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A plain TCP relay to `upstream`.
async fn relay(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut down, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                down.set_nodelay(true).unwrap();
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                up.set_nodelay(true).unwrap();
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut down,
                    &mut up,
                    256 * 1024,
                    256 * 1024,
                )
                .await;
            });
        }
    });
    addr
}

struct Hbone {
    /// Client proxy entry using the pool.
    pooled: SocketAddr,
    /// Client proxy entry making a fresh TLS connection per tunnel.
    fresh: SocketAddr,
}

async fn hbone_paths(app: SocketAddr) -> Hbone {
    let td: TrustDomain = "cluster.local".parse().unwrap();
    let ca = CertificateAuthority::generate_root(&td, CaConfig::default()).unwrap();
    let mut roots = TrustBundleSet::new();
    roots.insert(ca.bundle());
    let server_id = SpiffeId::new("spiffe://cluster.local/ns/bench/sa/server").unwrap();
    let client_id = SpiffeId::new("spiffe://cluster.local/ns/bench/sa/client").unwrap();
    let provider = meshwire_svid::provider::default();
    let day = Duration::from_secs(86_400);
    let server_tls = meshwire_svid::tls::server_config(
        provider.clone(),
        &ca.issue(&server_id, day).unwrap(),
        &roots,
        IdentityPolicy::SameTrustDomain(td),
    )
    .unwrap();

    // Server side: accept every CONNECT, dial the app, splice.
    let handler = |t: IncomingTunnel| async move {
        let Some(target) = t.request().authority.socket_addr() else {
            return;
        };
        let Ok(app) = TcpStream::connect(target).await else {
            return;
        };
        app.set_nodelay(true).unwrap();
        if let Ok(tunnel) = t.accept() {
            let _ = meshwire_hbone::tunnel::copy_bidirectional(tunnel, app).await;
        }
    };
    let server = Server::new(Arc::new(server_tls), handler, ServeConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hbone_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve(listener).await });

    let client_svid = ca.issue(&client_id, day).unwrap();
    let request = ConnectRequest::new(meshwire_hbone::Authority::from_socket_addr(app).unwrap());

    // Client proxy with the pool.
    let pool = Pool::new(
        TcpConnector::new(),
        SvidClientTls::new(provider.clone(), client_svid.clone(), roots.clone()),
        PoolConfig::default(),
    );
    let key = PoolKey::new(client_id, [server_id.clone()], hbone_addr, None);
    let pooled = proxy_listener({
        let (request, key) = (request.clone(), key.clone());
        move |down: TcpStream| {
            let (pool, key, request) = (pool.clone(), key.clone(), request.clone());
            async move {
                let tunnel = pool.connect(&key, &request).await.unwrap();
                let _ = meshwire_hbone::tunnel::copy_bidirectional(tunnel, down).await;
            }
        }
    })
    .await;

    // Client proxy with a fresh TCP + TLS + HTTP/2 connection per tunnel.
    let client_tls = Arc::new(
        meshwire_svid::tls::client_config(
            provider,
            &client_svid,
            &roots,
            IdentityPolicy::exact([server_id]),
        )
        .unwrap(),
    );
    let fresh = proxy_listener(move |down: TcpStream| {
        let (tls, request) = (client_tls.clone(), request.clone());
        async move {
            let tcp = TcpStream::connect(hbone_addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let conn = ClientConnection::connect(tcp, tls, &Http2Config::default())
                .await
                .unwrap();
            let tunnel = conn.open(&request).await.unwrap();
            drop(conn);
            let _ = meshwire_hbone::tunnel::copy_bidirectional(tunnel, down).await;
        }
    })
    .await;
    Hbone { pooled, fresh }
}

async fn proxy_listener<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (down, _) = listener.accept().await.unwrap();
            down.set_nodelay(true).unwrap();
            tokio::spawn(serve(down));
        }
    });
    addr
}

async fn connect(entry: SocketAddr, mode: u8) -> TcpStream {
    let mut s = TcpStream::connect(entry).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&[mode]).await.unwrap();
    s
}

/// Sends `bytes` into a sink and waits for its acknowledgement.
async fn push(entry: SocketAddr, bytes: u64) {
    let mut s = connect(entry, MODE_SINK).await;
    let buf = vec![0x5au8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).await.unwrap();
        left -= n as u64;
    }
    s.shutdown().await.unwrap();
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.unwrap();
}

/// MiB/s over `streams` concurrent connections of `each` bytes.
async fn throughput(entry: SocketAddr, streams: usize, each: u64) -> f64 {
    // Warm up the path (and the pool).
    push(entry, 8 * 1024 * 1024).await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| tokio::spawn(push(entry, each)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    (streams as u64 * each) as f64 / (1024.0 * 1024.0) / secs
}

/// p50 and p99 of 1-byte round trips, in microseconds.
async fn latency(entry: SocketAddr, iters: usize) -> (f64, f64) {
    let mut s = connect(entry, MODE_ECHO).await;
    let mut b = [0u8; 1];
    for _ in 0..iters / 10 {
        s.write_all(b"x").await.unwrap();
        s.read_exact(&mut b).await.unwrap();
    }
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        s.write_all(b"x").await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

/// New connections per second, each with a 1-byte request/response, one at a time.
async fn conn_rate(entry: SocketAddr, n: usize) -> f64 {
    let once = || async {
        let mut s = connect(entry, MODE_PING).await;
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
    };
    for _ in 0..n / 10 {
        once().await;
    }
    let start = Instant::now();
    for _ in 0..n {
        once().await;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn pair(hbone: f64, relay: f64) -> serde_json::Value {
    let ratio = (hbone / relay * 1000.0).round() / 1000.0;
    json!({ "hbone": round(hbone), "tcp_relay": round(relay), "ratio": ratio })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only <name>` runs one measurement (for profiling): t1, t8, lat, warm, fresh.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let want = move |name: &str| only.as_deref().is_none_or(|o| o == name);
    let sizes = if quick {
        Sizes {
            single_bytes: 64 << 20,
            multi_streams: 8,
            multi_bytes_each: 16 << 20,
            latency_iters: 2_000,
            warm_conns: 300,
            fresh_conns: 100,
        }
    } else {
        Sizes {
            single_bytes: 2 << 30,
            multi_streams: 8,
            multi_bytes_each: 256 << 20,
            latency_iters: 20_000,
            warm_conns: 3_000,
            fresh_conns: 1_000,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(async {
        let app = app_server().await;
        let relay_b = relay(app).await;
        let relay_a = relay(relay_b).await;
        let hb = hbone_paths(app).await;

        let skip = (0.0, 0.0);
        let t1 = if want("t1") {
            (
                throughput(hb.pooled, 1, sizes.single_bytes).await,
                throughput(relay_a, 1, sizes.single_bytes).await,
            )
        } else {
            skip
        };
        let t8 = if want("t8") {
            (
                throughput(hb.pooled, sizes.multi_streams, sizes.multi_bytes_each).await,
                throughput(relay_a, sizes.multi_streams, sizes.multi_bytes_each).await,
            )
        } else {
            skip
        };
        let (lat_h, lat_r) = if want("lat") {
            (
                latency(hb.pooled, sizes.latency_iters).await,
                latency(relay_a, sizes.latency_iters).await,
            )
        } else {
            (skip, skip)
        };
        let warm = if want("warm") {
            (
                conn_rate(hb.pooled, sizes.warm_conns).await,
                conn_rate(relay_a, sizes.warm_conns).await,
            )
        } else {
            skip
        };
        let fresh = if want("fresh") {
            (
                conn_rate(hb.fresh, sizes.fresh_conns).await,
                conn_rate(relay_a, sizes.fresh_conns).await,
            )
        } else {
            skip
        };
        json!({
            "setup": {
                "paths": "client -> proxy -> (HBONE | TCP) -> proxy -> app, all on loopback in one process",
                "runtime_worker_threads": 2,
                "available_parallelism": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "single_stream_bytes": sizes.single_bytes,
                "multi_streams": sizes.multi_streams,
                "multi_stream_bytes_each": sizes.multi_bytes_each,
                "latency_iterations": sizes.latency_iters,
                "warm_pool_connections": sizes.warm_conns,
                "fresh_tls_connections": sizes.fresh_conns,
                "quick": quick,
            },
            "throughput_1_stream_mib_per_s": pair(t1.0, t1.1),
            "throughput_8_streams_mib_per_s": pair(t8.0, t8.1),
            "latency_1_byte_rr_us": {
                "p50": pair(lat_h.0, lat_r.0),
                "p99": pair(lat_h.1, lat_r.1),
            },
            "new_tunnels_per_s_warm_pool": pair(warm.0, warm.1),
            "new_tunnels_per_s_fresh_tls": pair(fresh.0, fresh.1),
        })
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
