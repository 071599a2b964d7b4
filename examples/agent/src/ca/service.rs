//! The certificate service's authorizer: recognise the calling proxy's node, then apply
//! [`auth::authorize`] to the current workloads.

use std::sync::Arc;

use meshwire_svid::service::server::{AuthorizationRequest, Credentials, Denial};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::ca::auth::{self, CallerPolicy, Requested};
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
    /// The node whose proxy is calling, or an `UNAUTHENTICATED` denial; decided before the
    /// request's CSR is read.
    pub(crate) fn recognise(&self, caller: &Credentials) -> Result<String, Denial> {
        self.callers
            .caller_node(caller, &self.settings)
            .ok_or_else(|| {
                self.metrics.failure("certificate_denied");
                warn!(caller = ?caller.remote_addr, "certificate request denied: caller is not recognised as a node proxy");
                Denial::Unauthenticated(auth::Denial::UnknownCaller.to_string())
            })
    }

    /// Whether the proxy of `node` may have the identity `req` asks for.
    pub(crate) fn decide(&self, node: &str, req: &AuthorizationRequest) -> Result<(), Denial> {
        let caller = req.credentials.remote_addr;
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
        match auth::authorize(&cluster, &self.settings, Some(node), &requested) {
            Ok(()) => {
                self.metrics.certificates_issued.inc();
                info!(identity = %req.requested, node, ?caller, "signing workload certificate");
                Ok(())
            }
            Err(denial) => {
                self.metrics.failure("certificate_denied");
                warn!(
                    identity = %req.requested,
                    node,
                    ?caller,
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
    type Caller = String;

    fn authenticate(
        &self,
        credentials: &Credentials,
    ) -> impl Future<Output = Result<String, Denial>> + Send {
        std::future::ready(self.recognise(credentials))
    }

    fn authorize(
        &self,
        node: &String,
        request: &AuthorizationRequest,
    ) -> impl Future<Output = Result<(), Denial>> + Send {
        std::future::ready(self.decide(node, request))
    }
}
