//! The real side effects behind the reconciler's traits.

pub(crate) mod rules;
pub(crate) mod xds;
pub(crate) mod zds;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// The next event of a server's event stream: `Ok(event)`, `Err(missed)` after the receiver
/// lagged behind and missed that many, or `None` once `shutdown` is cancelled or the server
/// is gone.
pub(crate) async fn next_event<E: Clone>(
    events: &mut broadcast::Receiver<E>,
    shutdown: &CancellationToken,
) -> Option<Result<E, u64>> {
    let event = tokio::select! {
        () = shutdown.cancelled() => return None,
        e = events.recv() => e,
    };
    match event {
        Ok(e) => Some(Ok(e)),
        Err(broadcast::error::RecvError::Lagged(n)) => Some(Err(n)),
        Err(broadcast::error::RecvError::Closed) => None,
    }
}
