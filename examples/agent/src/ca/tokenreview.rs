//! Kubernetes callers: the proxy's projected service-account token, checked with a
//! TokenReview (as istiod's node authorizer does), names the proxy's pod, and that pod's
//! `spec.nodeName` is the node whose identities the caller may have.
//!
//! A caller is admitted when, in order:
//! 1. the API server authenticates the token for one of the configured audiences
//!    (`TOKEN_AUDIENCES`, default `istio-ca`);
//! 2. the user is `system:serviceaccount:<ns>:<sa>` with `<ns>/<sa>` in the trusted list
//!    (`CA_TRUSTED_NODE_ACCOUNTS`; empty: nobody);
//! 3. the token is bound to a pod (the review's `authentication.kubernetes.io/pod-name` and
//!    `pod-uid` extras), that pod exists with that uid and service account, and it is
//!    scheduled on a node.
//!
//! Admissions are remembered for [`CACHE_TTL`] (at most [`CACHE_CAPACITY`] tokens), so a
//! proxy that asks for many certificates costs one review; a deleted proxy pod therefore
//! keeps its admission for at most that long. At most [`MAX_CONCURRENT_REVIEWS`] reviews run
//! at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use tracing::debug;

use crate::ca::authn::{Reason, Refusal};

/// How long an admitted token is remembered.
pub(crate) const CACHE_TTL: Duration = Duration::from_secs(30);

/// How many admitted tokens are remembered at most.
pub(crate) const CACHE_CAPACITY: usize = 256;

/// How many reviews (with their pod reads) run at once; more callers wait, so a flood of
/// bogus tokens costs the API server at most this many requests at a time.
pub(crate) const MAX_CONCURRENT_REVIEWS: usize = 4;

/// The audience proxy tokens are checked for when none is configured (upstream's default).
pub(crate) const DEFAULT_AUDIENCE: &str = "istio-ca";

/// Extra of a pod-bound service-account token: the pod's name.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// Extra of a pod-bound service-account token: the pod's uid.
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// A service account, `namespace/name`.
pub(crate) type Account = (String, String);

/// Parses `ns/sa,ns/sa,…` (blanks around entries ignored; an empty list is allowed).
pub(crate) fn parse_accounts(text: &str) -> Result<BTreeSet<Account>, String> {
    let mut out = BTreeSet::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                out.insert((ns.to_owned(), sa.to_owned()));
            }
            _ => return Err(format!("{entry:?} is not a <namespace>/<service-account>")),
        }
    }
    Ok(out)
}

/// Checks proxy tokens against the API server.
pub(crate) struct TokenReviewer {
    client: kube::Client,
    audiences: Vec<String>,
    trusted: BTreeSet<Account>,
    cache: Mutex<HashMap<String, Admitted>>,
    reviews: tokio::sync::Semaphore,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audiences", &self.audiences)
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

/// A remembered admission.
#[derive(Debug, Clone)]
struct Admitted {
    node: String,
    until: Instant,
}

impl TokenReviewer {
    /// A reviewer asking `client`'s API server, for tokens of `audiences` (none, or only
    /// empty ones: the default audience), admitting the `trusted` accounts.
    pub(crate) fn new(
        client: kube::Client,
        audiences: Vec<String>,
        trusted: BTreeSet<Account>,
    ) -> Self {
        let audiences: Vec<String> = audiences.into_iter().filter(|a| !a.is_empty()).collect();
        let audiences = if audiences.is_empty() {
            vec![DEFAULT_AUDIENCE.to_owned()]
        } else {
            audiences
        };
        Self {
            client,
            audiences,
            trusted,
            cache: Mutex::new(HashMap::new()),
            reviews: tokio::sync::Semaphore::new(MAX_CONCURRENT_REVIEWS),
        }
    }

    /// The node of the proxy pod `token` belongs to, or why it is refused.
    pub(crate) async fn node_of(&self, token: &str) -> Result<String, Refusal> {
        if let Some(node) = self.cached(token) {
            return Ok(node);
        }
        let _permit = self
            .reviews
            .acquire()
            .await
            .map_err(|_| Refusal::new(Reason::ReviewFailed, "token reviews are shut down"))?;
        // A review of the same token may have finished while this one waited.
        if let Some(node) = self.cached(token) {
            return Ok(node);
        }
        let node = self.review(token).await?;
        self.remember(token, &node);
        Ok(node)
    }

    fn cached(&self, token: &str) -> Option<String> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(token)
            .filter(|a| a.until > Instant::now())
            .map(|a| a.node.clone())
    }

    fn remember(&self, token: &str, node: &str) {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, a| a.until > now);
        }
        if cache.len() >= CACHE_CAPACITY {
            // Still full of live entries: start over rather than grow.
            cache.clear();
        }
        cache.insert(
            token.to_owned(),
            Admitted {
                node: node.to_owned(),
                until: now + CACHE_TTL,
            },
        );
    }

    async fn review(&self, token: &str) -> Result<String, Refusal> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(self.audiences.clone()),
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::new(Reason::ReviewFailed, format!("TokenReview failed: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .unwrap_or_else(|| "not authenticated".to_owned());
            return Err(Refusal::new(
                Reason::InvalidToken,
                format!(
                    "the token is not valid for audiences {:?}: {why}",
                    self.audiences
                ),
            ));
        }
        let user = status.user.unwrap_or_default();
        let (namespace, account) = service_account(&user)?;
        if !self.trusted.contains(&(namespace.clone(), account.clone())) {
            return Err(Refusal::new(
                Reason::UntrustedAccount,
                format!(
                    "service account {namespace}/{account} is not a trusted node proxy account"
                ),
            ));
        }
        let (pod_name, pod_uid) = bound_pod(&user).ok_or_else(|| {
            Refusal::new(
                Reason::NotPodBound,
                "the token is not bound to a pod (use a projected service-account token)",
            )
        })?;
        let pod = Api::<Pod>::namespaced(self.client.clone(), &namespace)
            .get_opt(&pod_name)
            .await
            .map_err(|e| {
                Refusal::new(
                    Reason::ReviewFailed,
                    format!("reading pod {namespace}/{pod_name}: {e}"),
                )
            })?
            .ok_or_else(|| {
                Refusal::new(
                    Reason::PodMismatch,
                    format!("the token's pod {namespace}/{pod_name} no longer exists"),
                )
            })?;
        node_of_pod(&pod, &namespace, &account, &pod_name, &pod_uid)
    }
}

/// `(namespace, name)` of a `system:serviceaccount:<ns>:<sa>` user.
fn service_account(user: &UserInfo) -> Result<Account, Refusal> {
    let name = user.username.as_deref().unwrap_or_default();
    name.strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .map(|(ns, sa)| (ns.to_owned(), sa.to_owned()))
        .ok_or_else(|| {
            Refusal::new(
                Reason::UntrustedAccount,
                format!("{name:?} is not a service account"),
            )
        })
}

/// The pod name and uid a token is bound to, from the review's extras.
fn bound_pod(user: &UserInfo) -> Option<(String, String)> {
    let extra = user.extra.as_ref()?;
    let one = |key: &str| {
        extra
            .get(key)
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    Some((one(POD_NAME_EXTRA)?, one(POD_UID_EXTRA)?))
}

/// The node of `pod`, after checking it is the token's pod: same uid, same service account.
fn node_of_pod(
    pod: &Pod,
    namespace: &str,
    account: &str,
    name: &str,
    uid: &str,
) -> Result<String, Refusal> {
    if pod.metadata.uid.as_deref() != Some(uid) {
        return Err(Refusal::new(
            Reason::PodMismatch,
            format!("pod {namespace}/{name} was replaced since the token was issued"),
        ));
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.service_account_name.as_deref()) != Some(account) {
        return Err(Refusal::new(
            Reason::PodMismatch,
            format!("pod {namespace}/{name} does not run as {namespace}/{account}"),
        ));
    }
    let node = spec
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Refusal::new(
                Reason::PodMismatch,
                format!("pod {namespace}/{name} is not scheduled on a node"),
            )
        })?;
    debug!(pod = %format!("{namespace}/{name}"), %node, "proxy token reviewed");
    Ok(node)
}

#[cfg(test)]
mod tests;
