//! Open inbound connections, re-authorized after every xDS change: a policy that now denies
//! one closes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use meshwire_xds_workload::WorkloadStore;
use meshwire_xds_workload::authorization::{ConnectionInfo, Decision};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What authorization needs to decide on an open connection again.
#[derive(Debug)]
struct Open {
    /// Source identity, addresses and destination port.
    conn: ConnectionInfo,
    /// The xDS uid of the destination workload (the local pod).
    destination: String,
    /// Fired to close the connection.
    close: CancellationToken,
}

/// Every open inbound connection (HBONE and plaintext) of this proxy.
#[derive(Debug, Default)]
pub(super) struct OpenConnections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Open>>,
}

/// An entry of [`OpenConnections`], removed when dropped (the connection ended).
#[derive(Debug)]
pub(super) struct Registration {
    registry: Arc<OpenConnections>,
    id: u64,
    close: CancellationToken,
}

impl Registration {
    /// Fires when a policy change denies the connection.
    pub(super) fn denied(&self) -> &CancellationToken {
        &self.close
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl OpenConnections {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Open>> {
        // Every mutation is one call: a panic elsewhere leaves the map consistent.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an authorized connection to the workload with xDS uid `destination`.
    pub(super) fn register(
        self: &Arc<Self>,
        conn: ConnectionInfo,
        destination: String,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = CancellationToken::new();
        self.lock().insert(
            id,
            Open {
                conn,
                destination,
                close: close.clone(),
            },
        );
        Registration {
            registry: self.clone(),
            id,
            close,
        }
    }

    /// How many connections are open.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Evaluates every open connection against the policies in `store` now and closes
    /// those denied (logged, counted in `policy_denials`). A connection whose destination
    /// workload left xDS is left alone (its pod's removal cuts it). Returns how many were
    /// closed.
    pub(super) fn reauthorize(&self, store: &WorkloadStore, metrics: &Metrics) -> usize {
        let mut closed = 0;
        for open in self.lock().values() {
            if open.close.is_cancelled() {
                continue;
            }
            let Some(destination) = store.workload_by_uid(&open.destination) else {
                continue;
            };
            if let Decision::Deny(reason) = store.authorize(&open.conn, &destination).decision {
                tracing::info!(
                    src = %open.conn.source_ip,
                    destination = %open.destination,
                    %reason,
                    "closing an open connection: a policy change denies it"
                );
                metrics.policy_denials.inc();
                open.close.cancel();
                closed += 1;
            }
        }
        closed
    }
}

/// Re-authorizes `registry` after every change of `store` (workloads and authorization
/// policies arrive through it from xDS) until the registry is gone.
pub(super) async fn watch(
    registry: Weak<OpenConnections>,
    store: Arc<WorkloadStore>,
    metrics: Arc<Metrics>,
) {
    let mut changes = store.subscribe();
    while changes.changed().await.is_ok() {
        let Some(registry) = registry.upgrade() else {
            return;
        };
        registry.reauthorize(&store, &metrics);
    }
}
