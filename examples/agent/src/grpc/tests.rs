use super::*;

use meshwire_xds_workload::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use meshwire_xds_workload::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio_stream::StreamExt as _;

use crate::ca::auth::CallerPolicy;
use crate::ca::authn::Authenticator;
use crate::ca::files;
use crate::metrics::Metrics;
use crate::workloads::Cluster;
use crate::workloads::tests::{EXAMPLE, settings};

#[tokio::test]
async fn a_stale_socket_is_replaced_and_other_files_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("xds.sock");
    let first = bind_unix(&path).unwrap();
    drop(first);
    let _second = bind_unix(&path).expect("stale socket replaced");

    let file = dir.path().join("file");
    std::fs::write(&file, "keep").unwrap();
    let e = bind_unix(&file).unwrap_err().to_string();
    assert!(e.contains("is not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
}

#[tokio::test]
async fn the_xds_socket_is_for_its_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xds.sock");
    let listener = bind_unix(&path).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    assert_eq!(meta.permissions().mode() & 0o7777, XDS_SOCKET_MODE);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["xds.sock"], "the private bind directory is gone");
    // The listener is reachable at the final path.
    let (accepted, connected) =
        tokio::join!(listener.accept(), tokio::net::UnixStream::connect(&path));
    accepted.unwrap();
    connected.unwrap();
}

/// Serves xDS and the CA over TLS on a loopback port with `callers`; returns a channel to it.
async fn serve(callers: CallerPolicy, shutdown: &CancellationToken) -> tonic::transport::Channel {
    let authenticator = Arc::new(Authenticator {
        policy: callers,
        reviewer: None,
        settings: settings("node-1"),
        metrics: Arc::new(Metrics::new()),
    });
    let cluster = Cluster::from_yaml(EXAMPLE).unwrap();
    serve_with(authenticator, cluster, shutdown).await.1
}

/// Serves xDS and the CA over TLS on a loopback port, recognising callers with
/// `authenticator` and authorizing them against `cluster`; returns the CA root (PEM) and a
/// channel to the server.
pub(crate) async fn serve_with(
    authenticator: Arc<Authenticator>,
    cluster: Cluster,
    shutdown: &CancellationToken,
) -> (String, tonic::transport::Channel) {
    let state = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("cluster.local").unwrap();
    let ca = files::load_or_create(None, None, state.path(), &td).unwrap();
    let root = ca.ca.root_pem();
    let tls = tls_config(&ca, &td).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_, cluster) = tokio::sync::watch::channel(Arc::new(cluster));
    let authorizer = NodeAuthorizer {
        cluster,
        authenticator: authenticator.clone(),
    };
    let service = CertificateService::new(Arc::new(ca.ca), authorizer);
    authenticator.metrics.ca_requests.watch(service.stats());
    tokio::spawn(serve_tls(
        listener,
        tls,
        AdsServer::default(),
        authenticator,
        service,
        shutdown.clone(),
    ));
    let client = meshwire_svid::tls::control_plane_client_config(
        meshwire_svid::provider::ring(),
        root.as_bytes(),
        None,
    )
    .unwrap();
    let channel =
        meshwire_svid::tls::channel(&format!("https://127.0.0.1:{port}"), Arc::new(client), None)
            .unwrap();
    (root, channel)
}

/// Opens a Delta ADS stream (with `authorization: Bearer <token>` if given); `Ok` once the
/// server accepted it.
pub(crate) async fn open_xds(
    channel: &tonic::transport::Channel,
    token: Option<&str>,
) -> Result<(), tonic::Status> {
    let first = DeltaDiscoveryRequest {
        type_url: meshwire_xds_workload::resource::ADDRESS_TYPE_URL.to_owned(),
        ..Default::default()
    };
    // Keep the request stream open, as a proxy does.
    let requests = tokio_stream::once(first).chain(tokio_stream::pending());
    let mut request = tonic::Request::new(requests);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
    tokio::time::timeout(
        Duration::from_secs(10),
        client.delta_aggregated_resources(request),
    )
    .await
    .expect("the server answers")
    .map(drop)
}

#[tokio::test]
async fn xds_admits_only_callers_the_ca_recognises() {
    let shutdown = CancellationToken::new();
    // Tokens required: the loopback is not trusted.
    let strict = CallerPolicy {
        tokens: CallerPolicy::parse_tokens("node-1 s3cret\n").unwrap(),
        trust_loopback: false,
    };
    let channel = serve(strict, &shutdown).await;
    for token in [None, Some("wrong")] {
        let refused = open_xds(&channel, token).await.unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::Unauthenticated,
            "token {token:?}: {refused}"
        );
        assert!(refused.message().contains("not recognised as a node proxy"));
    }
    open_xds(&channel, Some("s3cret"))
        .await
        .expect("a proxy token is admitted");

    // Demo mode: this node's loopback is its proxy, as for the CA.
    let demo = CallerPolicy {
        trust_loopback: true,
        ..CallerPolicy::default()
    };
    let channel = serve(demo, &shutdown).await;
    open_xds(&channel, None)
        .await
        .expect("a loopback caller is admitted in demo mode");
    shutdown.cancel();
}

#[tokio::test]
async fn malformed_certificate_requests_are_refused_and_counted() {
    use meshwire_svid::service::pb::IstioCertificateRequest;
    use meshwire_svid::service::pb::istio_certificate_service_client::IstioCertificateServiceClient;

    let metrics = Arc::new(Metrics::new());
    let authenticator = Arc::new(Authenticator {
        policy: CallerPolicy {
            trust_loopback: true,
            ..CallerPolicy::default()
        },
        reviewer: None,
        settings: settings("node-1"),
        metrics: metrics.clone(),
    });
    let shutdown = CancellationToken::new();
    let (_, channel) = serve_with(
        authenticator,
        Cluster::from_yaml(EXAMPLE).unwrap(),
        &shutdown,
    )
    .await;
    let mut ca = IstioCertificateServiceClient::new(channel);
    for csr in [
        "",
        "not a CSR",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        let e = ca
            .create_certificate(IstioCertificateRequest {
                csr: csr.to_owned(),
                validity_duration: 3600,
                metadata: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{csr:?}: {e:?}");
    }
    let text = metrics.encode();
    assert!(
        text.lines()
            .any(|l| l == "meshwire_agent_certificate_requests_total{outcome=\"malformed\"} 3"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "meshwire_agent_certificate_requests_total{outcome=\"issued\"} 0"),
        "{text}"
    );
    shutdown.cancel();
}
