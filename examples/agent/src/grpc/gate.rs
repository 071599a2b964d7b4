//! The xDS gate on the TLS port: a service around the ADS service that admits a stream only
//! when the [`Authenticator`] recognises its caller as a node proxy, by the same rules as
//! the CA (and asking the API server when it must).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use meshwire_svid::service::server::Credentials;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{BoxFuture, Service};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tracing::debug;

use crate::ca::authn::{Authenticator, Endpoint};

/// Wraps the ADS service `inner`: a caller that is not a node proxy gets its refusal
/// (`UNAUTHENTICATED`, `PERMISSION_DENIED` or `UNAVAILABLE`) before a single workload is
/// sent.
#[derive(Debug, Clone)]
pub(crate) struct XdsGate<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S> XdsGate<S> {
    pub(crate) fn new(inner: S, authenticator: Arc<Authenticator>) -> Self {
        Self {
            inner,
            authenticator,
        }
    }
}

impl<S: NamedService> NamedService for XdsGate<S> {
    const NAME: &'static str = S::NAME;
}

/// The credentials of an HTTP/2 request, as tonic would present them.
fn credentials(request: &Request<Body>) -> Credentials {
    let view = tonic::Request::from_parts(
        MetadataMap::from_headers(request.headers().clone()),
        request.extensions().clone(),
        (),
    );
    Credentials::of_request(&view)
}

impl<S> Service<Request<Body>> for XdsGate<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The ready service answers this request; a fresh clone waits for the next one.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let caller = credentials(&request);
            match authenticator.node(&caller, Endpoint::Xds).await {
                Ok(node) => {
                    debug!(%node, caller = ?caller.remote_addr, "xDS stream admitted");
                    inner.call(request).await
                }
                Err(refusal) => {
                    authenticator.metrics.failure("xds_denied");
                    Ok(tonic::Status::from(refusal.denial()).into_http())
                }
            }
        })
    }
}
