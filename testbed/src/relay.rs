//! A loopback port of the host namespace made reachable inside another namespace, the way
//! a node reaches its API server: a listener on `127.0.0.1:<port>` inside the namespace
//! whose connections are relayed to `127.0.0.1:<port>` of the host (the namespace the test
//! process runs in). A socket keeps the namespace it was created in, so one thread of the
//! test process serves both sides.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::error::Error;
use crate::namespace::Namespace;

/// How often the accept loop looks at its stop flag.
const POLL: Duration = Duration::from_millis(50);

/// A running relay; stops accepting on drop (open connections end with their peers).
#[derive(Debug)]
pub struct LoopbackRelay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LoopbackRelay {
    /// Listens on `127.0.0.1:port` inside `ns` and relays every connection to
    /// `127.0.0.1:port` of the host. A connection the host side refuses is closed.
    pub fn start(ns: &Namespace, port: u16) -> Result<Self, Error> {
        let io_err = |context: &str| {
            let context = format!("{context} (relay of port {port} into {})", ns.name());
            move |source| Error::Io { context, source }
        };
        let listener = ns
            .run(move || TcpListener::bind((Ipv4Addr::LOCALHOST, port)))?
            .map_err(io_err("binding the relay's listener"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("making the listener non-blocking"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name(format!("relay-{port}"))
            .spawn(move || accept_loop(&listener, port, &flag))
            .map_err(io_err("starting the relay thread"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LoopbackRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, port: u16, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((inside, _)) => {
                let _ = inside.set_nonblocking(false);
                match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                    Ok(host) => pipe(inside, host),
                    Err(e) => {
                        tracing::debug!(port, error = %e, "relay: host side refused");
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(e) => {
                tracing::debug!(port, error = %e, "relay: accept failed");
                thread::sleep(POLL);
            }
        }
    }
}

/// Copies both directions on their own threads; each side's end of stream is passed on.
fn pipe(a: TcpStream, b: TcpStream) {
    for (from, to) in [(&a, &b), (&b, &a)] {
        let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
            return;
        };
        let _ = thread::Builder::new()
            .name("relay-conn".to_owned())
            .spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
                let _ = from.shutdown(Shutdown::Read);
            });
    }
}
