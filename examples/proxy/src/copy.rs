//! Carrying a connection's bytes between its two ends, with live byte counts and half-close:
//! when one side reaches end of stream, the write half of the other side is shut down and the
//! opposite direction keeps flowing until it ends too.
//!
//! Plain TCP on both sides goes through [`splice`](crate::splice) (zero-copy, splice(2)),
//! with the buffered copy here as the fallback. An HBONE tunnel is spliced with its socket by [`meshwire_hbone::tunnel::copy_bidirectional_with`] (chunks go
//! between HTTP/2 frames and the socket without a copy through a proxy buffer), reporting into
//! the same counters as the plain TCP ↔ TCP copy here.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use meshwire_hbone::Tunnel;
use meshwire_hbone::tunnel::{CopyDirection, CopyObserver};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::splice::{Pipes, splice_bidirectional};

/// Initial copy buffer per direction.
const SMALL_BUFFER: usize = 16 * 1024;
/// Buffer once a direction has carried [`GROW_AFTER`] bytes (bulk transfers).
const LARGE_BUFFER: usize = 256 * 1024;
const GROW_AFTER: u64 = 1024 * 1024;

/// Where the bytes of one connection are counted as they pass: per direction for the
/// connection's log line (readable while the copy runs and after it failed), and into the
/// metrics counters it was made with.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    to_upstream: AtomicU64,
    to_downstream: AtomicU64,
    /// Both directions.
    total: Counter,
    /// Downstream → upstream only.
    upstream_counter: Counter,
    /// Upstream → downstream only.
    downstream_counter: Counter,
}

impl Meter {
    /// A meter adding every byte to `total`, and those going downstream → upstream to
    /// `to_upstream`, those going back to `to_downstream`.
    pub(crate) fn new(total: Counter, to_upstream: Counter, to_downstream: Counter) -> Self {
        Self {
            to_upstream: AtomicU64::new(0),
            to_downstream: AtomicU64::new(0),
            total,
            upstream_counter: to_upstream,
            downstream_counter: to_downstream,
        }
    }

    /// Bytes read from the downstream end and written upstream.
    pub(crate) fn to_upstream(&self) -> u64 {
        self.to_upstream.load(Ordering::Relaxed)
    }

    /// Bytes read from the upstream end and written downstream.
    pub(crate) fn to_downstream(&self) -> u64 {
        self.to_downstream.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, way: Way, bytes: u64) {
        self.total.inc_by(bytes);
        match way {
            Way::ToUpstream => {
                self.to_upstream.fetch_add(bytes, Ordering::Relaxed);
                self.upstream_counter.inc_by(bytes);
            }
            Way::ToDownstream => {
                self.to_downstream.fetch_add(bytes, Ordering::Relaxed);
                self.downstream_counter.inc_by(bytes);
            }
        }
    }
}

/// The direction of a piece of a connection's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    /// From the side that connected to the proxy towards the side the proxy connected to.
    ToUpstream,
    /// Back.
    ToDownstream,
}

/// The two ends of a connection the proxy carries, downstream (the side that connected to the
/// proxy) first.
#[derive(Debug)]
pub(crate) enum Ends {
    /// Plain TCP on both sides (passthrough, inbound plaintext).
    Tcp(TcpStream, TcpStream),
    /// Outbound HBONE: the application's socket, the tunnel to the peer.
    SocketToTunnel(TcpStream, Tunnel),
    /// Inbound HBONE: the peer's tunnel, the socket to the application.
    TunnelToSocket(Tunnel, TcpStream),
}

impl Ends {
    /// Copies both ways until both directions reached end of stream, or one failed. Every
    /// piece is added to `meter` as it passes (so long connections show up in metrics while
    /// they run).
    pub(crate) async fn copy(self, meter: &Meter) -> io::Result<()> {
        match self {
            // Zero-copy when the two pipes can be had; buffered when the process is out of
            // file descriptors for them.
            Self::Tcp(a, b) => match Pipes::new() {
                Ok(pipes) => splice_bidirectional(&a, &b, pipes, meter).await,
                Err(e) => {
                    tracing::debug!(error = %e, "no pipes for splice(2): buffered copy");
                    copy_bidirectional(a, b, meter).await
                }
            },
            Self::SocketToTunnel(socket, tunnel) => {
                let meter = TunnelMeter {
                    meter,
                    tunnel_is_upstream: true,
                };
                meshwire_hbone::tunnel::copy_bidirectional_with(tunnel, socket, meter)
                    .await
                    .map(drop)
            }
            Self::TunnelToSocket(tunnel, socket) => {
                let meter = TunnelMeter {
                    meter,
                    tunnel_is_upstream: false,
                };
                meshwire_hbone::tunnel::copy_bidirectional_with(tunnel, socket, meter)
                    .await
                    .map(drop)
            }
        }
    }
}

/// Counts what hbone's splice reports into a [`Meter`], oriented downstream → upstream.
struct TunnelMeter<'a> {
    meter: &'a Meter,
    tunnel_is_upstream: bool,
}

impl CopyObserver for TunnelMeter<'_> {
    fn carried(&self, direction: CopyDirection, bytes: u64) {
        let way = if (direction == CopyDirection::ToTunnel) == self.tunnel_is_upstream {
            Way::ToUpstream
        } else {
            Way::ToDownstream
        };
        self.meter.add(way, bytes);
    }
}

/// Copies `a → b` and `b → a` (plain byte streams; tunnels go through [`Ends`]) until both
/// directions reached end of stream, or one failed.
///
/// Every chunk is added to `meter` as it passes (`a → b` as [`Way::ToUpstream`]). End of
/// stream on one side shuts down the write half of the other side (TCP FIN) and the other
/// direction continues. The first error ends both directions.
async fn copy_bidirectional<A, B>(a: A, b: B, meter: &Meter) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    let forward = copy_one_way(a_read, b_write, meter, Way::ToUpstream);
    let backward = copy_one_way(b_read, a_write, meter, Way::ToDownstream);
    tokio::try_join!(forward, backward).map(|_| ())
}

async fn copy_one_way<R, W>(mut reader: R, mut writer: W, meter: &Meter, way: Way) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; SMALL_BUFFER];
    let mut carried = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            // Half-close: tell the other side nothing more comes from this one. A peer that
            // already went away is not an error for the direction that still runs.
            match writer.shutdown().await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return Err(e),
            }
            return Ok(());
        }
        let chunk = buf
            .get(..n)
            .ok_or_else(|| io::Error::other("read past buffer"))?;
        writer.write_all(chunk).await?;
        writer.flush().await?;
        let n = n as u64;
        carried += n;
        meter.add(way, n);
        if carried >= GROW_AFTER && buf.len() < LARGE_BUFFER {
            buf.resize(LARGE_BUFFER, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::duplex;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn copies_both_ways_and_half_closes() {
        // client <-> (c1 | c2) proxy (s1 | s2) <-> server
        let (mut client, c2) = duplex(1024);
        let (s1, mut server) = duplex(1024);
        let (total, up, down) = (Counter::default(), Counter::default(), Counter::default());
        let stats = Arc::new(Meter::new(total.clone(), up.clone(), down.clone()));
        let proxy = {
            let stats = stats.clone();
            tokio::spawn(async move { copy_bidirectional(c2, s1, &stats).await })
        };

        let request = vec![7u8; 300_000];
        let req = request.clone();
        let client_task = tokio::spawn(async move {
            client.write_all(&req).await.unwrap();
            client.shutdown().await.unwrap();
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).await.unwrap();
            reply
        });
        // The server sees the whole request and then EOF (half-close propagated) …
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, request);
        // … and can still answer afterwards.
        server.write_all(b"thanks").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(client_task.await.unwrap(), b"thanks");
        proxy.await.unwrap().unwrap();
        assert_eq!(stats.to_upstream(), 300_000);
        assert_eq!(stats.to_downstream(), 6);
        assert_eq!((total.get(), up.get(), down.get()), (300_006, 300_000, 6));
    }

    /// How the TCP relay of the tests copies.
    #[derive(Clone, Copy, Debug)]
    enum Relay {
        /// The buffered copy (the fallback).
        Buffered,
        /// What the proxy uses: [`Ends::Tcp`], zero-copy with splice(2).
        Spliced,
    }

    /// client -> (TCP) -> relay -> (TCP) -> server, all on loopback.
    async fn tcp_relay(
        relay: Relay,
    ) -> (
        TcpStream,
        TcpStream,
        Arc<Meter>,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (front_addr, back_addr) = (front.local_addr().unwrap(), back.local_addr().unwrap());
        let stats = Arc::new(Meter::default());
        let s = stats.clone();
        let proxy = tokio::spawn(async move {
            let (inbound, _) = front.accept().await.unwrap();
            let outbound = TcpStream::connect(back_addr).await.unwrap();
            match relay {
                Relay::Buffered => copy_bidirectional(inbound, outbound, &s).await,
                Relay::Spliced => Ends::Tcp(inbound, outbound).copy(&s).await,
            }
        });
        let client = TcpStream::connect(front_addr).await.unwrap();
        let (server, _) = back.accept().await.unwrap();
        (client, server, stats, proxy)
    }

    #[tokio::test]
    async fn tcp_half_close_reaches_the_peer() {
        for relay in [Relay::Buffered, Relay::Spliced] {
            let (mut client, mut server, stats, proxy) = tcp_relay(relay).await;
            client.write_all(b"ping").await.unwrap();
            client.shutdown().await.unwrap();
            let mut buf = Vec::new();
            server.read_to_end(&mut buf).await.unwrap();
            assert_eq!(buf, b"ping", "{relay:?}");
            server.write_all(b"pong").await.unwrap();
            drop(server);
            let mut buf = Vec::new();
            client.read_to_end(&mut buf).await.unwrap();
            assert_eq!(buf, b"pong", "{relay:?}");
            proxy.await.unwrap().unwrap();
            assert_eq!((stats.to_upstream(), stats.to_downstream()), (4, 4));
        }
    }

    #[tokio::test]
    async fn bulk_transfer_arrives_intact_and_counted_both_ways() {
        for relay in [Relay::Buffered, Relay::Spliced] {
            let (client, server, stats, proxy) = tcp_relay(relay).await;
            // More than a pipe and a socket buffer hold, in both directions at once.
            let up: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
            let down: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
            let exchange = |mut s: TcpStream, out: Vec<u8>| {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let send = async {
                        w.write_all(&out).await.unwrap();
                        w.shutdown().await.unwrap();
                    };
                    let mut got = Vec::new();
                    let recv = r.read_to_end(&mut got);
                    let (_, n) = tokio::join!(send, recv);
                    n.unwrap();
                    got
                })
            };
            let at_server = exchange(server, down.clone());
            let at_client = exchange(client, up.clone());
            assert!(
                at_server.await.unwrap() == up,
                "{relay:?}: upstream bytes differ"
            );
            assert!(
                at_client.await.unwrap() == down,
                "{relay:?}: downstream bytes differ"
            );
            proxy.await.unwrap().unwrap();
            assert_eq!(stats.to_upstream(), 6_000_000, "{relay:?}");
            assert_eq!(stats.to_downstream(), 3_000_000, "{relay:?}");
        }
    }

    #[tokio::test]
    async fn an_error_ends_both_directions_and_keeps_counts() {
        for relay in [Relay::Buffered, Relay::Spliced] {
            let (mut client, mut server, stats, proxy) = tcp_relay(relay).await;
            client.write_all(b"hello").await.unwrap();
            let mut buf = [0u8; 5];
            server.read_exact(&mut buf).await.unwrap();
            // Abort the server side with RST.
            socket2::SockRef::from(&server)
                .set_linger(Some(std::time::Duration::ZERO))
                .unwrap();
            drop(server);
            let result = tokio::time::timeout(std::time::Duration::from_secs(5), proxy)
                .await
                .expect("copy must end when a side resets")
                .unwrap();
            assert!(result.is_err(), "{relay:?}");
            assert_eq!(stats.to_upstream(), 5, "{relay:?}");
            // The client sees the connection end too.
            let mut rest = Vec::new();
            let _ = client.read_to_end(&mut rest).await;
            assert!(rest.is_empty(), "{relay:?}");
        }
    }

    #[test]
    fn tunnel_reports_count_downstream_to_upstream() {
        let total = Counter::default();
        // Outbound: the application (downstream) sends into the tunnel (upstream).
        let (up, down) = (Counter::default(), Counter::default());
        let meter = Meter::new(total.clone(), up.clone(), down.clone());
        let outbound = TunnelMeter {
            meter: &meter,
            tunnel_is_upstream: true,
        };
        outbound.carried(CopyDirection::ToTunnel, 5);
        outbound.carried(CopyDirection::FromTunnel, 7);
        assert_eq!((meter.to_upstream(), meter.to_downstream()), (5, 7));
        assert_eq!((up.get(), down.get()), (5, 7));
        // Inbound: what comes out of the tunnel (downstream) goes to the application.
        let (up, down) = (Counter::default(), Counter::default());
        let meter = Meter::new(total.clone(), up.clone(), down.clone());
        let inbound = TunnelMeter {
            meter: &meter,
            tunnel_is_upstream: false,
        };
        inbound.carried(CopyDirection::FromTunnel, 11);
        inbound.carried(CopyDirection::ToTunnel, 13);
        assert_eq!((meter.to_upstream(), meter.to_downstream()), (11, 13));
        assert_eq!((up.get(), down.get()), (11, 13));
        assert_eq!(total.get(), 36);
    }
}
