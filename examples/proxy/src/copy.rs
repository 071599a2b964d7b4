//! Carrying a connection's bytes between its two ends, with live byte counts and half-close:
//! when one side reaches end of stream, the write half of the other side is shut down and the
//! opposite direction keeps flowing until it ends too.
//!
//! An HBONE tunnel is spliced with its socket by [`meshwire_hbone::tunnel::copy_bidirectional_with`] (chunks go
//! between HTTP/2 frames and the socket without a copy through a proxy buffer), reporting into
//! the same counters as the plain TCP ↔ TCP copy here.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use meshwire_hbone::Tunnel;
use meshwire_hbone::tunnel::{CopyDirection, CopyObserver};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Initial copy buffer per direction.
const SMALL_BUFFER: usize = 16 * 1024;
/// Buffer once a direction has carried [`GROW_AFTER`] bytes (bulk transfers).
const LARGE_BUFFER: usize = 256 * 1024;
const GROW_AFTER: u64 = 1024 * 1024;

/// Bytes carried in each direction; readable while the copy runs and after it failed.
#[derive(Debug, Default)]
pub(crate) struct Transferred {
    a_to_b: AtomicU64,
    b_to_a: AtomicU64,
}

impl Transferred {
    /// Bytes read from the first stream and written to the second.
    pub(crate) fn a_to_b(&self) -> u64 {
        self.a_to_b.load(Ordering::Relaxed)
    }
    /// Bytes read from the second stream and written to the first.
    pub(crate) fn b_to_a(&self) -> u64 {
        self.b_to_a.load(Ordering::Relaxed)
    }
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
    /// piece is added to `counter` as it passes (so long connections show up in metrics while
    /// they run) and to `transferred` (downstream → upstream as `a_to_b`).
    pub(crate) async fn copy(self, counter: &Counter, transferred: &Transferred) -> io::Result<()> {
        match self {
            Self::Tcp(a, b) => copy_bidirectional(a, b, counter, transferred).await,
            Self::SocketToTunnel(socket, tunnel) => {
                let meter = TunnelMeter {
                    counter,
                    transferred,
                    tunnel_is_upstream: true,
                };
                meshwire_hbone::tunnel::copy_bidirectional_with(tunnel, socket, meter)
                    .await
                    .map(drop)
            }
            Self::TunnelToSocket(tunnel, socket) => {
                let meter = TunnelMeter {
                    counter,
                    transferred,
                    tunnel_is_upstream: false,
                };
                meshwire_hbone::tunnel::copy_bidirectional_with(tunnel, socket, meter)
                    .await
                    .map(drop)
            }
        }
    }
}

/// Counts what hbone's splice reports into the proxy's counters, oriented downstream →
/// upstream.
struct TunnelMeter<'a> {
    counter: &'a Counter,
    transferred: &'a Transferred,
    tunnel_is_upstream: bool,
}

impl CopyObserver for TunnelMeter<'_> {
    fn carried(&self, direction: CopyDirection, bytes: u64) {
        self.counter.inc_by(bytes);
        let downstream_to_upstream =
            (direction == CopyDirection::ToTunnel) == self.tunnel_is_upstream;
        let total = if downstream_to_upstream {
            &self.transferred.a_to_b
        } else {
            &self.transferred.b_to_a
        };
        total.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Copies `a → b` and `b → a` (plain byte streams; tunnels go through [`Ends`]) until both
/// directions reached end of stream, or one failed.
///
/// Every chunk is added to `counter` as it passes and to `transferred`. End of stream on one
/// side shuts down the write half of the other side (TCP FIN) and the other direction
/// continues. The first error ends both directions.
async fn copy_bidirectional<A, B>(
    a: A,
    b: B,
    counter: &Counter,
    transferred: &Transferred,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    let forward = copy_one_way(a_read, b_write, counter, &transferred.a_to_b);
    let backward = copy_one_way(b_read, a_write, counter, &transferred.b_to_a);
    tokio::try_join!(forward, backward).map(|_| ())
}

async fn copy_one_way<R, W>(
    mut reader: R,
    mut writer: W,
    counter: &Counter,
    total: &AtomicU64,
) -> io::Result<()>
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
        counter.inc_by(n);
        total.fetch_add(n, Ordering::Relaxed);
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
        let counter = Counter::default();
        let stats = Arc::new(Transferred::default());
        let proxy = {
            let counter = counter.clone();
            let stats = stats.clone();
            tokio::spawn(async move { copy_bidirectional(c2, s1, &counter, &stats).await })
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
        assert_eq!(stats.a_to_b(), 300_000);
        assert_eq!(stats.b_to_a(), 6);
        assert_eq!(counter.get(), 300_006);
    }

    /// client -> (TCP) -> `copy_bidirectional` -> (TCP) -> server, all on loopback.
    async fn tcp_relay() -> (
        TcpStream,
        TcpStream,
        Arc<Transferred>,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (front_addr, back_addr) = (front.local_addr().unwrap(), back.local_addr().unwrap());
        let stats = Arc::new(Transferred::default());
        let s = stats.clone();
        let proxy = tokio::spawn(async move {
            let (inbound, _) = front.accept().await.unwrap();
            let outbound = TcpStream::connect(back_addr).await.unwrap();
            copy_bidirectional(inbound, outbound, &Counter::default(), &s).await
        });
        let client = TcpStream::connect(front_addr).await.unwrap();
        let (server, _) = back.accept().await.unwrap();
        (client, server, stats, proxy)
    }

    #[tokio::test]
    async fn tcp_half_close_reaches_the_peer() {
        let (mut client, mut server, stats, proxy) = tcp_relay().await;
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut buf = Vec::new();
        server.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        drop(server);
        let mut buf = Vec::new();
        client.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"pong");
        proxy.await.unwrap().unwrap();
        assert_eq!((stats.a_to_b(), stats.b_to_a()), (4, 4));
    }

    #[tokio::test]
    async fn an_error_ends_both_directions_and_keeps_counts() {
        let (mut client, mut server, stats, proxy) = tcp_relay().await;
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
        assert!(result.is_err());
        assert_eq!(stats.a_to_b(), 5);
        // The client sees the connection end too.
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
    }

    #[test]
    fn tunnel_reports_count_downstream_to_upstream() {
        let counter = Counter::default();
        let transferred = Transferred::default();
        // Outbound: the application (downstream) sends into the tunnel (upstream).
        let outbound = TunnelMeter {
            counter: &counter,
            transferred: &transferred,
            tunnel_is_upstream: true,
        };
        outbound.carried(CopyDirection::ToTunnel, 5);
        outbound.carried(CopyDirection::FromTunnel, 7);
        assert_eq!((transferred.a_to_b(), transferred.b_to_a()), (5, 7));
        // Inbound: what comes out of the tunnel (downstream) goes to the application.
        let transferred = Transferred::default();
        let inbound = TunnelMeter {
            counter: &counter,
            transferred: &transferred,
            tunnel_is_upstream: false,
        };
        inbound.carried(CopyDirection::FromTunnel, 11);
        inbound.carried(CopyDirection::ToTunnel, 13);
        assert_eq!((transferred.a_to_b(), transferred.b_to_a()), (11, 13));
        assert_eq!(counter.get(), 36);
    }
}
