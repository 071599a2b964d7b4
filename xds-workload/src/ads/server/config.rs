//! Configuration of an [`AdsServer`](super::AdsServer), and the error of its `serve_*`
//! functions.

use std::time::Duration;

/// Configuration of an [`AdsServer`](super::AdsServer).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Largest request message accepted. Default: 64 MiB (a reconnecting client lists every
    /// resource it holds in its first request).
    pub max_decoding_message_size: usize,
    /// Capacity of the [`ServerEvent`](super::ServerEvent) broadcast; slow receivers lose the oldest events.
    /// Default: 1024.
    pub event_capacity: usize,
    /// Nonces remembered per stream and type while waiting for an ACK. Default: 16.
    pub outstanding_nonces: usize,
    /// Distinct type URLs one stream may subscribe to; a stream that asks for more is
    /// ended with `RESOURCE_EXHAUSTED`, so a client cannot make the server hold
    /// unbounded per-stream state. Default: 16.
    pub max_type_urls_per_stream: usize,
    /// HTTP/2 keep-alive PING interval used by the `serve_*` functions. Default: 30 s.
    pub http2_keepalive_interval: Option<Duration>,
    /// HTTP/2 keep-alive PING timeout used by the `serve_*` functions. Default: 10 s.
    pub http2_keepalive_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_decoding_message_size: 64 << 20,
            event_capacity: 1024,
            outstanding_nonces: 16,
            max_type_urls_per_stream: 16,
            http2_keepalive_interval: Some(Duration::from_secs(30)),
            http2_keepalive_timeout: Some(Duration::from_secs(10)),
        }
    }
}

/// The convenience `serve` functions failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The gRPC transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}
