//! The HTTP server behind the proxy's own endpoints: Prometheus metrics (15020, served here),
//! readiness (15021, [`crate::readiness`]) and admin (127.0.0.1:15000, [`crate::admin`]).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::DumpFn;
pub(crate) use crate::http_gate::{HttpGate, HttpLimits};
use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// Which set of paths a listener serves.
#[derive(Clone)]
pub(crate) enum Endpoint {
    Metrics(Arc<Metrics>),
    Readiness(Arc<Readiness>),
    Admin {
        dump: DumpFn,
        shutdown: CancellationToken,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Metrics(_) => "Endpoint::Metrics",
            Self::Readiness(_) => "Endpoint::Readiness",
            Self::Admin { .. } => "Endpoint::Admin",
        })
    }
}

/// Body of every response.
pub(crate) type Body = Full<Bytes>;

/// A `text/plain` response.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

impl Endpoint {
    fn handle(&self, req: &Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        match self {
            Self::Metrics(metrics) => match path {
                "/metrics" | "/stats/prometheus" => {
                    let mut resp = text(StatusCode::OK, metrics.encode());
                    resp.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    resp
                }
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            },
            Self::Readiness(readiness) => readiness.handle(req),
            Self::Admin { dump, shutdown } => crate::admin::handle(req, dump, shutdown),
        }
    }
}

/// Binds `addr`; when it is the IPv6 wildcard and the host has no IPv6, falls back to the IPv4
/// wildcard on the same port.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() && ipv6_unavailable(&e) => {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
            tracing::warn!(%addr, fallback = %v4, error = %e, "IPv6 unavailable, binding IPv4");
            TcpListener::bind(v4)
                .await
                .with_context(|| format!("binding {v4}"))
        }
        Err(e) => Err(e).with_context(|| format!("binding {addr}")),
    }
}

fn ipv6_unavailable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == 97 /* EAFNOSUPPORT */ || code == 99 /* EADDRNOTAVAIL */)
}

/// Serves `endpoint` on `listener` until `stop` fires, within the limits of `gate` (which
/// listeners may share); open connections are then closed gracefully.
pub(crate) async fn serve(
    listener: TcpListener,
    endpoint: Endpoint,
    gate: HttpGate,
    stop: CancellationToken,
) {
    let endpoint = Arc::new(endpoint);
    let tracker = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of fds and the like: back off instead of spinning.
                    tracing::warn!(error = %e, ?endpoint, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let endpoint = endpoint.clone();
        let stop = stop.clone();
        let gate = gate.clone();
        tracker.spawn(async move {
            let handle = move |req: Request<Incoming>| {
                let resp = endpoint.handle(&req);
                async move { resp }
            };
            gate.serve(stream, handle, stop).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub(crate) async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (status, body)
    }

    pub(crate) async fn start(
        endpoint: Endpoint,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        start_gated(endpoint, HttpGate::new(HttpLimits::default(), |_| {})).await
    }

    async fn start_gated(
        endpoint: Endpoint,
        gate: HttpGate,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(l, endpoint, gate, stop.clone()));
        (addr, stop, task)
    }

    /// A metrics endpoint behind a gate with these limits, counting drops in its metrics.
    async fn gated_metrics(
        max_connections: usize,
        header_read_timeout: std::time::Duration,
    ) -> (SocketAddr, Arc<Metrics>, CancellationToken) {
        let metrics = Metrics::new();
        let counted = metrics.clone();
        let gate = HttpGate::new(
            HttpLimits {
                max_connections,
                header_read_timeout,
            },
            move |d| counted.connection_dropped("http", d.as_str()),
        );
        let (addr, stop, _task) = start_gated(Endpoint::Metrics(metrics.clone()), gate).await;
        (addr, metrics, stop)
    }

    fn dropped(metrics: &Metrics, reason: &str) -> bool {
        metrics.encode().lines().any(|l| {
            l.starts_with("meshwire_connections_dropped_total{")
                && l.contains(&format!("reason=\"{reason}\""))
                && l.ends_with(" 1")
        })
    }

    #[tokio::test]
    async fn a_connection_without_request_headers_is_closed_at_the_header_timeout() {
        let (addr, metrics, stop) = gated_metrics(16, std::time::Duration::from_millis(300)).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // Half a request line, then nothing.
        silent.write_all(b"GET /met").await.unwrap();
        assert!(
            crate::test_support::closed_by_proxy(&mut silent, std::time::Duration::from_secs(10))
                .await
        );
        assert!(dropped(&metrics, "timeout"), "{}", metrics.encode());
        stop.cancel();
    }

    /// Sends `bytes` and returns the status line the server answered with before closing.
    async fn answer_to(addr: SocketAddr, bytes: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The server may answer and close before it has read everything.
        let _ = s.write_all(bytes).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    #[tokio::test]
    async fn malformed_and_oversized_requests_are_answered_counted_and_closed() {
        let (addr, metrics, stop) = gated_metrics(16, std::time::Duration::from_secs(10)).await;
        let garbage = answer_to(addr, b"\x16\x03\x01\x00\x05hello\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage:?}");
        assert!(dropped(&metrics, "malformed"), "{}", metrics.encode());
        let big = format!(
            "GET /metrics HTTP/1.1\r\nhost: x\r\nx-padding: {}\r\n\r\n",
            "p".repeat(64 * 1024)
        );
        let oversized = answer_to(addr, big.as_bytes()).await;
        assert!(oversized.starts_with("HTTP/1.1 431"), "{oversized:?}");
        let twice = "meshwire_connections_dropped_total{listener=\"http\",reason=\"malformed\"} 2";
        assert!(
            metrics.encode().lines().any(|l| l == twice),
            "{}",
            metrics.encode()
        );
        assert_eq!(request(addr, "GET", "/metrics").await.0, 200);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_request_sheds_the_oldest_silent_connection_when_full() {
        let (addr, metrics, stop) = gated_metrics(2, std::time::Duration::from_secs(60)).await;
        let mut oldest = TcpStream::connect(addr).await.unwrap();
        let mut younger = TcpStream::connect(addr).await.unwrap();
        let (code, _) = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            request(addr, "GET", "/metrics"),
        )
        .await
        .expect("request locked out by silent connections");
        assert_eq!(code, 200);
        assert!(
            crate::test_support::closed_by_proxy(&mut oldest, std::time::Duration::from_secs(10))
                .await
        );
        assert!(
            !crate::test_support::closed_by_proxy(
                &mut younger,
                std::time::Duration::from_millis(200)
            )
            .await
        );
        assert!(dropped(&metrics, "shed"), "{}", metrics.encode());
        stop.cancel();
    }

    #[tokio::test]
    async fn metrics_on_both_paths() {
        let metrics = Metrics::new();
        metrics.policy_denials.inc();
        let (addr, stop, task) = start(Endpoint::Metrics(metrics)).await;
        for path in ["/metrics", "/stats/prometheus"] {
            let (code, body) = request(addr, "GET", path).await;
            assert_eq!(code, 200);
            assert!(body.contains("meshwire_policy_denials_total 1"), "{body}");
        }
        stop.cancel();
        task.await.unwrap();
    }
}
