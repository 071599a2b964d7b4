//! The echo server every pod runs on [`ECHO_PORT`](crate::ECHO_PORT).

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::{Cluster, ECHO_PORT, Role};

impl Cluster {
    pub(crate) fn start_echo_servers(&mut self) -> Result<()> {
        for role in Role::ALL {
            self.start_echo_server(role)?;
        }
        Ok(())
    }

    /// Starts `role`'s echo server in its pod's current namespace, stopping the one it
    /// had.
    pub(crate) fn start_echo_server(&mut self, role: Role) -> Result<()> {
        self.stop_echo_server(role);
        let pod = &self.pods[&role];
        let addr = SocketAddr::new(IpAddr::V4(pod.ipv4()), ECHO_PORT);
        let listener = pod
            .ns()
            .run(move || TcpListener::bind(addr))?
            .with_context(|| format!("cannot listen on {addr} in {}", role.label()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        self.echo_stops.insert(role, stop.clone());
        thread::Builder::new()
            .name(format!("echo-{}", role.name()))
            .spawn(move || echo_loop(&listener, &stop))?;
        Ok(())
    }

    /// Stops `role`'s echo server (its listener closes within a few milliseconds).
    pub(crate) fn stop_echo_server(&mut self, role: Role) {
        if let Some(stop) = self.echo_stops.remove(&role) {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

fn echo_loop(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                thread::spawn(move || {
                    let mut buf = Vec::new();
                    if conn.read_to_end(&mut buf).is_ok() {
                        let _ = conn.write_all(&buf);
                    }
                    let _ = conn.shutdown(Shutdown::Both);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}
