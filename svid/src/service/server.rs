//! The certificate service: a tonic implementation of
//! `istio.v1.auth.IstioCertificateService/CreateCertificate` backed by a
//! [`CertificateAuthority`] and an [`Authorizer`], and [`serve_tls`] to run it alone.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::ca::{CaError, CertificateAuthority, verify_csr};
use crate::id::SpiffeId;
use crate::service::pb::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use crate::service::pb::{IstioCertificateRequest, IstioCertificateResponse};
use crate::service::{CLUSTER_ID_HEADER, IMPERSONATED_IDENTITY_KEY};
use crate::tls::PeerInfo;

mod stats;

pub use stats::{ServiceStats, StatsHandle};

/// What a request says about its caller, known before its CSR is read: the input of
/// [`Authorizer::authenticate`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct Credentials {
    /// The SPIFFE ID of the caller's verified client certificate, if it presented one.
    pub peer_identity: Option<SpiffeId>,
    /// The bearer token of the `authorization` header, if any (the scheme is matched
    /// case-insensitively, RFC 6750).
    pub bearer_token: Option<String>,
    /// The `clusterid` header, if any.
    pub cluster_id: Option<String>,
    /// The caller's address, when the connection was accepted through
    /// [`tls::incoming`](crate::tls::incoming) or plain TCP.
    pub remote_addr: Option<SocketAddr>,
}

impl Credentials {
    /// The credentials of a gRPC request: its connection's [`PeerInfo`] (address and verified
    /// client identity), its `authorization: Bearer` token and its `clusterid` header.
    pub fn of_request<T>(request: &Request<T>) -> Self {
        let peer = request.extensions().get::<PeerInfo>();
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let bearer_token = header("authorization").and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
        Self {
            peer_identity: peer.and_then(|p| p.peer_identity.clone()),
            bearer_token,
            cluster_id: header(CLUSTER_ID_HEADER),
            remote_addr: peer
                .map(|p| p.remote_addr)
                .or_else(|| request.remote_addr()),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("peer_identity", &self.peer_identity)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("cluster_id", &self.cluster_id)
            .field("remote_addr", &self.remote_addr)
            .finish()
    }
}

/// A certificate request whose caller is authenticated and whose CSR is verified: the input
/// of [`Authorizer::authorize`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthorizationRequest {
    /// The identity requested by the CSR's single URI SAN.
    pub requested: SpiffeId,
    /// The `ImpersonatedIdentity` metadata, if present (then equal to `requested`): the
    /// caller asks on behalf of a workload rather than for itself.
    pub impersonated: Option<SpiffeId>,
    /// The lifetime the caller asked for (`validity_duration`), before the CA's cap.
    pub requested_ttl: Option<Duration>,
    /// The caller's credentials, as [`Authorizer::authenticate`] saw them.
    pub credentials: Credentials,
}

/// Why an authorizer refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denial {
    /// The caller could not be authenticated (gRPC `UNAUTHENTICATED`).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known but may not have the identity (gRPC `PERMISSION_DENIED`).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The authorizer cannot decide now, e.g. its identity provider is unreachable (gRPC
    /// `UNAVAILABLE`: the caller may retry).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl From<Denial> for Status {
    fn from(d: Denial) -> Self {
        match d {
            Denial::Unauthenticated(m) => Self::unauthenticated(m),
            Denial::PermissionDenied(m) => Self::permission_denied(m),
            Denial::Unavailable(m) => Self::unavailable(m),
        }
    }
}

/// Decides, per request, who the caller is and whether it may have the requested identity.
///
/// The service asks in two steps so that nothing is spent on a caller it cannot
/// authenticate: [`authenticate`](Authorizer::authenticate) runs before the CSR is parsed or
/// its signature checked, and a denial there ends the request; only then is the CSR
/// verified and [`authorize`](Authorizer::authorize) asked about the identity it names.
/// Both may be asynchronous (a token review, a pod lookup).
pub trait Authorizer: Send + Sync + 'static {
    /// What authentication establishes about a caller (a node name, say), handed to
    /// [`authorize`](Authorizer::authorize).
    type Caller: Send + Sync;

    /// Recognises the caller from its credentials alone, or refuses it (usually with
    /// [`Denial::Unauthenticated`]).
    fn authenticate(
        &self,
        credentials: &Credentials,
    ) -> impl Future<Output = Result<Self::Caller, Denial>> + Send;

    /// `Ok(())` approves `request.requested` for the authenticated `caller`.
    fn authorize(
        &self,
        caller: &Self::Caller,
        request: &AuthorizationRequest,
    ) -> impl Future<Output = Result<(), Denial>> + Send;
}

/// Settings of a [`CertificateService`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CertificateServiceConfig {
    /// Lifetime used when a request has no positive `validity_duration`. The CA's
    /// [`max_ttl`](crate::ca::CaConfig::max_ttl) still caps it. Default: 24 hours.
    pub default_ttl: Duration,
}

impl Default for CertificateServiceConfig {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// The certificate service. Turn it into a tonic service with
/// [`CertificateService::into_server`] and add it to a router (beside an xDS service, for
/// example), or run it alone with [`serve_tls`].
///
/// Per request it first asks the [`Authorizer`] to authenticate the caller; then it verifies
/// the CSR's self-signature, takes the requested identity from the CSR's single URI SAN,
/// checks it against the `ImpersonatedIdentity` metadata, asks the [`Authorizer`] whether
/// the caller may have it, and signs a leaf carrying only that identity.
pub struct CertificateService<A> {
    ca: Arc<CertificateAuthority>,
    authorizer: A,
    config: CertificateServiceConfig,
    stats: StatsHandle,
}

impl<A> fmt::Debug for CertificateService<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateService")
            .field("ca", &self.ca)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<A: Authorizer> CertificateService<A> {
    /// A service signing with `ca`, asking `authorizer` about every request.
    pub fn new(ca: Arc<CertificateAuthority>, authorizer: A) -> Self {
        Self::with_config(ca, authorizer, CertificateServiceConfig::default())
    }

    /// Like [`CertificateService::new`] with explicit settings.
    pub fn with_config(
        ca: Arc<CertificateAuthority>,
        authorizer: A,
        config: CertificateServiceConfig,
    ) -> Self {
        Self {
            ca,
            authorizer,
            config,
            stats: StatsHandle::default(),
        }
    }

    /// The service's counters by outcome (issued, unauthenticated, malformed, denied…), as a
    /// handle that keeps counting after [`into_server`](Self::into_server).
    pub fn stats(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// The generated tonic server wrapper, ready for `Server::builder().add_service(..)`.
    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }

    async fn handle(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<IstioCertificateResponse, Status> {
        let credentials = Credentials::of_request(&request);
        // Authenticate before any work on the request's body.
        let caller = match self.authorizer.authenticate(&credentials).await {
            Ok(caller) => caller,
            Err(denial) => {
                tracing::info!(caller = ?credentials.remote_addr, %denial, "certificate request from an unauthenticated caller");
                return Err(denial.into());
            }
        };
        let body = request.into_inner();

        let csr_der = CertificateSigningRequestDer::from_pem_slice(body.csr.as_bytes())
            .map_err(|e| Status::invalid_argument(format!("CSR is not PEM: {e}")))?;
        let csr =
            verify_csr(csr_der.as_ref()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let requested = match csr.uris.as_slice() {
            [one] => SpiffeId::new(one).map_err(|e| {
                Status::invalid_argument(format!("CSR URI SAN {one:?} is not a SPIFFE ID: {e}"))
            })?,
            other => {
                return Err(Status::invalid_argument(format!(
                    "CSR must carry exactly one URI SAN, found {}",
                    other.len()
                )));
            }
        };
        let impersonated = impersonated_identity(body.metadata.as_ref())?;
        if let Some(imp) = &impersonated
            && imp != &requested
        {
            return Err(Status::invalid_argument(format!(
                "ImpersonatedIdentity {imp} differs from the CSR identity {requested}"
            )));
        }
        let requested_ttl = u64::try_from(body.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let authz = AuthorizationRequest {
            requested,
            impersonated,
            requested_ttl,
            credentials,
        };
        if let Err(denial) = self.authorizer.authorize(&caller, &authz).await {
            tracing::info!(identity = %authz.requested, caller = ?authz.credentials.remote_addr, %denial, "certificate request denied");
            return Err(denial.into());
        }
        let ttl = requested_ttl.unwrap_or(self.config.default_ttl);
        let chain = self
            .ca
            .sign_csr(&body.csr, &authz.requested, ttl)
            .map_err(|e| match e {
                CaError::CsrPem(_)
                | CaError::CsrParse(_)
                | CaError::CsrSignature
                | CaError::CsrKey(_)
                | CaError::IdentityMismatch { .. }
                | CaError::EmptyPath(_) => Status::invalid_argument(e.to_string()),
                CaError::ForeignTrustDomain { .. } => Status::permission_denied(e.to_string()),
                other => {
                    tracing::warn!(error = %other, "signing failed");
                    Status::internal("signing failed")
                }
            })?;
        tracing::debug!(identity = %authz.requested, "certificate issued");
        Ok(IstioCertificateResponse { cert_chain: chain })
    }
}

fn impersonated_identity(
    metadata: Option<&prost_types::Struct>,
) -> Result<Option<SpiffeId>, Status> {
    let Some(value) = metadata.and_then(|m| m.fields.get(IMPERSONATED_IDENTITY_KEY)) else {
        return Ok(None);
    };
    match &value.kind {
        Some(prost_types::value::Kind::StringValue(s)) => SpiffeId::new(s)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("ImpersonatedIdentity {s:?}: {e}"))),
        _ => Err(Status::invalid_argument(
            "ImpersonatedIdentity must be a string",
        )),
    }
}

#[tonic::async_trait]
impl<A: Authorizer> IstioCertificateService for CertificateService<A> {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let result = self.handle(request).await;
        self.stats.record(&result);
        result.map(Response::new)
    }
}

/// Runs `service` alone over TLS on `listener` (through [`tls::incoming`](crate::tls::incoming))
/// until `shutdown` completes.
pub async fn serve_tls<A: Authorizer>(
    service: CertificateService<A>,
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(crate::tls::incoming(listener, config), shutdown)
        .await
}
