//! Helpers shared by the unit tests of several modules.

use std::time::Duration;

use tokio::io::AsyncReadExt;

/// Whether the proxy closed `s` (end of stream or an error) within `within`.
pub(crate) async fn closed_by_proxy(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
) -> bool {
    let mut b = [0u8; 256];
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut b)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}
