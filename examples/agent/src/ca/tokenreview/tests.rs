//! Proxy tokens against a real API server (etcd + kube-apiserver from `testbed`): the CA and
//! xDS of an in-process agent admit the trusted proxy account's pod-bound token and refuse
//! every other one, with the gRPC code and the counted reason of [`crate::ca::authn`].

use std::sync::Arc;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use meshwire_svid::SpiffeId;
use meshwire_svid::service::client::{CaClient, CaClientConfig, CaClientError, Token};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::*;
use crate::ca::auth::CallerPolicy;
use crate::ca::authn::Authenticator;
use crate::grpc::tests::{open_xds, serve_with};
use crate::metrics::Metrics;
use crate::workloads::Cluster;
use crate::workloads::tests::{EXAMPLE, settings};

const PROXY_NS: &str = "meshwire-system";
const PROXY_SA: &str = "meshwire-proxy";

async fn admin(api: &testbed::kube::KubeApiServer) -> kube::Client {
    let file = kube::config::Kubeconfig::read_from(api.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

async fn create<K>(api: Api<K>, object: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object).await.unwrap()
}

/// Creates pod `name` of `PROXY_NS` running as `account` on `node`; returns its uid.
async fn pod(client: &kube::Client, name: &str, account: &str, node: &str) -> String {
    let pod: Pod = create(
        Api::namespaced(client.clone(), PROXY_NS),
        json!({
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "serviceAccountName": account,
                "containers": [{"name": "proxy", "image": "proxy"}],
            },
        }),
    )
    .await;
    pod.metadata.uid.unwrap()
}

/// A token of `account` for `audience`, bound to the pod `bound` (`(name, uid)`) if given.
async fn token(
    client: &kube::Client,
    account: &str,
    audience: &str,
    bound: Option<(&str, &str)>,
) -> String {
    let mut spec = json!({"audiences": [audience], "expirationSeconds": 3600});
    if let Some((name, uid)) = bound {
        spec["boundObjectRef"] =
            json!({"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid});
    }
    let request: TokenRequest = serde_json::from_value(json!({ "spec": spec })).unwrap();
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), PROXY_NS)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap();
    issued.status.unwrap().token.unwrap()
}

/// Asks the CA at `channel` for `identity` with `token`.
async fn certificate(
    channel: &tonic::transport::Channel,
    token: Option<&str>,
    identity: &str,
) -> Result<(), Code> {
    let mut config = CaClientConfig::default();
    config.impersonate = true;
    config.token = token.map_or(Token::None, |t| Token::Static(t.to_owned()));
    let client = CaClient::new(channel.clone(), config);
    match client.fetch(&SpiffeId::new(identity).unwrap()).await {
        Ok(_) => Ok(()),
        Err(CaClientError::Status(status)) => Err(status.code()),
        Err(other) => panic!("{identity}: {other}"),
    }
}

const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/client"; // a pod on node-1
const SERVER: &str = "spiffe://cluster.local/ns/shop/sa/default"; // a pod on node-2

#[tokio::test]
async fn proxy_tokens_are_reviewed_by_the_api_server() {
    let mut api = testbed::kube::KubeApiServer::start().expect("test API server");
    let client = admin(&api).await;
    let _: Namespace = create(
        Api::all(client.clone()),
        json!({"metadata": {"name": PROXY_NS}}),
    )
    .await;
    for account in [PROXY_SA, "other"] {
        let _: ServiceAccount = create(
            Api::namespaced(client.clone(), PROXY_NS),
            json!({"metadata": {"name": account}}),
        )
        .await;
    }
    let a_uid = pod(&client, "proxy-a", PROXY_SA, "node-1").await;
    let b_uid = pod(&client, "proxy-b", PROXY_SA, "node-2").await;
    let other_uid = pod(&client, "intruder", "other", "node-1").await;
    let gone_uid = pod(&client, "proxy-gone", PROXY_SA, "node-1").await;

    let on_a = token(&client, PROXY_SA, "istio-ca", Some(("proxy-a", &a_uid))).await;
    let on_b = token(&client, PROXY_SA, "istio-ca", Some(("proxy-b", &b_uid))).await;
    let wrong_audience = token(&client, PROXY_SA, "other", Some(("proxy-a", &a_uid))).await;
    let untrusted = token(&client, "other", "istio-ca", Some(("intruder", &other_uid))).await;
    let unbound = token(&client, PROXY_SA, "istio-ca", None).await;
    let gone = token(
        &client,
        PROXY_SA,
        "istio-ca",
        Some(("proxy-gone", &gone_uid)),
    )
    .await;
    Api::<Pod>::namespaced(client.clone(), PROXY_NS)
        .delete("proxy-gone", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();

    let metrics = Arc::new(Metrics::new());
    let reviewer = TokenReviewer::new(
        client.clone(),
        // As `TOKEN_AUDIENCES=""` gives: the default audience, istio-ca.
        vec![String::new()],
        parse_accounts(&format!("{PROXY_NS}/{PROXY_SA}")).unwrap(),
    );
    let authenticator = Arc::new(Authenticator {
        policy: CallerPolicy::default(),
        reviewer: Some(reviewer),
        settings: settings("node-1"),
        metrics: metrics.clone(),
    });
    let shutdown = CancellationToken::new();
    let cluster = Cluster::from_yaml(EXAMPLE).unwrap();
    let (_, channel) = serve_with(authenticator, cluster, &shutdown).await;

    // The trusted proxy of node-1 gets the identities of node-1's pods, not node-2's.
    certificate(&channel, Some(&on_a), CLIENT)
        .await
        .expect("node-1's proxy gets a node-1 identity");
    assert_eq!(
        certificate(&channel, Some(&on_a), SERVER).await,
        Err(Code::PermissionDenied)
    );
    // node-2's proxy may not have node-1's identity.
    assert_eq!(
        certificate(&channel, Some(&on_b), CLIENT).await,
        Err(Code::PermissionDenied)
    );
    certificate(&channel, Some(&on_b), SERVER)
        .await
        .expect("node-2's proxy gets a node-2 identity");
    assert_eq!(metrics.refusals("ca", "other_node"), 2);

    // Refused callers, at the CA and at xDS.
    let refused = [
        (None, Code::Unauthenticated, "no_credentials"),
        (
            Some(&wrong_audience),
            Code::Unauthenticated,
            "invalid_token",
        ),
        (Some(&gone), Code::Unauthenticated, "invalid_token"),
        (
            Some(&untrusted),
            Code::PermissionDenied,
            "untrusted_account",
        ),
        (Some(&unbound), Code::PermissionDenied, "not_pod_bound"),
    ];
    for (token, code, reason) in refused {
        let before = metrics.refusals("ca", reason);
        assert_eq!(
            certificate(&channel, token.map(String::as_str), CLIENT).await,
            Err(code),
            "CA, {reason}"
        );
        assert_eq!(metrics.refusals("ca", reason), before + 1, "CA, {reason}");

        let before = metrics.refusals("xds", reason);
        let status = open_xds(&channel, token.map(String::as_str))
            .await
            .expect_err(reason);
        assert_eq!(status.code(), code, "xDS, {reason}: {status}");
        assert_eq!(metrics.refusals("xds", reason), before + 1, "xDS, {reason}");
    }
    open_xds(&channel, Some(&on_a))
        .await
        .expect("a trusted proxy's token opens an xDS stream");
    assert_eq!(metrics.refusals("xds", "other_node"), 0);

    // Admissions are remembered: with the API server down, a reviewed token still works and
    // a new one cannot be reviewed (UNAVAILABLE, the proxy retries).
    api.stop_apiserver();
    certificate(&channel, Some(&on_a), CLIENT)
        .await
        .expect("a remembered admission needs no review");
    let fresh = unbound.clone() + "x";
    assert_eq!(
        certificate(&channel, Some(&fresh), CLIENT).await,
        Err(Code::Unavailable)
    );
    assert_eq!(metrics.refusals("ca", "review_failed"), 1);
    shutdown.cancel();
}

#[test]
fn trusted_account_lists() {
    let parsed = parse_accounts(" a/b ,c/d,,").unwrap();
    assert_eq!(
        parsed.into_iter().collect::<Vec<_>>(),
        [("a".into(), "b".into()), ("c".into(), "d".into())]
    );
    assert!(parse_accounts("").unwrap().is_empty());
    for bad in ["a", "a/", "/b", "a/b/c", "a/b,c"] {
        assert!(parse_accounts(bad).is_err(), "{bad}");
    }
}

#[test]
fn pod_bound_users() {
    let user: UserInfo = serde_json::from_value(json!({
        "username": "system:serviceaccount:meshwire-system:meshwire-proxy",
        "extra": {
            "authentication.kubernetes.io/pod-name": ["proxy-a"],
            "authentication.kubernetes.io/pod-uid": ["u-1"],
        },
    }))
    .unwrap();
    assert_eq!(
        service_account(&user).unwrap(),
        ("meshwire-system".into(), "meshwire-proxy".into())
    );
    assert_eq!(bound_pod(&user), Some(("proxy-a".into(), "u-1".into())));
    for name in [
        "admin",
        "system:serviceaccount:ns",
        "system:serviceaccount:ns:a:b",
    ] {
        let user = UserInfo {
            username: Some(name.into()),
            ..Default::default()
        };
        assert_eq!(
            service_account(&user).map_err(|r| r.reason),
            Err(Reason::UntrustedAccount),
            "{name}"
        );
        assert_eq!(bound_pod(&user), None);
    }

    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "proxy-a", "uid": "u-1"},
        "spec": {"nodeName": "node-1", "serviceAccountName": "meshwire-proxy", "containers": []},
    }))
    .unwrap();
    let check = |sa: &str, uid: &str| {
        node_of_pod(&pod, "meshwire-system", sa, "proxy-a", uid).map_err(|r| r.reason)
    };
    assert_eq!(check("meshwire-proxy", "u-1"), Ok("node-1".into()));
    assert_eq!(check("meshwire-proxy", "u-2"), Err(Reason::PodMismatch));
    assert_eq!(check("other", "u-1"), Err(Reason::PodMismatch));
}

/// A stand-in API server that answers every request "not authenticated", each answer held
/// until `release` turns true; it counts the requests it is serving at once.
#[derive(Clone)]
struct Stalling {
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    total: Arc<std::sync::atomic::AtomicUsize>,
    release: tokio::sync::watch::Receiver<bool>,
}

impl tonic::codegen::Service<tonic::codegen::http::Request<kube::client::Body>> for Stalling {
    type Response = tonic::codegen::http::Response<http_body_util::Full<hyper::body::Bytes>>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Request<kube::client::Body>) -> Self::Future {
        use std::sync::atomic::Ordering::SeqCst;
        self.in_flight.fetch_add(1, SeqCst);
        self.total.fetch_add(1, SeqCst);
        let (in_flight, mut release) = (self.in_flight.clone(), self.release.clone());
        Box::pin(async move {
            release.wait_for(|r| *r).await.unwrap();
            in_flight.fetch_sub(1, SeqCst);
            let body = json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": ""},
                "status": {"authenticated": false, "error": "unknown token"},
            });
            Ok(tonic::codegen::http::Response::builder()
                .status(201)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(body.to_string().into()))
                .unwrap())
        })
    }
}

#[tokio::test]
async fn only_a_few_reviews_run_at_once() {
    use std::sync::atomic::Ordering::SeqCst;
    let (release, released) = tokio::sync::watch::channel(false);
    let api = Stalling {
        in_flight: Arc::default(),
        total: Arc::default(),
        release: released,
    };
    let reviewer = Arc::new(TokenReviewer::new(
        kube::Client::new(api.clone(), "default"),
        Vec::new(),
        parse_accounts("meshwire-system/meshwire-proxy").unwrap(),
    ));
    let callers = MAX_CONCURRENT_REVIEWS + 4;
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let reviewer = reviewer.clone();
            tokio::spawn(async move { reviewer.node_of(&format!("bogus-{i}")).await })
        })
        .collect();
    // On this single-threaded runtime, yielding lets every caller run as far as it can.
    while api.in_flight.load(SeqCst) < MAX_CONCURRENT_REVIEWS {
        tokio::task::yield_now().await;
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(api.in_flight.load(SeqCst), MAX_CONCURRENT_REVIEWS);
    release.send(true).unwrap();
    for task in tasks {
        let refused = task.await.unwrap().unwrap_err();
        assert_eq!(refused.reason, Reason::InvalidToken, "{}", refused.message);
    }
    assert_eq!(api.total.load(SeqCst), callers, "every caller was reviewed");
}
