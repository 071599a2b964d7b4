//! The test API server: a real etcd and kube-apiserver start, accept the admin token,
//! store objects and enforce RBAC, and the API server can be stopped and restarted; the
//! object helpers create what a kubelet and a user would, and a relay reaches the server
//! from inside a network namespace.

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

#[test]
fn objects_are_created_like_a_kubelet_would_and_a_proxy_token_is_pod_bound() {
    let kube = KubeApiServer::start().unwrap();
    let admin = kube.admin();
    admin.create_namespace("shop").unwrap();
    admin.create_namespace("shop").unwrap(); // already there: left as it is
    admin
        .label_namespace("shop", "io.cilium/mtls-enabled", Some("true"))
        .unwrap();
    let (_, body) = kube
        .request("GET", "/api/v1/namespaces/shop", None)
        .unwrap();
    assert!(body.contains("io.cilium/mtls-enabled"), "{body}");
    admin
        .label_namespace("shop", "io.cilium/mtls-enabled", None)
        .unwrap();
    let (_, body) = kube
        .request("GET", "/api/v1/namespaces/shop", None)
        .unwrap();
    assert!(!body.contains("io.cilium/mtls-enabled"), "{body}");

    admin.create_service_account("shop", "client").unwrap();
    let ip = "10.10.1.2".parse().unwrap();
    let uid = admin
        .create_pod("shop", "client-1", "client", "n1", ip)
        .unwrap();
    assert!(!uid.is_empty());
    let (_, body) = kube
        .request("GET", "/api/v1/namespaces/shop/pods/client-1", None)
        .unwrap();
    for want in [
        uid.as_str(),
        "\"podIP\":\"10.10.1.2\"",
        "\"phase\":\"Running\"",
    ] {
        assert!(body.contains(want), "{want} in {body}");
    }

    let account = testbed::kube::ProxyAccount::default();
    let token = admin.proxy_token(&account, "n1").unwrap();
    let review = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token, "audiences": [testbed::kube::objects::TOKEN_AUDIENCE]}
    });
    let (status, body) = kube
        .request(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(&review.to_string()),
        )
        .unwrap();
    assert_eq!(status, 201, "{body}");
    for want in [
        "\"authenticated\":true",
        "system:serviceaccount:meshwire-system:meshwire-proxy",
        "proxy-n1",
    ] {
        assert!(body.contains(want), "{want} in {body}");
    }
}

#[test]
fn a_relay_makes_the_api_server_reachable_inside_a_namespace() {
    let Some(_p) =
        testbed::require_privileged("a_relay_makes_the_api_server_reachable_inside_a_namespace")
    else {
        return;
    };
    let kube = KubeApiServer::start().unwrap();
    let ns = testbed::Namespace::new().unwrap();
    let port = kube.port();
    let ask = move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok::<_, std::io::Error>(out)
    };
    assert!(
        ns.run(ask).unwrap().is_err(),
        "nothing listens inside the namespace without the relay"
    );
    let relay = testbed::LoopbackRelay::start(&ns, port).unwrap();
    let answer = ns.run(ask).unwrap().unwrap();
    // Plain HTTP to the TLS port: the API server itself answers that it wants HTTPS.
    assert!(answer.contains("HTTPS server"), "{answer}");
    drop(relay);
}
