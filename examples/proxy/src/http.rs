//! The proxy's own HTTP endpoints: Prometheus metrics (15020), readiness (15021) and admin
//! (127.0.0.1:15000).

use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// What the readiness endpoint waits for.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    xds_synced: AtomicBool,
    zds_snapshot: AtomicBool,
}

impl Readiness {
    pub(crate) fn set_xds_synced(&self, synced: bool) {
        self.xds_synced.store(synced, Ordering::SeqCst);
    }
    pub(crate) fn set_zds_snapshot(&self, received: bool) {
        self.zds_snapshot.store(received, Ordering::SeqCst);
    }
    pub(crate) fn xds_synced(&self) -> bool {
        self.xds_synced.load(Ordering::SeqCst)
    }
    pub(crate) fn zds_snapshot(&self) -> bool {
        self.zds_snapshot.load(Ordering::SeqCst)
    }
    /// `None` when ready, else what is still missing.
    pub(crate) fn missing(&self) -> Option<String> {
        let mut missing = Vec::new();
        if !self.xds_synced() {
            missing.push("xDS not synced");
        }
        if !self.zds_snapshot() {
            missing.push("ZDS snapshot not received");
        }
        (!missing.is_empty()).then(|| missing.join(", "))
    }
}

/// Produces the JSON document served on `/config_dump`.
pub(crate) type DumpFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

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

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
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
            Self::Readiness(readiness) => match path {
                "/healthz/ready" => match readiness.missing() {
                    None => text(StatusCode::OK, "ready\n"),
                    Some(missing) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {missing}\n"),
                    ),
                },
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            },
            Self::Admin { dump, shutdown } => match (req.method(), path) {
                (&Method::GET, "/config_dump") => {
                    let body = serde_json::to_vec_pretty(&dump()).unwrap_or_default();
                    let mut resp = text(StatusCode::OK, body);
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    resp
                }
                (&Method::POST, "/quitquitquit") => {
                    tracing::info!("shutdown requested on /quitquitquit");
                    shutdown.cancel();
                    text(StatusCode::OK, "shutting down\n")
                }
                (_, "/quitquitquit") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
                (_, "/") => text(StatusCode::OK, "GET /config_dump\nPOST /quitquitquit\n"),
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            },
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
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
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

    async fn start(
        endpoint: Endpoint,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(l, endpoint, stop.clone()));
        (addr, stop, task)
    }

    #[tokio::test]
    async fn readiness_needs_xds_and_zds() {
        let readiness = Arc::new(Readiness::default());
        let (addr, stop, task) = start(Endpoint::Readiness(readiness.clone())).await;
        let (code, body) = request(addr, "GET", "/healthz/ready").await;
        assert_eq!(code, 503);
        assert!(
            body.contains("xDS not synced") && body.contains("ZDS snapshot"),
            "{body}"
        );
        readiness.set_xds_synced(true);
        let (code, body) = request(addr, "GET", "/healthz/ready").await;
        assert_eq!(code, 503);
        assert!(!body.contains("xDS"), "{body}");
        readiness.set_zds_snapshot(true);
        assert_eq!(request(addr, "GET", "/healthz/ready").await.0, 200);
        readiness.set_zds_snapshot(false);
        assert_eq!(request(addr, "GET", "/healthz/ready").await.0, 503);
        assert_eq!(request(addr, "GET", "/other").await.0, 404);
        stop.cancel();
        task.await.unwrap();
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

    #[tokio::test]
    async fn admin_dump_and_quit() {
        let shutdown = CancellationToken::new();
        let dump: DumpFn = Arc::new(|| serde_json::json!({"pods": [{"uid": "u1"}]}));
        let (addr, stop, task) = start(Endpoint::Admin {
            dump,
            shutdown: shutdown.clone(),
        })
        .await;
        let (code, body) = request(addr, "GET", "/config_dump").await;
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["pods"][0]["uid"], "u1");
        assert_eq!(request(addr, "GET", "/quitquitquit").await.0, 405);
        assert!(!shutdown.is_cancelled());
        assert_eq!(request(addr, "POST", "/quitquitquit").await.0, 200);
        assert!(shutdown.is_cancelled());
        stop.cancel();
        task.await.unwrap();
    }
}
