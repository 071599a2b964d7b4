//! One carried connection: what is recorded about it, how it is counted and logged, and why
//! it failed when it could not be carried.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use meshwire_xds_workload::authorization::ConnectionInfo;
use prometheus_client::metrics::counter::Counter;

use super::DataPlane;
use crate::copy::{Ends, Meter};
use crate::metrics::istio::{ResponseFlags, TcpConnection, TcpLabels};
use crate::metrics::{ConnectionLabels, Direction, Security, TrafficLabels};

/// Why a connection could not be carried; the reason label of `connection_failures`.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) reason: &'static str,
    pub(super) detail: String,
}

/// The reason of a connection refused by L4 authorization.
pub(super) const DENIED_BY_POLICY: &str = "denied by policy";

impl Failure {
    pub(super) fn new(reason: &'static str, detail: impl fmt::Display) -> Self {
        Self {
            reason,
            detail: detail.to_string(),
        }
    }

    /// How the Istio metrics flag a connection that ended this way.
    fn response_flags(&self) -> ResponseFlags {
        if self.reason == DENIED_BY_POLICY {
            ResponseFlags::Deny
        } else {
            ResponseFlags::Connect
        }
    }
}

impl DataPlane {
    /// Counts the connection in the Istio TCP metrics from now on (opened now, closed when
    /// `rec` goes).
    pub(super) fn open_tcp(&self, rec: &mut ConnRecord, labels: TcpLabels) {
        rec.tcp = Some(self.metrics.istio.open(labels));
    }

    /// Counts and logs a connection that could not be carried.
    pub(super) fn connection_failed(&self, mut rec: ConnRecord, failure: &Failure) {
        if let Some(tcp) = &mut rec.tcp {
            tcp.set_flags(failure.response_flags());
        }
        self.metrics
            .connection_failed(rec.direction, failure.reason);
        tracing::info!(
            direction = %rec.direction,
            security = %rec.security,
            src = %rec.src,
            forwarded_for = rec.forwarded_for.map(tracing::field::display),
            dst = %rec.dst,
            peer_identity = %rec.peer_identity,
            reason = failure.reason,
            error = %failure.detail,
            "connection failed"
        );
    }

    /// [`splice`](Self::splice) for an authorized inbound connection to `destination` (an xDS
    /// workload uid): it is registered for re-authorization and closed if a policy change
    /// denies it.
    pub(super) async fn splice_authorized(
        &self,
        rec: ConnRecord,
        ends: Ends,
        conn: ConnectionInfo,
        destination: String,
    ) {
        let registration = self.open_inbound.register(conn, destination);
        tokio::select! {
            () = registration.denied().cancelled() => {}
            () = self.splice(rec, ends) => {}
        }
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
        let (received, sent) = rec
            .tcp
            .as_ref()
            .map(|t| (t.received.clone(), t.sent.clone()))
            .unwrap_or_default();
        let meter = Arc::new(Meter::new(bytes, received, sent));
        // Decrement the gauge and log also when the task is cancelled (pod removed, drain
        // period over).
        let _done = SpliceDone {
            rec,
            meter: meter.clone(),
            active,
        };
        if let Err(e) = ends.copy(&meter).await {
            tracing::debug!(error = %e, "copy ended with an error");
        }
    }
}

/// What the connection log line and the metrics say about one connection.
#[derive(Debug)]
pub(super) struct ConnRecord {
    pub(super) direction: Direction,
    pub(super) security: Security,
    /// The TCP source: the address of the socket's peer, never a header's claim.
    pub(super) src: SocketAddr,
    pub(super) dst: SocketAddr,
    /// The client address the peer claims in its HBONE `Forwarded` header (inbound), if any.
    pub(super) forwarded_for: Option<SocketAddr>,
    pub(super) source_identity: String,
    pub(super) destination_identity: String,
    pub(super) peer_identity: String,
    /// The peer workload as its HBONE `baggage` names it (`namespace/name`), empty if none.
    pub(super) peer_workload: String,
    pub(super) started: Instant,
    /// The connection as the Istio TCP metrics count it, once it is counted there.
    pub(super) tcp: Option<TcpConnection>,
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
            forwarded_for: None,
            source_identity: String::new(),
            destination_identity: String::new(),
            peer_identity: String::new(),
            peer_workload: String::new(),
            started: Instant::now(),
            tcp: None,
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
    meter: Arc<Meter>,
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
            forwarded_for = r.forwarded_for.map(tracing::field::display),
            dst = %r.dst,
            peer_identity = %r.peer_identity,
            peer_workload = %r.peer_workload,
            bytes_sent = self.meter.to_upstream(),
            bytes_received = self.meter.to_downstream(),
            duration_ms = u64::try_from(r.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "connection closed"
        );
    }
}
