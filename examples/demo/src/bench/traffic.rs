//! The benchmark's own traffic generator: a sink and a request/response server in the
//! destination pods, and the clients that drive them from the source pod.
//!
//! Plain blocking sockets on threads: one thread per stream keeps the generator's own cost
//! small and predictable next to the proxies it measures.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use testbed::Pod;

/// The port of the sink: it reads until end of stream, then answers the byte count (8
/// bytes, big endian) and closes.
pub(crate) const SINK_PORT: u16 = 5201;
/// The port of the request/response server: it answers every byte with one byte until end
/// of stream.
pub(crate) const RR_PORT: u16 = 5202;
/// The port of the one-exchange server: it answers one byte with one byte and closes
/// (the server closes first, so the client's side keeps no `TIME_WAIT`).
pub(crate) const ONCE_PORT: u16 = 5203;

const CHUNK: usize = 128 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Small stacks: the memory test holds a thousand connections, one thread each.
const STACK: usize = 64 * 1024;

/// The benchmark servers of one pod; they stop when this is dropped.
#[derive(Debug)]
pub struct Servers {
    stop: Arc<AtomicBool>,
}

impl Servers {
    /// Starts the sink, the request/response and the one-exchange server on the pod's
    /// address.
    pub fn start(pod: &Pod) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let kinds: [(u16, fn(TcpStream)); 3] =
            [(SINK_PORT, sink), (RR_PORT, echo_bytes), (ONCE_PORT, once)];
        for (port, handler) in kinds {
            let addr = SocketAddr::new(pod.ipv4().into(), port);
            let listener = pod
                .ns()
                .run(move || TcpListener::bind(addr))?
                .with_context(|| format!("cannot listen on {addr}"))?;
            listener.set_nonblocking(true)?;
            let stop = stop.clone();
            thread::Builder::new()
                .name(format!("bench-{port}"))
                .spawn(move || accept_loop(&listener, &stop, handler))?;
        }
        Ok(Self { stop })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, handler: fn(TcpStream)) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
                let _ = conn.set_nodelay(true);
                let _ = thread::Builder::new()
                    .stack_size(STACK)
                    .spawn(move || handler(conn));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(1));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn sink(mut conn: TcpStream) {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => return,
        }
    }
    let _ = conn.write_all(&total.to_be_bytes());
}

fn echo_bytes(mut conn: TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

fn once(mut conn: TcpStream) {
    let mut b = [0u8; 1];
    if conn.read_exact(&mut b).is_ok() {
        let _ = conn.write_all(&b);
    }
    let _ = conn.shutdown(Shutdown::Both);
}

/// Connects from `from`'s network namespace to `to`.
pub(crate) fn connect(from: &Pod, to: SocketAddr) -> Result<TcpStream> {
    let s = from
        .ns()
        .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(5)))?
        .with_context(|| format!("connect to {to}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Sends as fast as it can on `streams` connections to the sink at `to` for `duration`,
/// then half-closes and waits for the sink's counts. Returns the bytes the sink received
/// and the time from the first byte to the last count.
pub(crate) fn throughput(
    from: &Pod,
    to: SocketAddr,
    streams: usize,
    duration: Duration,
) -> Result<(u64, Duration)> {
    let conns = (0..streams)
        .map(|_| connect(from, to))
        .collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            thread::spawn(move || -> io::Result<u64> {
                let buf = vec![0x5au8; CHUNK];
                while Instant::now() < deadline {
                    s.write_all(&buf)?;
                }
                s.shutdown(Shutdown::Write)?;
                let mut count = [0u8; 8];
                s.read_exact(&mut count)?;
                Ok(u64::from_be_bytes(count))
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w
            .join()
            .map_err(|_| anyhow!("sender thread panicked"))?
            .context("throughput stream")?;
    }
    Ok((total, start.elapsed()))
}

/// One-byte request/response on one connection for `duration` (after a short warm-up):
/// the round-trip times.
pub(crate) fn request_response(
    from: &Pod,
    to: SocketAddr,
    duration: Duration,
) -> Result<Vec<Duration>> {
    let mut s = connect(from, to)?;
    s.set_nodelay(true)?;
    let mut b = [1u8; 1];
    let mut exchange = |s: &mut TcpStream| -> io::Result<Duration> {
        let t = Instant::now();
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
        Ok(t.elapsed())
    };
    for _ in 0..200 {
        exchange(&mut s)?;
    }
    let deadline = Instant::now() + duration;
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        samples.push(exchange(&mut s)?);
    }
    Ok(samples)
}

/// Which side of a one-exchange connection closes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstClose {
    /// The server closes after its answer; the client closes once it has read that. The
    /// server side holds the `TIME_WAIT`. Through a proxy, the client's next connection may
    /// start before the proxy has read the client's close and ended the previous one.
    Server,
    /// The client half-closes right after its byte and waits for the end of the answer.
    /// Through a proxy, the close the client waits for is the proxy's last act on the
    /// connection (it has long read the client's half-close), so the next connection starts
    /// only after the previous one ended in the proxy too. The client holds the `TIME_WAIT`.
    Client,
}

/// New connections to the one-exchange server at `to`, one after the other for `duration`:
/// connect, one byte each way, close. Returns how many, and how long they took.
pub(crate) fn connection_rate(
    from: &Pod,
    to: SocketAddr,
    duration: Duration,
    first_close: FirstClose,
) -> Result<(u64, Duration)> {
    // Connect from inside the namespace on one thread: `Pod::ns().run` per connection
    // would measure thread start-up.
    from.ns()
        .run(move || -> Result<(u64, Duration)> {
            let start = Instant::now();
            let deadline = start + duration;
            let mut n = 0u64;
            while Instant::now() < deadline {
                exchange_once(to, first_close)?;
                n += 1;
            }
            Ok((n, start.elapsed()))
        })?
        .context("connection rate")
}

/// One connection to the one-exchange server at `to`, the client closing first: it returns
/// once a proxy on the way has ended the connection, so a measurement that follows does not
/// find its tunnel still open.
pub(crate) fn one_connection(from: &Pod, to: SocketAddr) -> Result<()> {
    from.ns()
        .run(move || exchange_once(to, FirstClose::Client))?
}

/// Connects to the one-exchange server at `to`, sends a byte, reads the answer and waits
/// for the end of the connection.
fn exchange_once(to: SocketAddr, first_close: FirstClose) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    let mut b = [1u8; 1];
    s.write_all(&b)?;
    if first_close == FirstClose::Client {
        s.shutdown(Shutdown::Write)?;
    }
    s.read_exact(&mut b)?;
    let _ = s.read(&mut b);
    Ok(())
}

/// Opens `n` connections to the request/response server at `to` and makes one exchange on
/// each, so that every one is a live tunnel end to end; they stay open until dropped.
pub(crate) fn open_idle(from: &Pod, to: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    from.ns()
        .run(move || -> Result<Vec<TcpStream>> {
            let mut conns = Vec::with_capacity(n);
            for _ in 0..n {
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                let mut b = [1u8; 1];
                s.write_all(&b)?;
                s.read_exact(&mut b)?;
                conns.push(s);
            }
            Ok(conns)
        })?
        .context("opening idle connections")
}
