//! HTTP/2 settings shared by the client and the server, with their documented defaults.

use std::time::Duration;

const KIB: u32 = 1024;
const MIB: u32 = 1024 * 1024;

/// HTTP/2 settings of one HBONE connection.
///
/// [`Http2Config::client`] (also the [`Default`]) and [`Http2Config::server`] hold the
/// values HBONE peers use; they differ only in the header-list limit, the send buffer
/// and the concurrent-stream limit.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Http2Config {
    /// SETTINGS_INITIAL_WINDOW_SIZE: receive window of each stream. Default 4 MiB.
    pub stream_window: u32,
    /// Receive window of the whole connection. Default 16 MiB.
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE we accept. Default 1 MiB.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE we accept. Default 16 KiB (client), 64 KiB
    /// (server).
    pub max_header_list_size: u32,
    /// Most bytes buffered for sending per stream. Default 4 MiB (client), 400 KiB
    /// (server).
    pub max_send_buffer: usize,
    /// SETTINGS_MAX_CONCURRENT_STREAMS we advertise (peer-initiated streams).
    /// Default: `None` on the client (no limit advertised), 200 on the server.
    pub max_concurrent_streams: Option<u32>,
    /// Client only: streams we assume the peer allows before its SETTINGS arrive.
    /// Default 100.
    pub initial_max_send_streams: usize,
    /// Interval between keepalive PINGs (the first one is sent one interval after the
    /// connection starts). Default 10 s. `None` disables keepalive.
    pub keepalive_interval: Option<Duration>,
    /// A PING not answered within this time closes the connection. Default 20 s.
    pub keepalive_timeout: Duration,
}

impl Http2Config {
    /// Client (outbound) defaults.
    pub fn client() -> Self {
        Self {
            stream_window: 4 * MIB,
            connection_window: 16 * MIB,
            max_frame_size: MIB,
            max_header_list_size: 16 * KIB,
            max_send_buffer: 4 * MIB as usize,
            max_concurrent_streams: None,
            initial_max_send_streams: 100,
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_timeout: Duration::from_secs(20),
        }
    }

    /// Server (inbound) defaults.
    pub fn server() -> Self {
        Self {
            max_header_list_size: 64 * KIB,
            max_send_buffer: 400 * KIB as usize,
            max_concurrent_streams: Some(200),
            ..Self::client()
        }
    }

    pub(crate) fn client_builder(&self) -> h2::client::Builder {
        let mut b = h2::client::Builder::new();
        b.initial_window_size(clamp_window(self.stream_window))
            .initial_connection_window_size(clamp_window(self.connection_window))
            .max_frame_size(clamp_frame(self.max_frame_size))
            .max_header_list_size(self.max_header_list_size)
            .max_send_buffer_size(self.max_send_buffer.min(u32::MAX as usize))
            .initial_max_send_streams(self.initial_max_send_streams)
            .enable_push(false);
        if let Some(n) = self.max_concurrent_streams {
            b.max_concurrent_streams(n);
        }
        b
    }

    pub(crate) fn server_builder(&self) -> h2::server::Builder {
        let mut b = h2::server::Builder::new();
        b.initial_window_size(clamp_window(self.stream_window))
            .initial_connection_window_size(clamp_window(self.connection_window))
            .max_frame_size(clamp_frame(self.max_frame_size))
            .max_header_list_size(self.max_header_list_size)
            .max_send_buffer_size(self.max_send_buffer.min(u32::MAX as usize));
        if let Some(n) = self.max_concurrent_streams {
            b.max_concurrent_streams(n);
        }
        b
    }
}

/// HTTP/2 windows are at most 2^31 - 1.
fn clamp_window(size: u32) -> u32 {
    size.min(i32::MAX as u32)
}

/// HTTP/2 allows frame sizes in 16 KiB ..= 16 MiB - 1; h2 panics outside that range.
fn clamp_frame(size: u32) -> u32 {
    size.clamp(16 * KIB, 16 * MIB - 1)
}

impl Default for Http2Config {
    /// Same as [`Http2Config::client`].
    fn default() -> Self {
        Self::client()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_defaults() {
        let c = Http2Config::default();
        assert_eq!(c.stream_window, 4_194_304);
        assert_eq!(c.connection_window, 16_777_216);
        assert_eq!(c.max_frame_size, 1_048_576);
        assert_eq!(c.max_header_list_size, 16_384);
        assert_eq!(c.keepalive_interval, Some(Duration::from_secs(10)));
        assert_eq!(c.keepalive_timeout, Duration::from_secs(20));
        let s = Http2Config::server();
        assert_eq!(s.max_header_list_size, 65_536);
        assert_eq!(s.max_concurrent_streams, Some(200));
        assert_eq!(s.max_send_buffer, 409_600);
        assert_eq!(clamp_frame(1), 16_384);
        assert_eq!(clamp_frame(u32::MAX), 16_777_215);
    }
}
