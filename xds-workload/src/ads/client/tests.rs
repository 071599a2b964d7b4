//! Unit tests of the client: node identity, close classification, retained versions and
//! configuration checks.

use super::*;
use crate::pb::envoy::service::discovery::v3::Resource;
use crate::resource::ADDRESS_TYPE_URL;

#[test]
fn proxy_node_identity() {
    let node = NodeInfo::proxy("10.0.0.9".parse().unwrap(), "zt-1", "istio-system", "n1")
        .with_metadata("CLUSTER_ID", "c1")
        .to_proto();
    assert_eq!(
        node.id,
        "ztunnel~10.0.0.9~zt-1.istio-system~istio-system.svc.cluster.local"
    );
    let fields = node.metadata.unwrap().fields;
    let get = |k: &str| match fields.get(k).and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::StringValue(s)) => s,
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(get("NAME"), "zt-1");
    assert_eq!(get("NAMESPACE"), "istio-system");
    assert_eq!(get("INSTANCE_IPS"), "10.0.0.9");
    assert_eq!(get("NODE_NAME"), "n1");
    assert_eq!(get("CLUSTER_ID"), "c1");
    assert!(node.cluster.is_empty() && node.build_version.is_empty());
}

#[test]
fn normal_closes() {
    assert!(is_normal_close(&Status::unknown("x")));
    assert!(is_normal_close(&Status::cancelled("x")));
    assert!(is_normal_close(&Status::deadline_exceeded("x")));
    assert!(is_normal_close(&Status::unavailable(
        "transport is closing"
    )));
    assert!(is_normal_close(&Status::unavailable(
        "the connection received prior goaway: code: NO_ERROR"
    )));
    assert!(!is_normal_close(&Status::unavailable("connection refused")));
    assert!(!is_normal_close(&Status::internal("x")));
    assert!(!is_normal_close(&Status::permission_denied("x")));
}

#[tokio::test]
async fn versions_are_retained_only_for_subscribed_types() {
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
    let mut client = AdsClient::new(ClientConfig::default(), channel, |_: DeltaUpdate<'_>| {
        Vec::new()
    })
    .unwrap();
    let resource = |name: &str| Resource {
        name: name.to_owned(),
        version: "v1".to_owned(),
        ..Default::default()
    };
    for (type_url, name) in [(ADDRESS_TYPE_URL, "a"), ("type.example/Other", "b")] {
        let ack = client.on_response(DeltaDiscoveryResponse {
            type_url: type_url.to_owned(),
            nonce: "n".to_owned(),
            resources: vec![resource(name)],
            ..Default::default()
        });
        // Every response is acknowledged, known type or not.
        assert_eq!(ack.type_url, type_url);
        assert!(ack.error_detail.is_none());
    }
    assert_eq!(client.retained.len(), 1);
    assert_eq!(client.retained[ADDRESS_TYPE_URL]["a"], "v1");
}

#[tokio::test]
async fn invalid_headers_are_rejected() {
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
    let mut config = ClientConfig::default();
    config.headers.push(("bad header".into(), "v".into()));
    let err = AdsClient::new(config, channel.clone(), |_: DeltaUpdate<'_>| Vec::new()).unwrap_err();
    assert_eq!(
        err,
        ClientConfigError::InvalidHeaderName("bad header".into())
    );
    let config = ClientConfig {
        cluster_id: Some("bad\nvalue".into()),
        ..ClientConfig::default()
    };
    let err = AdsClient::new(config, channel.clone(), |_: DeltaUpdate<'_>| Vec::new()).unwrap_err();
    assert_eq!(
        err,
        ClientConfigError::InvalidHeaderValue("clusterid".into())
    );
    let mut config = ClientConfig::default();
    config.type_urls.clear();
    let err = AdsClient::new(config, channel, |_: DeltaUpdate<'_>| Vec::new()).unwrap_err();
    assert_eq!(err, ClientConfigError::NoTypeUrls);
}
