//! The certificate service's authorizer: recognise the calling proxy's node
//! ([`Authenticator`]), then apply [`auth::authorize`] to the current workloads.

use std::sync::Arc;

use meshwire_svid::service::server::{AuthorizationRequest, Credentials, Denial};
use tokio::sync::watch;
use tracing::info;

use crate::ca::auth::{self, Requested};
use crate::ca::authn::{Authenticator, Endpoint, Reason, Refusal};
use crate::workloads::Cluster;

/// Decides certificate requests against the latest cluster.
#[derive(Debug, Clone)]
pub(crate) struct NodeAuthorizer {
    pub(crate) cluster: watch::Receiver<Arc<Cluster>>,
    pub(crate) authenticator: Arc<Authenticator>,
}

impl NodeAuthorizer {
    /// The node whose proxy is calling, or a denial; decided before the request's CSR is
    /// read.
    pub(crate) async fn recognise(&self, caller: &Credentials) -> Result<String, Denial> {
        self.authenticator
            .node(caller, Endpoint::Ca)
            .await
            .map_err(|r| {
                self.authenticator.metrics.failure("certificate_denied");
                r.denial()
            })
    }

    /// Whether the proxy of `node` may have the identity `req` asks for.
    pub(crate) fn decide(&self, node: &str, req: &AuthorizationRequest) -> Result<(), Denial> {
        let settings = &self.authenticator.settings;
        let metrics = &self.authenticator.metrics;
        let refuse = |reason: Reason, message: String| {
            metrics.failure("certificate_denied");
            let refusal = Refusal::new(
                reason,
                format!(
                    "{}: {message} (caller: proxy of node {node:?})",
                    req.requested
                ),
            );
            self.authenticator
                .refused(refusal, &req.credentials, Endpoint::Ca)
                .denial()
        };
        let Some(istio) = req.requested.istio() else {
            return Err(refuse(
                Reason::ForeignIdentity,
                "not of the form spiffe://<td>/ns/<ns>/sa/<sa>".to_owned(),
            ));
        };
        let requested = Requested {
            trust_domain: istio.trust_domain().as_str(),
            namespace: istio.namespace(),
            service_account: istio.service_account(),
        };
        let cluster = self.cluster.borrow().clone();
        match auth::authorize(&cluster, settings, Some(node), &requested) {
            Ok(()) => {
                metrics.certificates_issued.inc();
                info!(identity = %req.requested, node, caller = ?req.credentials.remote_addr, "signing workload certificate");
                Ok(())
            }
            Err(denial) => {
                let reason = match denial {
                    auth::Denial::UnknownCaller => Reason::NoCredentials,
                    auth::Denial::ForeignTrustDomain(_) => Reason::ForeignIdentity,
                    auth::Denial::NoPodOnNode { .. } => Reason::OtherNode,
                    auth::Denial::NotEnrolled => Reason::NotEnrolled,
                };
                Err(refuse(reason, denial.to_string()))
            }
        }
    }
}

impl meshwire_svid::service::server::Authorizer for NodeAuthorizer {
    type Caller = String;

    async fn authenticate(&self, credentials: &Credentials) -> Result<String, Denial> {
        self.recognise(credentials).await
    }

    fn authorize(
        &self,
        node: &String,
        request: &AuthorizationRequest,
    ) -> impl Future<Output = Result<(), Denial>> + Send {
        std::future::ready(self.decide(node, request))
    }
}
