//! Process signals: SIGTERM and SIGINT start the graceful shutdown.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on SIGTERM or SIGINT.
pub(crate) async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
        () = shutdown.cancelled() => return,
    }
    shutdown.cancel();
}
