//! The certificate service's authorizer: recognise the calling proxy's node, then apply
//! [`auth::authorize`] to the current workloads.

use std::sync::Arc;

use meshwire_svid::service::server::{AuthorizationRequest, Denial};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::ca::auth::{self, CallerInfo, CallerPolicy, Requested};
use crate::desired::Settings;
use crate::metrics::Metrics;
use crate::workloads::Cluster;

/// Decides certificate requests against the latest workloads file.
#[derive(Debug, Clone)]
pub(crate) struct NodeAuthorizer {
    pub(crate) cluster: watch::Receiver<Arc<Cluster>>,
    pub(crate) settings: Settings,
    pub(crate) callers: CallerPolicy,
    pub(crate) metrics: Arc<Metrics>,
}

impl NodeAuthorizer {
    pub(crate) fn decide(&self, req: &AuthorizationRequest) -> Result<(), Denial> {
        let caller = CallerInfo {
            remote: req.remote_addr,
            bearer_token: req.bearer_token.clone(),
            client_identity: req.peer_identity.as_ref().map(ToString::to_string),
        };
        let node = self.callers.caller_node(&caller, &self.settings);
        let Some(istio) = req.requested.istio() else {
            self.metrics.failure("certificate_denied");
            warn!(identity = %req.requested, "certificate request denied: not an Istio workload identity");
            return Err(Denial::PermissionDenied(format!(
                "{} is not of the form spiffe://<td>/ns/<ns>/sa/<sa>",
                req.requested
            )));
        };
        let requested = Requested {
            trust_domain: istio.trust_domain().as_str(),
            namespace: istio.namespace(),
            service_account: istio.service_account(),
        };
        let cluster = self.cluster.borrow().clone();
        match auth::authorize(&cluster, &self.settings, node.as_deref(), &requested) {
            Ok(()) => {
                self.metrics.certificates_issued.inc();
                info!(
                    identity = %req.requested,
                    node = node.as_deref().unwrap_or("-"),
                    caller = ?req.remote_addr,
                    "signing workload certificate"
                );
                Ok(())
            }
            Err(denial) => {
                self.metrics.failure("certificate_denied");
                warn!(
                    identity = %req.requested,
                    node = node.as_deref().unwrap_or("-"),
                    caller = ?req.remote_addr,
                    reason = %denial,
                    "certificate request denied"
                );
                Err(match denial {
                    auth::Denial::UnknownCaller => Denial::Unauthenticated(denial.to_string()),
                    other => Denial::PermissionDenied(other.to_string()),
                })
            }
        }
    }
}

impl meshwire_svid::service::server::Authorizer for NodeAuthorizer {
    fn authorize(
        &self,
        request: &AuthorizationRequest,
    ) -> impl Future<Output = Result<(), Denial>> + Send {
        std::future::ready(self.decide(request))
    }
}
