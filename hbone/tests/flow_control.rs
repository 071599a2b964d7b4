//! Flow control over loopback TLS: slow readers bound what writers can push, per stream
//! and per connection, and the server's window setting applies.

// Helpers outside #[test] functions: a failed step should abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use meshwire_hbone::client::PoolConfig;
use meshwire_hbone::server::ServeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes until a write stays blocked for `quiet`; returns the bytes accepted. A write
/// that blocks before `at_least` bytes were accepted gets 5 s more, so that a loaded
/// machine is not mistaken for flow control.
async fn write_until_stalled(
    t: &mut meshwire_hbone::Tunnel,
    quiet: Duration,
    at_least: usize,
) -> usize {
    let chunk = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let write = t.write(&chunk);
        tokio::pin!(write);
        match tokio::time::timeout(quiet, &mut write).await {
            Ok(n) => total += n.unwrap(),
            Err(_) if total >= at_least => return total,
            Err(_) => match tokio::time::timeout(Duration::from_secs(5), &mut write).await {
                Ok(n) => total += n.unwrap(),
                Err(_) => return total,
            },
        }
    }
}

#[tokio::test]
async fn slow_reader_bounds_buffered_bytes_by_the_stream_window() {
    const WINDOW: usize = 4 * 1024 * 1024;
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    let mut t = f.open(&pool, PORT_PARK).await;
    let mut server_side = f.take_parked_one().await;

    // Nobody reads: the writer stops at the stream window.
    let written = write_until_stalled(&mut t, Duration::from_millis(300), WINDOW / 2).await;
    assert!(
        written <= WINDOW,
        "{written} bytes accepted, window is {WINDOW}"
    );
    assert!(written >= WINDOW / 2, "only {written} bytes accepted");
    let buffered = server_side.recv_half().buffered_bytes();
    assert!(buffered <= WINDOW, "{buffered}");
    assert_eq!(
        buffered, written,
        "everything accepted sits in the receive window"
    );

    // Reading slowly lets the writer continue, never more than a window ahead.
    let mut read = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total_written = written;
    for _ in 0..8 {
        let mut got = 0;
        while got < 1024 * 1024 {
            let n = server_side.read(&mut buf).await.unwrap();
            got += n;
        }
        read += got;
        total_written += write_until_stalled(&mut t, Duration::from_millis(100), 0).await;
        assert!(
            total_written - read <= WINDOW,
            "{} bytes in flight",
            total_written - read
        );
        assert!(server_side.recv_half().buffered_bytes() <= WINDOW);
    }
    assert!(total_written > written, "writer never resumed");
}

#[tokio::test]
async fn slow_readers_are_bounded_by_the_connection_window() {
    const CONN_WINDOW: usize = 16 * 1024 * 1024;
    let f = Fixture::start().await;
    let pool = f.pool(PoolConfig::default());
    let mut tunnels = Vec::new();
    for _ in 0..6 {
        tunnels.push(f.open(&pool, PORT_PARK).await);
    }
    assert_eq!(pool.stats().opened, 1);
    let mut parked = f.take_parked(6).await;
    let mut total = 0;
    for (i, t) in tunnels.iter_mut().enumerate() {
        // The first streams have room in the connection window.
        let at_least = if i < 2 { 2 * 1024 * 1024 } else { 0 };
        total += write_until_stalled(t, Duration::from_millis(200), at_least).await;
    }
    // 6 streams × 4 MiB windows, but the connection window caps the sum.
    assert!(total <= CONN_WINDOW, "{total} bytes accepted");
    assert!(total >= CONN_WINDOW / 2, "{total} bytes accepted");
    let buffered: usize = parked
        .iter_mut()
        .map(|p| p.recv_half().buffered_bytes())
        .sum();
    assert_eq!(buffered, total);
}

#[tokio::test]
async fn server_stream_window_setting_applies() {
    // A smaller stream window set on the server bounds a client writer accordingly.
    let mut sc = ServeConfig::default();
    sc.http2.stream_window = 256 * 1024;
    let f = Fixture::start_with(sc).await;
    let pool = f.pool(PoolConfig::default());
    let mut t = f.open(&pool, PORT_PARK).await;
    let written = write_until_stalled(&mut t, Duration::from_millis(200), 128 * 1024).await;
    assert!((128 * 1024..=256 * 1024).contains(&written), "{written}");
}
