//! The standard Istio TCP metrics, with the names, labels and label values ztunnel exports,
//! so Istio's Grafana dashboards and Kiali read this proxy like a ztunnel:
//! `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
//! `istio_tcp_received_bytes_total`, `istio_tcp_sent_bytes_total`, and the certificate expiry
//! `istio_cert_expiry_seconds`.
//!
//! Each connection is reported by the proxy that captured it: `reporter="source"` by the
//! client's proxy (outbound), `reporter="destination"` by the server's (inbound). A label
//! whose value is not known reads `unknown`. Bytes are counted in the direction Istio names
//! them: *received* is what the client sent towards the server, *sent* is what the server sent
//! back; both grow while the connection is open.

use std::fmt::{self, Write as _};

use meshwire_hbone::headers::WorkloadBaggage;
use meshwire_xds_workload::{Service, Workload};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// Which proxy reports a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reporter {
    /// The client's proxy (the outbound path).
    Source,
    /// The server's proxy (the inbound paths).
    Destination,
}

/// How the connection between the two proxies was secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SecurityPolicy {
    /// HBONE: mutual TLS with SPIFFE identities.
    MutualTls,
    /// Plain TCP.
    Unknown,
}

/// How a connection ended (Envoy's response flags, as ztunnel sets them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ResponseFlags {
    /// Carried (`-`).
    None,
    /// Refused by authorization (`DENY`).
    Deny,
    /// The upstream connection could not be made (`CONNECT`).
    Connect,
}

/// The only protocol this proxy reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Tcp;

fn write_label(encoder: &mut LabelValueEncoder<'_>, value: &str) -> fmt::Result {
    encoder.write_str(value)
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        write_label(
            encoder,
            match self {
                Self::Source => "source",
                Self::Destination => "destination",
            },
        )
    }
}

impl EncodeLabelValue for SecurityPolicy {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        write_label(
            encoder,
            match self {
                Self::MutualTls => "mutual_tls",
                Self::Unknown => "unknown",
            },
        )
    }
}

impl EncodeLabelValue for ResponseFlags {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        write_label(
            encoder,
            match self {
                Self::None => "-",
                Self::Deny => "DENY",
                Self::Connect => "CONNECT",
            },
        )
    }
}

impl EncodeLabelValue for Tcp {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        write_label(encoder, "tcp")
    }
}

/// A label value that reads `unknown` when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct OrUnknown(String);

impl From<&str> for OrUnknown {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for OrUnknown {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl EncodeLabelValue for OrUnknown {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        write_label(
            encoder,
            if self.0.is_empty() {
                "unknown"
            } else {
                &self.0
            },
        )
    }
}

/// The labels of the four TCP metrics, in ztunnel's order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TcpLabels {
    reporter: Reporter,

    source_workload: OrUnknown,
    source_canonical_service: OrUnknown,
    source_canonical_revision: OrUnknown,
    source_workload_namespace: OrUnknown,
    source_principal: OrUnknown,
    source_app: OrUnknown,
    source_version: OrUnknown,
    source_cluster: OrUnknown,

    destination_service: OrUnknown,
    destination_service_namespace: OrUnknown,
    destination_service_name: OrUnknown,

    destination_workload: OrUnknown,
    destination_canonical_service: OrUnknown,
    destination_canonical_revision: OrUnknown,
    destination_workload_namespace: OrUnknown,
    destination_principal: OrUnknown,
    destination_app: OrUnknown,
    destination_version: OrUnknown,
    destination_cluster: OrUnknown,

    request_protocol: Tcp,
    response_flags: ResponseFlags,
    connection_security_policy: SecurityPolicy,
}

impl TcpLabels {
    /// Labels with every workload and service label `unknown`.
    pub(crate) fn new(reporter: Reporter, security: SecurityPolicy) -> Self {
        Self {
            reporter,
            source_workload: OrUnknown::default(),
            source_canonical_service: OrUnknown::default(),
            source_canonical_revision: OrUnknown::default(),
            source_workload_namespace: OrUnknown::default(),
            source_principal: OrUnknown::default(),
            source_app: OrUnknown::default(),
            source_version: OrUnknown::default(),
            source_cluster: OrUnknown::default(),
            destination_service: OrUnknown::default(),
            destination_service_namespace: OrUnknown::default(),
            destination_service_name: OrUnknown::default(),
            destination_workload: OrUnknown::default(),
            destination_canonical_service: OrUnknown::default(),
            destination_canonical_revision: OrUnknown::default(),
            destination_workload_namespace: OrUnknown::default(),
            destination_principal: OrUnknown::default(),
            destination_app: OrUnknown::default(),
            destination_version: OrUnknown::default(),
            destination_cluster: OrUnknown::default(),
            request_protocol: Tcp,
            response_flags: ResponseFlags::None,
            connection_security_policy: security,
        }
    }

    /// The client workload as the control plane describes it. The principal is not taken
    /// from here: it is set only from an identity that is (or will be) proven by mutual TLS.
    pub(crate) fn source(mut self, w: &Workload) -> Self {
        self.source_workload = w.workload_name.as_str().into();
        self.source_canonical_service = w.canonical_name.as_str().into();
        self.source_canonical_revision = w.canonical_revision.as_str().into();
        self.source_workload_namespace = w.namespace.as_str().into();
        self.source_app = w.canonical_name.as_str().into();
        self.source_version = w.canonical_revision.as_str().into();
        self.source_cluster = w.cluster_id.as_str().into();
        self
    }

    /// The client as it describes itself in its HBONE `baggage` (used when the control plane
    /// does not know the client's address). As in ztunnel, `source_app` is the workload name.
    pub(crate) fn source_claims(mut self, b: &WorkloadBaggage) -> Self {
        let workload = b
            .workload
            .as_ref()
            .map(|(_, name)| name.clone())
            .unwrap_or_default();
        self.source_workload = workload.clone().into();
        self.source_canonical_service = b.service_name.clone().unwrap_or_default().into();
        self.source_canonical_revision = b.service_version.clone().unwrap_or_default().into();
        self.source_workload_namespace = b.namespace.clone().unwrap_or_default().into();
        self.source_app = workload.into();
        self.source_version = b.service_version.clone().unwrap_or_default().into();
        self.source_cluster = b.cluster.clone().unwrap_or_default().into();
        self
    }

    /// The client's SPIFFE ID (verified by mutual TLS).
    pub(crate) fn source_principal(mut self, principal: String) -> Self {
        self.source_principal = principal.into();
        self
    }

    /// The server workload, with its SPIFFE ID as the principal.
    pub(crate) fn destination(mut self, w: &Workload) -> Self {
        self.destination_workload = w.workload_name.as_str().into();
        self.destination_canonical_service = w.canonical_name.as_str().into();
        self.destination_canonical_revision = w.canonical_revision.as_str().into();
        self.destination_workload_namespace = w.namespace.as_str().into();
        self.destination_principal = w.identity().to_string().into();
        self.destination_app = w.canonical_name.as_str().into();
        self.destination_version = w.canonical_revision.as_str().into();
        self.destination_cluster = w.cluster_id.as_str().into();
        self
    }

    /// The service the connection was addressed to (or, inbound, the best guess of it).
    pub(crate) fn destination_service(mut self, s: &Service) -> Self {
        self.destination_service = s.hostname.as_str().into();
        self.destination_service_name = s.name.as_str().into();
        self.destination_service_namespace = s.namespace.as_str().into();
        self
    }
}

/// Labels of `istio_cert_expiry_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct CertLabels {
    pub(crate) identity: String,
}

/// The Istio metric families, registered under the `istio_` prefix.
#[derive(Debug, Clone, Default)]
pub(crate) struct IstioMetrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    received_bytes: Family<TcpLabels, Counter>,
    sent_bytes: Family<TcpLabels, Counter>,
    pub(crate) cert_expiry: Family<CertLabels, Gauge>,
}

impl IstioMetrics {
    /// Registers every family in `registry` (whose prefix is `istio`).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "tcp_connections_opened",
            "The total number of TCP connections opened",
            self.opened.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "The total number of TCP connections closed",
            self.closed.clone(),
        );
        registry.register(
            "tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
            self.received_bytes.clone(),
        );
        registry.register(
            "tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
            self.sent_bytes.clone(),
        );
        registry.register_with_unit(
            "cert_expiry",
            "Unix time (seconds) at which the workload certificate held for each identity expires",
            Unit::Seconds,
            self.cert_expiry.clone(),
        );
    }

    /// Counts a connection as opened; the returned value counts its bytes and, when dropped,
    /// counts it as closed.
    pub(crate) fn open(&self, labels: TcpLabels) -> TcpConnection {
        self.opened.get_or_create(&labels).inc();
        TcpConnection {
            received: self.received_bytes.get_or_create_owned(&labels),
            sent: self.sent_bytes.get_or_create_owned(&labels),
            closed: self.closed.clone(),
            labels,
        }
    }
}

/// One connection counted by the TCP metrics, from its opening to its end (drop).
#[derive(Debug)]
pub(crate) struct TcpConnection {
    labels: TcpLabels,
    closed: Family<TcpLabels, Counter>,
    /// Bytes from the client towards the server.
    pub(crate) received: Counter,
    /// Bytes from the server back to the client.
    pub(crate) sent: Counter,
}

impl TcpConnection {
    /// Records how the connection ended (it is counted as closed with these flags).
    pub(crate) fn set_flags(&mut self, flags: ResponseFlags) {
        self.labels.response_flags = flags;
    }
}

impl Drop for TcpConnection {
    fn drop(&mut self) {
        self.closed.get_or_create(&self.labels).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwire_xds_workload::pb::istio::workload as pbw;

    fn workload(name: &str, ns: &str, sa: &str) -> Workload {
        Workload::try_from(pbw::Workload {
            uid: format!("Kubernetes//Pod/{ns}/{name}-0"),
            name: format!("{name}-0"),
            namespace: ns.into(),
            service_account: sa.into(),
            addresses: vec![vec![10, 0, 0, 1].into()],
            workload_name: name.into(),
            canonical_name: name.into(),
            canonical_revision: "v1".into(),
            cluster_id: "Kubernetes".into(),
            ..Default::default()
        })
        .unwrap()
    }

    fn encode(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn names_labels_and_values_are_ztunnels() {
        let mut registry = Registry::default();
        let metrics = IstioMetrics::default();
        metrics.register(registry.sub_registry_with_prefix("istio"));
        let client = workload("client", "shop", "client");
        let server = workload("server", "shop", "server");
        let service = Service::try_from(pbw::Service {
            name: "server".into(),
            namespace: "shop".into(),
            hostname: "server.shop.svc.cluster.local".into(),
            ..Default::default()
        })
        .unwrap();
        let labels = TcpLabels::new(Reporter::Source, SecurityPolicy::MutualTls)
            .source(&client)
            .source_principal(client.identity().to_string())
            .destination(&server)
            .destination_service(&service);
        let mut conn = metrics.open(labels);
        conn.received.inc_by(5);
        conn.sent.inc_by(7);
        let text = encode(&registry);
        let want = "reporter=\"source\",\
            source_workload=\"client\",source_canonical_service=\"client\",\
            source_canonical_revision=\"v1\",source_workload_namespace=\"shop\",\
            source_principal=\"spiffe://cluster.local/ns/shop/sa/client\",\
            source_app=\"client\",source_version=\"v1\",source_cluster=\"Kubernetes\",\
            destination_service=\"server.shop.svc.cluster.local\",\
            destination_service_namespace=\"shop\",destination_service_name=\"server\",\
            destination_workload=\"server\",destination_canonical_service=\"server\",\
            destination_canonical_revision=\"v1\",destination_workload_namespace=\"shop\",\
            destination_principal=\"spiffe://cluster.local/ns/shop/sa/server\",\
            destination_app=\"server\",destination_version=\"v1\",\
            destination_cluster=\"Kubernetes\",request_protocol=\"tcp\",\
            response_flags=\"-\",connection_security_policy=\"mutual_tls\"";
        for (name, value) in [
            ("istio_tcp_connections_opened_total", 1),
            ("istio_tcp_received_bytes_total", 5),
            ("istio_tcp_sent_bytes_total", 7),
        ] {
            let line = format!("{name}{{{want}}} {value}");
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(
            !text.contains("istio_tcp_connections_closed_total{"),
            "{text}"
        );
        conn.set_flags(ResponseFlags::Connect);
        drop(conn);
        let text = encode(&registry);
        let closed = format!(
            "istio_tcp_connections_closed_total{{{}}} 1",
            want.replace("response_flags=\"-\"", "response_flags=\"CONNECT\"")
        );
        assert!(
            text.lines().any(|l| l == closed),
            "{closed} missing in\n{text}"
        );
    }

    #[test]
    fn unknown_peers_and_plaintext() {
        let mut registry = Registry::default();
        let metrics = IstioMetrics::default();
        metrics.register(registry.sub_registry_with_prefix("istio"));
        let mut claims = WorkloadBaggage::default();
        claims.namespace = Some("legacy".into());
        claims.workload = Some((
            meshwire_hbone::headers::WorkloadKind::Deployment,
            "old".into(),
        ));
        let labels = TcpLabels::new(Reporter::Destination, SecurityPolicy::Unknown)
            .source_claims(&claims)
            .destination(&workload("server", "shop", "server"));
        let mut conn = metrics.open(labels);
        conn.set_flags(ResponseFlags::Deny);
        drop(conn);
        let text = encode(&registry);
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_connections_closed_total{"))
            .unwrap_or_default();
        for part in [
            "reporter=\"destination\"",
            "source_workload=\"old\"",
            "source_app=\"old\"",
            "source_workload_namespace=\"legacy\"",
            "source_principal=\"unknown\"",
            "source_canonical_service=\"unknown\"",
            "source_cluster=\"unknown\"",
            "destination_service=\"unknown\"",
            "response_flags=\"DENY\"",
            "connection_security_policy=\"unknown\"",
        ] {
            assert!(line.contains(part), "{part} missing in {line}");
        }
    }
}
