//! Prometheus metrics and the small HTTP server that exposes them on `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::http_gate::HttpGate;

mod ca_requests;

use crate::reconcile::Outcome;
pub(crate) use ca_requests::CaRequests;

/// Label set of the failure counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CauseLabel {
    pub(crate) cause: String,
}

/// Label set of the caller refusal counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusalLabels {
    /// `ca` or `xds`.
    pub(crate) endpoint: String,
    /// Why (see `crate::ca::authn`).
    pub(crate) reason: String,
}

/// Every metric the agent exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// `meshwire_agent_enrollments_total`: pods that became advertised as HBONE.
    pub(crate) enrollments: Counter,
    /// `meshwire_agent_unenrollments_total`: pods fully released.
    pub(crate) unenrollments: Counter,
    /// `meshwire_agent_enrolled_pods`: pods of this node advertised as HBONE now.
    pub(crate) enrolled_pods: Gauge,
    /// `meshwire_agent_failures_total{cause}`.
    pub(crate) failures: Family<CauseLabel, Counter>,
    /// `meshwire_agent_connected_proxies`: ZDS connections.
    pub(crate) connected_proxies: Gauge,
    /// `meshwire_agent_xds_nacks_total`: xDS responses a proxy rejected.
    pub(crate) xds_nacks: Counter,
    /// `meshwire_agent_xds_subscribers`: open xDS streams.
    pub(crate) xds_subscribers: Gauge,
    /// `meshwire_agent_rule_repairs_total`: rule drift found and repaired.
    pub(crate) rule_repairs: Counter,
    /// `meshwire_agent_proxy_resends_total`: pods re-sent to a proxy that had lost them.
    pub(crate) proxy_resends: Counter,
    /// `meshwire_agent_certificates_issued_total`.
    pub(crate) certificates_issued: Counter,
    /// `meshwire_agent_workloads_reloads_total`: accepted versions of the workloads file.
    pub(crate) workloads_reloads: Counter,
    /// `meshwire_agent_caller_refusals_total{endpoint,reason}`: CA and xDS requests refused.
    pub(crate) caller_refusals: Family<RefusalLabels, Counter>,
    /// `meshwire_agent_certificate_requests_total{outcome}`, from the certificate service.
    pub(crate) ca_requests: CaRequests,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            enrollments: Counter::default(),
            unenrollments: Counter::default(),
            enrolled_pods: Gauge::default(),
            failures: Family::default(),
            connected_proxies: Gauge::default(),
            xds_nacks: Counter::default(),
            xds_subscribers: Gauge::default(),
            rule_repairs: Counter::default(),
            proxy_resends: Counter::default(),
            certificates_issued: Counter::default(),
            workloads_reloads: Counter::default(),
            caller_refusals: Family::default(),
            ca_requests: CaRequests::default(),
            registry: Registry::default(),
        };
        registry.register_collector(Box::new(m.ca_requests.clone()));
        registry.register(
            "meshwire_agent_enrollments",
            "Pods of this node that became enrolled (advertised as HBONE)",
            m.enrollments.clone(),
        );
        registry.register(
            "meshwire_agent_unenrollments",
            "Pods of this node that were unenrolled and released by the proxy",
            m.unenrollments.clone(),
        );
        registry.register(
            "meshwire_agent_enrolled_pods",
            "Pods of this node currently enrolled",
            m.enrolled_pods.clone(),
        );
        registry.register(
            "meshwire_agent_failures",
            "Failed steps by cause (netns, proxy_unavailable, proxy_nack, proxy_timeout, rules_install, rules_verify, rules_remove, workloads_file, kubernetes_watch, pod_annotation, certificate_denied, certificate_failed, xds_denied)",
            m.failures.clone(),
        );
        registry.register(
            "meshwire_agent_connected_proxies",
            "Proxies connected over ZDS",
            m.connected_proxies.clone(),
        );
        registry.register(
            "meshwire_agent_xds_nacks",
            "xDS responses rejected by a proxy",
            m.xds_nacks.clone(),
        );
        registry.register(
            "meshwire_agent_xds_subscribers",
            "Open xDS streams",
            m.xds_subscribers.clone(),
        );
        registry.register(
            "meshwire_agent_rule_repairs",
            "Redirection rule sets found drifted and repaired",
            m.rule_repairs.clone(),
        );
        registry.register(
            "meshwire_agent_proxy_resends",
            "Pods re-sent to a proxy that no longer held them",
            m.proxy_resends.clone(),
        );
        registry.register(
            "meshwire_agent_certificates_issued",
            "Workload certificates signed",
            m.certificates_issued.clone(),
        );
        registry.register(
            "meshwire_agent_workloads_reloads",
            "Versions of the workloads file accepted",
            m.workloads_reloads.clone(),
        );
        registry.register(
            "meshwire_agent_caller_refusals",
            "CA and xDS requests refused, by endpoint (ca, xds) and reason (no_credentials, invalid_token, untrusted_account, not_pod_bound, pod_mismatch, review_failed, other_node, not_enrolled, foreign_identity)",
            m.caller_refusals.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts a refused CA or xDS request.
    pub(crate) fn refusal(&self, endpoint: &str, reason: &str) {
        self.caller_refusals
            .get_or_create(&RefusalLabels {
                endpoint: endpoint.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The count of refusals at `endpoint` for `reason`.
    #[cfg(test)]
    pub(crate) fn refusals(&self, endpoint: &str, reason: &str) -> u64 {
        self.caller_refusals
            .get_or_create(&RefusalLabels {
                endpoint: endpoint.to_owned(),
                reason: reason.to_owned(),
            })
            .get()
    }

    /// Counts a failure with the given cause label.
    pub(crate) fn failure(&self, cause: &str) {
        self.failures
            .get_or_create(&CauseLabel {
                cause: cause.to_owned(),
            })
            .inc();
    }

    /// Records what one reconcile pass did.
    pub(crate) fn record(&self, outcome: &Outcome, enrolled_now: usize) {
        self.enrollments.inc_by(outcome.enrolled.len() as u64);
        self.unenrollments.inc_by(outcome.unenrolled.len() as u64);
        self.rule_repairs.inc_by(outcome.repaired.len() as u64);
        self.proxy_resends.inc_by(outcome.resent.len() as u64);
        for (_, e) in &outcome.failures {
            self.failure(e.cause.label());
        }
        self.enrolled_pods
            .set(i64::try_from(enrolled_now).unwrap_or(i64::MAX));
    }

    /// OpenMetrics text of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Serves `/metrics` until `shutdown` is cancelled, within the limits of `gate`.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    gate: HttpGate,
    shutdown: CancellationToken,
) {
    let addr = listener.local_addr().ok();
    info!(address = ?addr, "metrics endpoint listening on /metrics");
    loop {
        let (stream, _peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let handle = move |req: Request<Incoming>| {
                let resp = handle(&req, &metrics);
                async move { resp }
            };
            gate.serve(stream, handle, shutdown).await;
        });
    }
}

/// Binds the metrics listener.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn handle(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics" | "/stats/prometheus") => {
            *resp.body_mut() = Full::new(Bytes::from(metrics.encode()));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
        }
        (&Method::GET, "/healthz") => {
            *resp.body_mut() = Full::new(Bytes::from_static(b"ok\n"));
        }
        _ => *resp.status_mut() = StatusCode::NOT_FOUND,
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::{Cause, EffectError};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn names_match_the_contract() {
        let m = Metrics::new();
        m.record(
            &Outcome {
                enrolled: vec!["a".into(), "b".into()],
                failures: vec![("c".into(), EffectError::new(Cause::ProxyNack, "no"))],
                ..Outcome::default()
            },
            2,
        );
        m.connected_proxies.set(1);
        m.xds_nacks.inc();
        let text = m.encode();
        for line in [
            "meshwire_agent_enrollments_total 2",
            "meshwire_agent_enrolled_pods 2",
            "meshwire_agent_failures_total{cause=\"proxy_nack\"} 1",
            "meshwire_agent_connected_proxies 1",
            "meshwire_agent_xds_nacks_total 1",
            "meshwire_agent_unenrollments_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[tokio::test]
    async fn http_endpoint_serves_metrics() {
        let metrics = Arc::new(Metrics::new());
        metrics.enrollments.inc();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let gate = HttpGate::new(crate::http_gate::HttpLimits::default(), |_| {});
        let task = tokio::spawn(serve(listener, metrics, gate, shutdown.clone()));

        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).await.unwrap();
            body
        };
        let body = get("/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(
            body.contains("meshwire_agent_enrollments_total 1"),
            "{body}"
        );
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        shutdown.cancel();
        task.await.unwrap();
    }
}
