//! Settings of the connection pool.

use std::time::Duration;

use crate::Http2Config;

/// Settings of the outbound connection [`Pool`](super::Pool).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// HTTP/2 settings of pooled connections. Default [`Http2Config::client`].
    pub http2: Http2Config,
    /// Most concurrent tunnels per connection; the peer's
    /// SETTINGS_MAX_CONCURRENT_STREAMS lowers it further. Default 100.
    pub max_streams_per_connection: usize,
    /// A connection without tunnels for this long is released: from then on no new tunnel
    /// is given to it (even before its task has run), and it leaves the pool, sends GOAWAY
    /// and closes. The time counts from the end of its last tunnel (the [`Tunnel`] or
    /// both of its halves dropped).
    ///
    /// Zero releases a connection as soon as its last tunnel ends, so every tunnel that
    /// starts after the previous tunnel of its [`PoolKey`](super::PoolKey) has ended gets a
    /// new connection (its own TLS handshake); tunnels open at the same time still share
    /// connections up to [`max_streams_per_connection`](Self::max_streams_per_connection).
    /// Default 5 min.
    ///
    /// [`Tunnel`]: crate::Tunnel
    pub idle_timeout: Duration,
    /// Limit for the TCP connect of the connector. Default 10 s.
    pub connect_timeout: Duration,
    /// Limit for the TLS and HTTP/2 handshakes. Default 10 s.
    pub handshake_timeout: Duration,
    /// Limit for the answer to a CONNECT request, from sending it (a free stream included)
    /// to the response headers; past it the stream is reset and
    /// [`Pool::connect`](super::Pool::connect) fails with
    /// [`ClientError::ResponseTimeout`](super::ClientError::ResponseTimeout). The server
    /// dials the destination before it answers, so keep this above the server's own connect
    /// timeout. Default 15 s (a 10 s server-side connect timeout plus margin).
    pub response_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            http2: Http2Config::client(),
            max_streams_per_connection: 100,
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(15),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let p = PoolConfig::default();
        assert_eq!(p.http2, Http2Config::client());
        assert_eq!(p.max_streams_per_connection, 100);
        assert_eq!(p.idle_timeout, Duration::from_secs(300));
        assert_eq!(p.connect_timeout, Duration::from_secs(10));
        assert_eq!(p.handshake_timeout, Duration::from_secs(10));
        assert_eq!(p.response_timeout, Duration::from_secs(15));
    }
}
