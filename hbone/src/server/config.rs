//! Settings of the server.

use std::time::Duration;

use crate::Http2Config;

/// Settings of the inbound [`Server`](super::Server).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeConfig {
    /// HTTP/2 settings. Default [`Http2Config::server`].
    pub http2: Http2Config,
    /// Limit for the TLS and HTTP/2 handshakes of an accepted connection. Default 10 s.
    pub handshake_timeout: Duration,
    /// One deadline for everything before the first CONNECT request: waiting for a
    /// handshake slot, the TLS and HTTP/2 handshakes, and the request itself, counted from
    /// the moment the server is handed the connection. Connections past it are closed
    /// ([`ServerError::AcceptTimeout`](super::ServerError::AcceptTimeout)). Default 10 s.
    pub accept_timeout: Duration,
    /// After a drain starts (GOAWAY sent), connections still open after this long are
    /// closed. Default 5 s.
    pub drain_deadline: Duration,
    /// How many connections may be in their TLS and HTTP/2 handshakes at once. Default 1024.
    ///
    /// Connections beyond the limit wait, unread, for a slot (their TCP connection stays
    /// open) until [`accept_timeout`](Self::accept_timeout);
    /// [`handshake_timeout`](Self::handshake_timeout) starts once a slot is taken. A drain
    /// ends the wait. This bounds the CPU and memory that clients which never finish
    /// their handshakes can hold. `0` is treated as `1`.
    pub max_concurrent_handshakes: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            http2: Http2Config::server(),
            handshake_timeout: Duration::from_secs(10),
            accept_timeout: Duration::from_secs(10),
            drain_deadline: Duration::from_secs(5),
            max_concurrent_handshakes: 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = ServeConfig::default();
        assert_eq!(s.http2, Http2Config::server());
        assert_eq!(s.handshake_timeout, Duration::from_secs(10));
        assert_eq!(s.accept_timeout, Duration::from_secs(10));
        assert_eq!(s.drain_deadline, Duration::from_secs(5));
        assert_eq!(s.max_concurrent_handshakes, 1024);
    }
}
