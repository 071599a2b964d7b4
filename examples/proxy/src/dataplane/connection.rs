//! One carried connection: what is recorded about it, how it is counted and logged, and why
//! it failed when it could not be carried.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use super::DataPlane;
use crate::copy::{Ends, Transferred};
use crate::metrics::{ConnectionLabels, Direction, Security, TrafficLabels};

/// Why a connection could not be carried; the reason label of `connection_failures`.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) reason: &'static str,
    pub(super) detail: String,
}

impl Failure {
    pub(super) fn new(reason: &'static str, detail: impl fmt::Display) -> Self {
        Self {
            reason,
            detail: detail.to_string(),
        }
    }
}

impl DataPlane {
    pub(super) fn connection_failed(&self, rec: &ConnRecord, failure: &Failure) {
        self.metrics
            .connection_failed(rec.direction, failure.reason);
        tracing::info!(
            direction = %rec.direction,
            security = %rec.security,
            src = %rec.src,
            dst = %rec.dst,
            peer_identity = %rec.peer_identity,
            reason = failure.reason,
            error = %failure.detail,
            "connection failed"
        );
    }

    /// Counts an established connection, copies until both sides are done, logs it.
    pub(super) async fn splice(&self, rec: ConnRecord, ends: Ends) {
        let traffic = TrafficLabels {
            direction: rec.direction,
            security: rec.security,
        };
        self.metrics
            .connections
            .get_or_create(&ConnectionLabels {
                direction: rec.direction,
                security: rec.security,
                source_identity: rec.source_identity.clone(),
                destination_identity: rec.destination_identity.clone(),
            })
            .inc();
        let active = self
            .metrics
            .active_connections
            .get_or_create_owned(&traffic);
        active.inc();
        let bytes: Counter = self.metrics.bytes.get_or_create_owned(&traffic);
        let transferred = Arc::new(Transferred::default());
        // Decrement the gauge and log also when the task is cancelled (pod removed, drain
        // period over).
        let _done = SpliceDone {
            rec,
            transferred: transferred.clone(),
            active,
        };
        if let Err(e) = ends.copy(&bytes, &transferred).await {
            tracing::debug!(error = %e, "copy ended with an error");
        }
    }
}

/// What the connection log line and the metrics say about one connection.
#[derive(Debug, Clone)]
pub(super) struct ConnRecord {
    pub(super) direction: Direction,
    pub(super) security: Security,
    pub(super) src: SocketAddr,
    pub(super) dst: SocketAddr,
    pub(super) source_identity: String,
    pub(super) destination_identity: String,
    pub(super) peer_identity: String,
    /// The peer workload as its HBONE `baggage` names it (`namespace/name`), empty if none.
    pub(super) peer_workload: String,
    pub(super) started: Instant,
}

impl ConnRecord {
    pub(super) fn new(
        direction: Direction,
        security: Security,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Self {
        Self {
            direction,
            security,
            src,
            dst,
            source_identity: String::new(),
            destination_identity: String::new(),
            peer_identity: String::new(),
            peer_workload: String::new(),
            started: Instant::now(),
        }
    }

    pub(super) fn identities(mut self, source: String, destination: String) -> Self {
        self.source_identity = source;
        self.destination_identity = destination;
        self
    }
}

/// Logs the connection line and releases the active gauge when a splice ends for any reason.
struct SpliceDone {
    rec: ConnRecord,
    transferred: Arc<Transferred>,
    active: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for SpliceDone {
    fn drop(&mut self) {
        self.active.dec();
        let r = &self.rec;
        tracing::info!(
            direction = %r.direction,
            security = %r.security,
            src = %r.src,
            dst = %r.dst,
            peer_identity = %r.peer_identity,
            peer_workload = %r.peer_workload,
            bytes_sent = self.transferred.a_to_b(),
            bytes_received = self.transferred.b_to_a(),
            duration_ms = u64::try_from(r.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "connection closed"
        );
    }
}
