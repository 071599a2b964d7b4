//! Who is calling: the one authentication step the CA and xDS share.
//!
//! A caller is the proxy of a node when it presents, in order: a client certificate
//! `spiffe://<trust domain>/node/<node>`; a bearer token of `--proxy-tokens`; a projected
//! service-account token that a TokenReview admits ([`TokenReviewer`], Kubernetes mode);
//! or, in file-source demo mode only, when it calls from this netns's loopback. Every
//! refusal is logged and counted in `meshwire_agent_caller_refusals_total{endpoint,reason}`.
//!
//! | reason | gRPC status | meaning |
//! |---|---|---|
//! | `no_credentials` | `UNAUTHENTICATED` | no certificate, no token (and no trusted loopback) |
//! | `invalid_token` | `UNAUTHENTICATED` | unknown token, or the API server rejects it (expired, wrong audience, its pod deleted) |
//! | `untrusted_account` | `PERMISSION_DENIED` | the token's user is not a trusted node proxy service account |
//! | `not_pod_bound` | `PERMISSION_DENIED` | the token is not bound to a pod |
//! | `pod_mismatch` | `UNAUTHENTICATED` | the token's pod is gone, was replaced, or runs as another account |
//! | `review_failed` | `UNAVAILABLE` | the API server could not be asked |
//! | `other_node` | `PERMISSION_DENIED` | (CA) no pod with the identity runs on the caller's node |
//! | `not_enrolled` | `PERMISSION_DENIED` | (CA) the identity's pods are not enrolled |
//! | `foreign_identity` | `PERMISSION_DENIED` | (CA) not an identity of this trust domain |

use std::borrow::Cow;
use std::sync::Arc;

use meshwire_svid::service::server::{Credentials, Denial};
use tracing::warn;

use crate::ca::auth::CallerPolicy;
use crate::ca::tokenreview::TokenReviewer;
use crate::desired::Settings;
use crate::metrics::Metrics;

/// Why a caller was refused: the `reason` label of the refusal counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    NoCredentials,
    InvalidToken,
    UntrustedAccount,
    NotPodBound,
    PodMismatch,
    ReviewFailed,
    OtherNode,
    NotEnrolled,
    ForeignIdentity,
}

impl Reason {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NoCredentials => "no_credentials",
            Self::InvalidToken => "invalid_token",
            Self::UntrustedAccount => "untrusted_account",
            Self::NotPodBound => "not_pod_bound",
            Self::PodMismatch => "pod_mismatch",
            Self::ReviewFailed => "review_failed",
            Self::OtherNode => "other_node",
            Self::NotEnrolled => "not_enrolled",
            Self::ForeignIdentity => "foreign_identity",
        }
    }
}

/// A refusal: its reason and the message the caller gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) reason: Reason,
    pub(crate) message: String,
}

impl Refusal {
    pub(crate) fn new(reason: Reason, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reason,
            message: message.into().into_owned(),
        }
    }

    /// The gRPC answer.
    pub(crate) fn denial(&self) -> Denial {
        let message = self.message.clone();
        match self.reason {
            Reason::NoCredentials | Reason::InvalidToken | Reason::PodMismatch => {
                Denial::Unauthenticated(message)
            }
            Reason::ReviewFailed => Denial::Unavailable(message),
            Reason::UntrustedAccount
            | Reason::NotPodBound
            | Reason::OtherNode
            | Reason::NotEnrolled
            | Reason::ForeignIdentity => Denial::PermissionDenied(message),
        }
    }
}

/// Which endpoint refused: the `endpoint` label of the refusal counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// The certificate service.
    Ca,
    /// Workload xDS.
    Xds,
}

impl Endpoint {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ca => "ca",
            Self::Xds => "xds",
        }
    }
}

/// Recognises node proxies for the CA and xDS alike.
#[derive(Debug)]
pub(crate) struct Authenticator {
    /// Certificates, static tokens and (demo mode) loopback.
    pub(crate) policy: CallerPolicy,
    /// Kubernetes mode: the reviewer of projected tokens.
    pub(crate) reviewer: Option<TokenReviewer>,
    pub(crate) settings: Settings,
    pub(crate) metrics: Arc<Metrics>,
}

impl Authenticator {
    /// The node whose proxy `caller` is; a refusal is logged and counted for `endpoint`.
    pub(crate) async fn node(
        &self,
        caller: &Credentials,
        endpoint: Endpoint,
    ) -> Result<String, Refusal> {
        self.recognise(caller)
            .await
            .map_err(|refusal| self.refused(refusal, caller, endpoint))
    }

    async fn recognise(&self, caller: &Credentials) -> Result<String, Refusal> {
        if let (Some(reviewer), Some(token)) = (&self.reviewer, &caller.bearer_token)
            && !self.policy.tokens.contains_key(token)
            && self
                .policy
                .certificate_node(caller, &self.settings)
                .is_none()
        {
            return reviewer.node_of(token).await;
        }
        self.policy
            .caller_node(caller, &self.settings)
            .ok_or_else(|| match caller.bearer_token {
                Some(_) => Refusal::new(
                    Reason::InvalidToken,
                    "caller is not recognised as a node proxy: unknown token",
                ),
                None => Refusal::new(
                    Reason::NoCredentials,
                    "caller is not recognised as a node proxy: present a node client \
                     certificate or a proxy token",
                ),
            })
    }

    /// Logs and counts `refusal` of `caller` at `endpoint`; returns it.
    pub(crate) fn refused(
        &self,
        refusal: Refusal,
        caller: &Credentials,
        endpoint: Endpoint,
    ) -> Refusal {
        self.metrics
            .refusal(endpoint.as_str(), refusal.reason.as_str());
        warn!(
            endpoint = endpoint.as_str(),
            reason = refusal.reason.as_str(),
            caller = ?caller.remote_addr,
            token = caller.bearer_token.is_some(),
            certificate = ?caller.peer_identity,
            "caller refused: {}",
            refusal.message
        );
        refusal
    }
}
