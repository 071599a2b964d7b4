//! Readiness (`/healthz/ready` on 15021): ready once xDS is synced and the agent's ZDS
//! snapshot has been received.

use std::sync::atomic::{AtomicBool, Ordering};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::http::{Body, text};

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

    /// Answers one request on the readiness port.
    pub(crate) fn handle(&self, req: &Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            "/healthz/ready" => match self.missing() {
                None => text(StatusCode::OK, "ready\n"),
                Some(missing) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {missing}\n"),
                ),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Endpoint;
    use crate::http::tests::{request, start};
    use std::sync::Arc;

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
}
