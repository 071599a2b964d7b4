//! Prometheus metrics of the proxy. The `meshwire_` names are part of the e2e contract:
//! `meshwire_connections_total`, `meshwire_bytes_total`, `meshwire_tls_handshake_failures_total`,
//! `meshwire_policy_denials_total`, `meshwire_certificate_expiry_timestamp_seconds`. The standard Istio
//! metrics ztunnel exports are in [`istio`].

pub(crate) mod istio;

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use self::istio::{CertLabels, IstioMetrics};

/// Which way a proxied connection goes, seen from the local pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Direction {
    /// Captured on 15001: the local pod is the client.
    Outbound,
    /// Arrived on 15008 or 15006: the local pod is the server.
    Inbound,
}

/// Whether the hop between the nodes was mutual TLS (HBONE) or plain TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Security {
    /// HBONE: HTTP/2 CONNECT inside mutual TLS 1.3.
    Mtls,
    /// Plain TCP (passthrough to a non-enrolled destination, or 15006 inbound).
    Plaintext,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

impl Security {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Mtls => "mtls",
            Self::Plaintext => "plaintext",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

impl EncodeLabelValue for Security {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Labels of `meshwire_connections_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ConnectionLabels {
    pub(crate) direction: Direction,
    pub(crate) security: Security,
    /// SPIFFE ID of the client side, empty when unknown.
    pub(crate) source_identity: String,
    /// SPIFFE ID of the server side, empty when unknown.
    pub(crate) destination_identity: String,
}

/// Labels of `meshwire_bytes_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TrafficLabels {
    pub(crate) direction: Direction,
    pub(crate) security: Security,
}

/// Labels of `meshwire_certificate_expiry_timestamp_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct IdentityLabels {
    pub(crate) identity: String,
}

/// Labels of `meshwire_connection_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct FailureLabels {
    pub(crate) direction: Direction,
    pub(crate) reason: &'static str,
}

/// Labels of `meshwire_connections_dropped_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct DroppedLabels {
    /// `hbone` (15008) or `http` (15020, 15021).
    pub(crate) listener: &'static str,
    /// `shed` (made room for a newer connection), `refused` (the limit was full of
    /// established connections) or `timeout` (past the accept or header-read deadline).
    pub(crate) reason: &'static str,
}

/// Labels of `meshwire_zds_disconnects_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ZdsLabels {
    /// `unreadable message` (malformed, truncated or oversized, or with the wrong file
    /// descriptors), `protocol error` (a message that breaks the session) or `connection`
    /// (connecting failed, or the connection ended).
    pub(crate) reason: &'static str,
}

/// All metrics of the proxy and the registry they are encoded from.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) connections: Family<ConnectionLabels, Counter>,
    pub(crate) bytes: Family<TrafficLabels, Counter>,
    pub(crate) tls_handshake_failures: Counter,
    pub(crate) policy_denials: Counter,
    pub(crate) certificate_expiry: Family<IdentityLabels, Gauge>,
    pub(crate) connection_failures: Family<FailureLabels, Counter>,
    pub(crate) active_connections: Family<TrafficLabels, Gauge>,
    pub(crate) pods: Gauge,
    /// Connections closed before they were served (slowloris defence).
    pub(crate) dropped: Family<DroppedLabels, Counter>,
    /// ZDS connections to the agent that ended, by reason (the client reconnects).
    pub(crate) zds_disconnects: Family<ZdsLabels, Counter>,
    /// The standard Istio metrics (`istio_` prefix).
    pub(crate) istio: IstioMetrics,
    /// Tasks alive in the proxy's runtime, read at every scrape (a leak shows here).
    tasks_alive: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Arc<Self> {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("meshwire");
        let connections = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "connections",
            "Connections proxied, by direction, security and SPIFFE identities (empty when unknown)",
            connections.clone(),
        );
        let bytes = Family::<TrafficLabels, Counter>::default();
        registry.register(
            "bytes",
            "Bytes carried through the proxy (sent plus received), by direction and security",
            bytes.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed on the HBONE port or towards an HBONE peer",
            tls_handshake_failures.clone(),
        );
        let policy_denials = Counter::default();
        registry.register(
            "policy_denials",
            "Inbound connections refused by L4 authorization",
            policy_denials.clone(),
        );
        let certificate_expiry = Family::<IdentityLabels, Gauge>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Expiry (unix time, seconds) of the workload certificate held for each identity",
            certificate_expiry.clone(),
        );
        let connection_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "connection_failures",
            "Connections the proxy accepted but could not carry, by direction and reason",
            connection_failures.clone(),
        );
        let active_connections = Family::<TrafficLabels, Gauge>::default();
        registry.register(
            "active_connections",
            "Connections being proxied now",
            active_connections.clone(),
        );
        // Every (direction, security) pair exists from the start, so readers see 0, not nothing.
        for direction in [Direction::Outbound, Direction::Inbound] {
            for security in [Security::Mtls, Security::Plaintext] {
                let _ = bytes.get_or_create(&TrafficLabels {
                    direction,
                    security,
                });
            }
        }
        let pods = Gauge::default();
        registry.register(
            "proxied_pods",
            "Pods whose listeners this proxy holds",
            pods.clone(),
        );
        let dropped = Family::<DroppedLabels, Counter>::default();
        registry.register(
            "connections_dropped",
            "Connections closed before they were served, by listener (hbone, http) and reason (shed, refused, timeout)",
            dropped.clone(),
        );
        let zds_disconnects = Family::<ZdsLabels, Counter>::default();
        registry.register(
            "zds_disconnects",
            "ZDS connections to the agent that ended or could not be made, by reason (unreadable message, protocol error, connection); the proxy reconnects",
            zds_disconnects.clone(),
        );
        let tasks_alive = Gauge::default();
        registry.register(
            "tasks_alive",
            "Tasks alive in the proxy's async runtime when the metrics were read",
            tasks_alive.clone(),
        );
        let istio = IstioMetrics::default();
        istio.register(root.sub_registry_with_prefix("istio"));
        Arc::new(Self {
            registry: root,
            istio,
            tasks_alive,
            connections,
            bytes,
            tls_handshake_failures,
            policy_denials,
            certificate_expiry,
            connection_failures,
            active_connections,
            pods,
            dropped,
            zds_disconnects,
        })
    }

    /// Counts a ZDS connection that ended (or was never made) because of `error`.
    pub(crate) fn zds_disconnected(&self, error: &meshwire_zds::client::ClientError) {
        use meshwire_zds::client::ClientError;
        use meshwire_zds::session::CloseReason;
        let reason = match error {
            ClientError::Closed(CloseReason::Read(_)) => "unreadable message",
            ClientError::Closed(CloseReason::Protocol(_)) => "protocol error",
            _ => "connection",
        };
        self.zds_disconnects
            .get_or_create(&ZdsLabels { reason })
            .inc();
    }

    /// Counts a connection closed before it was served.
    pub(crate) fn connection_dropped(&self, listener: &'static str, reason: &'static str) {
        self.dropped
            .get_or_create(&DroppedLabels { listener, reason })
            .inc();
    }

    /// Encodes every metric in the OpenMetrics text format (ends with `# EOF`).
    pub(crate) fn encode(&self) -> String {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let alive = rt.metrics().num_alive_tasks();
            self.tasks_alive
                .set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing into a String cannot fail; an error would mean a broken label encoder.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }

    /// Records the expiry of the certificate now held for `identity` (in
    /// `meshwire_certificate_expiry_timestamp_seconds` and `istio_cert_expiry_seconds`).
    pub(crate) fn set_certificate_expiry(&self, identity: &str, not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.certificate_expiry
            .get_or_create(&IdentityLabels {
                identity: identity.to_owned(),
            })
            .set(secs);
        self.istio
            .cert_expiry
            .get_or_create(&CertLabels {
                identity: identity.to_owned(),
            })
            .set(secs);
    }

    /// Forgets the certificate of `identity` (no pod on this node uses it any more).
    pub(crate) fn remove_certificate(&self, identity: &str) {
        self.certificate_expiry.remove(&IdentityLabels {
            identity: identity.to_owned(),
        });
        self.istio.cert_expiry.remove(&CertLabels {
            identity: identity.to_owned(),
        });
    }

    pub(crate) fn connection_failed(&self, direction: Direction, reason: &'static str) {
        self.connection_failures
            .get_or_create(&FailureLabels { direction, reason })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn names_and_labels_match_the_contract() {
        let m = Metrics::new();
        m.connections
            .get_or_create(&ConnectionLabels {
                direction: Direction::Outbound,
                security: Security::Mtls,
                source_identity: "spiffe://cluster.local/ns/shop/sa/client".into(),
                destination_identity: "spiffe://cluster.local/ns/shop/sa/server".into(),
            })
            .inc();
        m.connections
            .get_or_create(&ConnectionLabels {
                direction: Direction::Inbound,
                security: Security::Plaintext,
                source_identity: String::new(),
                destination_identity: String::new(),
            })
            .inc();
        m.bytes
            .get_or_create(&TrafficLabels {
                direction: Direction::Inbound,
                security: Security::Plaintext,
            })
            .inc_by(42);
        m.tls_handshake_failures.inc();
        m.policy_denials.inc_by(2);
        m.set_certificate_expiry(
            "spiffe://cluster.local/ns/shop/sa/client",
            UNIX_EPOCH + Duration::from_secs(1_900_000_000),
        );
        let text = m.encode();
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(
            has(
                "meshwire_connections_total{direction=\"outbound\",security=\"mtls\",source_identity=\"spiffe://cluster.local/ns/shop/sa/client\",destination_identity=\"spiffe://cluster.local/ns/shop/sa/server\"} 1"
            ),
            "{text}"
        );
        assert!(
            has(
                "meshwire_connections_total{direction=\"inbound\",security=\"plaintext\",source_identity=\"\",destination_identity=\"\"} 1"
            ),
            "{text}"
        );
        assert!(
            has("meshwire_bytes_total{direction=\"inbound\",security=\"plaintext\"} 42"),
            "{text}"
        );
        assert!(has("meshwire_tls_handshake_failures_total 1"), "{text}");
        assert!(has("meshwire_policy_denials_total 2"), "{text}");
        assert!(
            has(
                "meshwire_certificate_expiry_timestamp_seconds{identity=\"spiffe://cluster.local/ns/shop/sa/client\"} 1900000000"
            ),
            "{text}"
        );
        assert!(
            has(
                "istio_cert_expiry_seconds{identity=\"spiffe://cluster.local/ns/shop/sa/client\"} 1900000000"
            ),
            "{text}"
        );
        assert!(has("# UNIT istio_cert_expiry_seconds seconds"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");

        m.remove_certificate("spiffe://cluster.local/ns/shop/sa/client");
        let text = m.encode();
        assert!(!text.contains("meshwire_certificate_expiry_timestamp_seconds{"));
        assert!(!text.contains("istio_cert_expiry_seconds{"));
    }

    #[test]
    fn unused_counters_are_still_exposed() {
        // The demo reads these even before anything was proxied.
        let text = Metrics::new().encode();
        assert!(
            text.contains("\nmeshwire_tls_handshake_failures_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("\nmeshwire_policy_denials_total 0\n"),
            "{text}"
        );
        for direction in ["outbound", "inbound"] {
            for security in ["mtls", "plaintext"] {
                let line = format!(
                    "\nmeshwire_bytes_total{{direction=\"{direction}\",security=\"{security}\"}} 0\n"
                );
                assert!(text.contains(&line), "{line} missing in {text}");
            }
        }
    }

    #[tokio::test]
    async fn tasks_alive_follows_the_runtime() {
        let m = Metrics::new();
        let value = |text: &str| -> i64 {
            text.lines()
                .find_map(|l| l.strip_prefix("meshwire_tasks_alive "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(-1)
        };
        let before = value(&m.encode());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let held = tokio::spawn(async move {
            let _ = rx.await;
        });
        let during = value(&m.encode());
        assert_eq!(during, before + 1, "one more task alive");
        let _ = tx.send(());
        held.await.unwrap();
        assert_eq!(value(&m.encode()), before);
    }
}
