//! The HTTP server behind the proxy's own endpoints: Prometheus metrics (15020, served here),
//! readiness (15021, [`crate::readiness`]) and admin (127.0.0.1:15000, [`crate::admin`]).

use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::DumpFn;
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

/// Serves `endpoint` on `listener` until `stop` fires; open connections are then closed
/// gracefully.
pub(crate) async fn serve(listener: TcpListener, endpoint: Endpoint, stop: CancellationToken) {
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
        tracker.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = endpoint.handle(&req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res { tracing::debug!(error = %e, "http connection"); }
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
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
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(l, endpoint, stop.clone()));
        (addr, stop, task)
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
