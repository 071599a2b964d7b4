//! The test API server: a real etcd and kube-apiserver start, accept the admin token,
//! store objects and enforce RBAC, and the API server can be stopped and restarted.

// Helpers outside #[test] functions: a failed step should abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use testbed::KubeApiServer;

#[test]
fn api_server_stores_objects_and_enforces_rbac() {
    let mut kube = KubeApiServer::start().unwrap();

    let (status, body) = kube.request("GET", "/version", None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"gitVersion\": \"v1.37.2\"") || body.contains("v1.37.2"),
        "{body}"
    );

    let ns = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"shop","labels":{"io.cilium/mtls-enabled":"true"}}}"#;
    let (status, body) = kube
        .request("POST", "/api/v1/namespaces", Some(ns))
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = kube
        .request("GET", "/api/v1/namespaces/shop", None)
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("io.cilium/mtls-enabled"), "{body}");

    // A service account token with audience istio-ca, reviewed by the server.
    let sa = r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"client","namespace":"shop"}}"#;
    let (status, body) = kube
        .request("POST", "/api/v1/namespaces/shop/serviceaccounts", Some(sa))
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let tr = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"audiences":["istio-ca"],"expirationSeconds":600}}"#;
    let (status, body) = kube
        .request(
            "POST",
            "/api/v1/namespaces/shop/serviceaccounts/client/token",
            Some(tr),
        )
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let token = body
        .split("\"token\":")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(1))
        .expect("token in TokenRequest response")
        .to_owned();
    let review = format!(
        r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{token}","audiences":["istio-ca"]}}}}"#
    );
    let (status, body) = kube
        .request(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(&review),
        )
        .unwrap();
    assert_eq!(status, 201, "{body}");
    assert!(body.contains("\"authenticated\":true"), "{body}");
    assert!(body.contains("system:serviceaccount:shop:client"), "{body}");

    // The same token for another audience is refused.
    let review = review.replace("istio-ca", "someone-else");
    let (_, body) = kube
        .request(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(&review),
        )
        .unwrap();
    assert!(!body.contains("\"authenticated\":true"), "{body}");

    // An outage: nothing answers; after the restart the objects are still there.
    kube.stop_apiserver();
    assert!(
        kube.request("GET", "/api/v1/namespaces/shop", None)
            .is_err()
    );
    kube.start_apiserver().unwrap();
    let (status, body) = kube
        .request("GET", "/api/v1/namespaces/shop", None)
        .unwrap();
    assert_eq!(status, 200, "{body}");
}
