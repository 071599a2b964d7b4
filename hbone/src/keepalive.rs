//! Connection drivers: poll the HTTP/2 connection and run the PING keepalive.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::{Ping, PingPong};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::config::Http2Config;

/// `now + d`, or about 30 years from now when that does not fit an `Instant`: settings
/// are the caller's, and a huge duration means "never" rather than a panic.
pub(crate) fn deadline_after(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// PING keepalive: one PING every `interval`, the connection is dead when a PONG does
/// not come back within `timeout`. Optionally sends a first PING at once and reports
/// its PONG (`probe`): the peer's SETTINGS precede that PONG on the wire, so after
/// it the peer's stream limit is known.
pub(crate) struct Keepalive {
    ping_pong: Option<PingPong>,
    interval: Option<Duration>,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    outstanding: bool,
    probe: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Keepalive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keepalive")
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

impl Keepalive {
    pub(crate) fn new(
        ping_pong: Option<PingPong>,
        config: &Http2Config,
        probe: Option<Box<dyn FnOnce() + Send>>,
    ) -> Self {
        let now = Instant::now();
        let first = match (&probe, config.keepalive_interval) {
            (Some(_), _) => now,
            (None, Some(i)) => deadline_after(now, i),
            // Never fires: nothing to send.
            (None, None) => deadline_after(now, Duration::MAX),
        };
        Self {
            ping_pong,
            interval: config.keepalive_interval,
            timeout: config.keepalive_timeout,
            timer: Box::pin(tokio::time::sleep_until(first)),
            outstanding: false,
            probe,
        }
    }

    /// `Ready(())` when a PING went unanswered for `timeout`: the connection is dead.
    pub(crate) fn poll_timeout(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(pp) = self.ping_pong.as_mut() else {
                return Poll::Pending;
            };
            if self.outstanding {
                match pp.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.outstanding = false;
                        if let Some(probe) = self.probe.take() {
                            probe();
                        }
                        match self.interval {
                            Some(i) => self.timer.as_mut().reset(deadline_after(Instant::now(), i)),
                            None => self.ping_pong = None,
                        }
                        continue;
                    }
                    // The connection itself failed; its own future reports that.
                    Poll::Ready(Err(_)) => {
                        self.ping_pong = None;
                        return Poll::Pending;
                    }
                    Poll::Pending => {}
                }
                return self.timer.as_mut().poll(cx);
            }
            if self.interval.is_none() && self.probe.is_none() {
                self.ping_pong = None;
                return Poll::Pending;
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if pp.send_ping(Ping::opaque()).is_err() {
                self.ping_pong = None;
                return Poll::Pending;
            }
            self.outstanding = true;
            self.timer
                .as_mut()
                .reset(deadline_after(Instant::now(), self.timeout));
        }
    }
}

/// How a client connection ended.
#[derive(Debug)]
pub(crate) enum ClientExit {
    /// The HTTP/2 connection finished (cleanly or with an error).
    Closed(Result<(), h2::Error>),
    /// A keepalive PING was not answered in time.
    KeepaliveTimeout,
}

/// Drives a client connection and its keepalive until either ends.
pub(crate) struct ClientDriver<T> {
    conn: h2::client::Connection<T, Bytes>,
    keepalive: Keepalive,
}

impl<T> std::fmt::Debug for ClientDriver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientDriver")
            .field("keepalive", &self.keepalive)
            .finish_non_exhaustive()
    }
}

impl<T> ClientDriver<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    pub(crate) fn new(
        mut conn: h2::client::Connection<T, Bytes>,
        config: &Http2Config,
        probe: Option<Box<dyn FnOnce() + Send>>,
    ) -> Self {
        let keepalive = Keepalive::new(conn.ping_pong(), config, probe);
        Self { conn, keepalive }
    }
}

impl<T> Future for ClientDriver<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    type Output = ClientExit;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ClientExit> {
        let this = self.get_mut();
        if let Poll::Ready(r) = Pin::new(&mut this.conn).poll(cx) {
            return Poll::Ready(ClientExit::Closed(r));
        }
        if this.keepalive.poll_timeout(cx).is_ready() {
            return Poll::Ready(ClientExit::KeepaliveTimeout);
        }
        Poll::Pending
    }
}
