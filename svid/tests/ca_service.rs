//! Loopback tests of the certificate service: the gRPC client obtains certificates from the
//! gRPC server over TLS on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshwire_svid::ca::{CaConfig, CertificateAuthority};
use meshwire_svid::manager::{CertificateManager, ManagerConfig, ManagerError, Priority};
use meshwire_svid::service::client::{CaClient, CaClientConfig, CaClientError, Token, make_csr};
use meshwire_svid::service::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use meshwire_svid::service::pb::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use meshwire_svid::service::pb::{IstioCertificateRequest, IstioCertificateResponse};
use meshwire_svid::service::server::{
    AuthorizationRequest, Authorizer, CertificateService, Credentials, Denial, StatsHandle,
    serve_tls,
};
use meshwire_svid::tls::{self, control_plane_client_config, control_plane_server_config};
use meshwire_svid::verify::SpiffeServerVerifier;
use meshwire_svid::x509::pem_encode;
use meshwire_svid::{IdentityPolicy, SpiffeId, TrustBundleSet, TrustDomain, X509Svid, provider};
use tokio::net::TcpListener;
use tonic::Code;

const TOKEN: &str = "node-token";

struct Harness {
    ca: Arc<CertificateAuthority>,
    port: u16,
    /// Every caller the authorizer was asked to authenticate.
    seen: Arc<Mutex<Vec<Credentials>>>,
    /// Every request the authorizer was asked to authorize.
    authorized: Arc<Mutex<Vec<AuthorizationRequest>>>,
    /// The service's counters.
    stats: StatsHandle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start() -> Harness {
    let td = TrustDomain::new("cluster.local").unwrap();
    let ca = Arc::new(CertificateAuthority::generate_root(&td, CaConfig::default()).unwrap());
    let (chain, key) = ca
        .issue_server_cert(
            &["localhost", "istiod.istio-system.svc"],
            &[
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            Duration::from_secs(3600),
        )
        .unwrap();
    let tls = control_plane_server_config(
        provider::default(),
        chain,
        key,
        Some((
            TrustBundleSet::from(ca.bundle()),
            IdentityPolicy::SameTrustDomain(td),
        )),
    )
    .unwrap();
    let authorizer = NodeAuthorizer::default();
    let (seen, authorized) = (authorizer.seen.clone(), authorizer.authorized.clone());
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = CertificateService::new(ca.clone(), authorizer);
    let stats = service.stats();
    tokio::spawn(async move {
        serve_tls(service, listener, Arc::new(tls), async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Harness {
        ca,
        port,
        seen,
        authorized,
        stats,
        _stop: stop,
    }
}

/// A node authorizer: the token must match; impersonation only into namespace "default";
/// namespace "forbidden" is never granted. It records what it was asked.
#[derive(Default)]
struct NodeAuthorizer {
    seen: Arc<Mutex<Vec<Credentials>>>,
    authorized: Arc<Mutex<Vec<AuthorizationRequest>>>,
}

impl Authorizer for NodeAuthorizer {
    type Caller = ();

    async fn authenticate(&self, credentials: &Credentials) -> Result<(), Denial> {
        self.seen.lock().unwrap().push(credentials.clone());
        if credentials.bearer_token.as_deref() != Some(TOKEN) {
            return Err(Denial::Unauthenticated("bad token".into()));
        }
        Ok(())
    }

    async fn authorize(&self, _: &(), req: &AuthorizationRequest) -> Result<(), Denial> {
        self.authorized.lock().unwrap().push(req.clone());
        let ns = req.requested.istio().map(|i| i.namespace().to_owned());
        if ns.as_deref() == Some("forbidden") {
            return Err(Denial::PermissionDenied(
                "namespace not on this node".into(),
            ));
        }
        if req.impersonated.is_some() && ns.as_deref() != Some("default") {
            return Err(Denial::Unauthenticated("impersonation refused".into()));
        }
        Ok(())
    }
}

impl Harness {
    /// The credentials of the most recent caller.
    fn last_seen(&self) -> Credentials {
        self.seen.lock().unwrap().pop().unwrap()
    }

    /// The most recent request that reached authorization.
    fn last_authorized(&self) -> AuthorizationRequest {
        self.authorized.lock().unwrap().pop().unwrap()
    }
}

/// A TLS channel to `https://<host>:<port>` that trusts `root_pem`, presents `own` if
/// given, and checks the server certificate for `server_name` (default: `host`).
fn channel(
    root_pem: &str,
    own: Option<&X509Svid>,
    host: &str,
    port: u16,
    server_name: Option<&str>,
) -> tonic::transport::Channel {
    let tls = control_plane_client_config(provider::default(), root_pem.as_bytes(), own).unwrap();
    tls::channel(
        &format!("https://{host}:{port}"),
        Arc::new(tls),
        server_name,
    )
    .unwrap()
}

fn client(h: &Harness, config: CaClientConfig, own: Option<&X509Svid>) -> CaClient {
    let channel = channel(&h.ca.root_pem(), own, "127.0.0.1", h.port, None);
    CaClient::new(channel, config)
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

fn token_config() -> CaClientConfig {
    let mut c = CaClientConfig::default();
    c.token = Token::Static(TOKEN.into());
    c.cluster_id = "cluster-1".into();
    c.ttl = Duration::from_secs(1800);
    c
}

#[tokio::test]
async fn client_gets_certificate_over_tls() {
    let h = start().await;
    let want = id("spiffe://cluster.local/ns/default/sa/reviews");
    let mut cfg = token_config();
    cfg.impersonate = true;
    let got = client(&h, cfg, None).fetch(&want).await.unwrap();
    assert_eq!(got.svid.spiffe_id(), &want);
    assert_eq!(got.roots, vec![h.ca.root().clone()]);
    let life = got
        .svid
        .not_after()
        .duration_since(got.svid.not_before())
        .unwrap();
    assert_eq!(life, Duration::from_secs(1800 + 60));
    // The certificate verifies against the returned roots.
    let v = SpiffeServerVerifier::builder(provider::default())
        .roots(TrustBundleSet::from(h.ca.bundle()))
        .expect_ids([want.clone()])
        .build_server_verifier()
        .unwrap();
    let (leaf, rest) = got.svid.cert_chain().split_first().unwrap();
    assert_eq!(
        v.verify_peer(leaf, rest, meshwire_svid::pki_types::UnixTime::now())
            .unwrap(),
        want
    );
    // The server saw the headers and the metadata.
    let seen = h.last_seen();
    assert_eq!(seen.bearer_token.as_deref(), Some(TOKEN));
    assert_eq!(seen.cluster_id.as_deref(), Some("cluster-1"));
    assert!(seen.peer_identity.is_none());
    assert!(seen.remote_addr.unwrap().ip().is_loopback());
    let authorized = h.last_authorized();
    assert_eq!(authorized.impersonated.as_ref(), Some(&want));
    assert_eq!(authorized.requested_ttl, Some(Duration::from_secs(1800)));
    assert_eq!(
        authorized.credentials.cluster_id.as_deref(),
        Some("cluster-1")
    );
    assert!(
        !format!("{seen:?}{authorized:?}").contains(TOKEN),
        "token must be redacted"
    );
}

#[tokio::test]
async fn mtls_caller_identity_reaches_authorizer() {
    let h = start().await;
    let me = id("spiffe://cluster.local/ns/istio-system/sa/ztunnel");
    let own = h.ca.issue(&me, Duration::from_secs(600)).unwrap();
    let want = id("spiffe://cluster.local/ns/default/sa/ratings");
    let got = client(&h, token_config(), Some(&own))
        .fetch(&want)
        .await
        .unwrap();
    assert_eq!(got.svid.spiffe_id(), &want);
    assert_eq!(h.last_seen().peer_identity, Some(me));
    assert!(h.last_authorized().impersonated.is_none());
}

#[tokio::test]
async fn server_denials_become_grpc_codes() {
    let h = start().await;
    let mut wrong_token = token_config();
    wrong_token.token = Token::Static("wrong".into());
    let mut impersonating = token_config();
    impersonating.impersonate = true;
    let cases = [
        // Wrong token.
        (
            wrong_token,
            "spiffe://cluster.local/ns/default/sa/a",
            Code::Unauthenticated,
        ),
        // Authorizer denies the identity.
        (
            token_config(),
            "spiffe://cluster.local/ns/forbidden/sa/a",
            Code::PermissionDenied,
        ),
        // Impersonation outside the allowed namespace.
        (
            impersonating,
            "spiffe://cluster.local/ns/other/sa/a",
            Code::Unauthenticated,
        ),
        // Outside the CA's trust domain (the authorizer approves; the CA refuses).
        (
            token_config(),
            "spiffe://other.org/ns/default/sa/a",
            Code::PermissionDenied,
        ),
    ];
    let refused = cases.len() as u64;
    for (cfg, want, code) in cases {
        let e = client(&h, cfg, None).fetch(&id(want)).await.unwrap_err();
        assert!(
            matches!(&e, CaClientError::Status(s) if s.code() == code),
            "{want}: {e:?}"
        );
    }
    let stats = h.stats.get();
    assert_eq!(stats.issued, 0, "{stats:?}");
    assert_eq!(stats.unauthenticated + stats.denied, refused, "{stats:?}");
    assert!(stats.unauthenticated > 0 && stats.denied > 0, "{stats:?}");
}

#[tokio::test]
async fn server_rejects_malformed_requests() {
    let h = start().await;
    let channel = channel(&h.ca.root_pem(), None, "localhost", h.port, None);
    let mut raw = IstioCertificateServiceClient::new(channel);
    let call = |csr: String, metadata: Option<prost_types::Struct>| {
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: 60,
            metadata,
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        req
    };
    let a = id("spiffe://cluster.local/ns/default/sa/a");
    let b = id("spiffe://cluster.local/ns/default/sa/b");
    // ImpersonatedIdentity that differs from the CSR.
    let md = prost_types::Struct {
        fields: [(
            "ImpersonatedIdentity".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(b.to_string())),
            },
        )]
        .into_iter()
        .collect(),
    };
    let e = raw
        .create_certificate(call(make_csr(&a).unwrap().csr_pem, Some(md)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // Garbage CSR.
    let e = raw
        .create_certificate(call("not a csr".into(), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // A CSR whose signature does not match its contents (identity edited after signing).
    let pem = make_csr(&a).unwrap().csr_pem;
    let der: Vec<u8> = {
        use meshwire_svid::pki_types::pem::PemObject;
        meshwire_svid::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    };
    let pos = der.windows(4).rposition(|w| w == b"sa/a").unwrap();
    let mut forged = der.clone();
    forged[pos + 3] = b'b';
    let forged_pem = pem_encode("CERTIFICATE REQUEST", &forged);
    let e = raw
        .create_certificate(call(forged_pem, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("signature"), "{}", e.message());
    // The callers were authenticated, but no malformed request reached authorization.
    assert_eq!(h.seen.lock().unwrap().len(), 3);
    assert!(h.authorized.lock().unwrap().is_empty());
    // Each one is counted as malformed, nothing else.
    let stats = h.stats.get();
    assert_eq!(
        (stats.malformed, stats.issued, stats.denied),
        (3, 0, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn unauthenticated_callers_are_refused_before_their_csr_is_read() {
    let h = start().await;
    let channel = channel(&h.ca.root_pem(), None, "localhost", h.port, None);
    let mut raw = IstioCertificateServiceClient::new(channel);
    // Without a token and with a CSR that is not even PEM: the answer is about the caller,
    // not about the CSR, because the CSR is never looked at.
    for token in [None, Some("Bearer wrong")] {
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: "not a csr".into(),
            validity_duration: 60,
            metadata: None,
        });
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", t.parse().unwrap());
        }
        let e = raw.create_certificate(req).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{token:?}: {e:?}");
        assert!(!e.message().contains("PEM"), "{}", e.message());
    }
    assert_eq!(h.seen.lock().unwrap().len(), 2);
    assert!(h.authorized.lock().unwrap().is_empty());
}

#[tokio::test]
async fn client_refuses_server_with_untrusted_certificate() {
    let h = start().await;
    let other = CertificateAuthority::generate_root(
        &TrustDomain::new("cluster.local").unwrap(),
        CaConfig::default(),
    )
    .unwrap();
    let a = id("spiffe://cluster.local/ns/default/sa/a");
    // A root that did not sign the server certificate, and a name the server certificate
    // was not issued for.
    let refused = [
        (other.root_pem(), None),
        (h.ca.root_pem(), Some("not-istiod.example")),
    ];
    for (root_pem, server_name) in refused {
        let channel = channel(&root_pem, None, "127.0.0.1", h.port, server_name);
        let e = CaClient::new(channel, token_config())
            .fetch(&a)
            .await
            .unwrap_err();
        assert!(
            matches!(e, CaClientError::Status(ref s) if s.code() == Code::Unavailable),
            "{server_name:?}: {e:?}"
        );
    }
    // The name override works for a name the certificate carries.
    let channel = channel(
        &h.ca.root_pem(),
        None,
        "127.0.0.1",
        h.port,
        Some("istiod.istio-system.svc"),
    );
    CaClient::new(channel, token_config())
        .fetch(&id("spiffe://cluster.local/ns/default/sa/a"))
        .await
        .unwrap();
}

#[tokio::test]
async fn manager_fetches_through_the_grpc_client() {
    let h = start().await;
    let mut cfg = token_config();
    cfg.impersonate = true;
    let mgr = CertificateManager::new(client(&h, cfg, None), ManagerConfig::default());
    let want = id("spiffe://cluster.local/ns/default/sa/productpage");
    let handle = mgr.hold(&want, Priority::OnDemand);
    let got = handle.get().await.unwrap();
    assert_eq!(got.svid.spiffe_id(), &want);
    assert_eq!(got.roots, vec![h.ca.root().clone()]);
    // A denied identity surfaces as a fetch failure.
    let denied = mgr.hold(
        &id("spiffe://cluster.local/ns/forbidden/sa/x"),
        Priority::OnDemand,
    );
    let Err(ManagerError::FetchFailed { source, .. }) = denied.get().await else {
        panic!("a denied identity must fail");
    };
    // The source's own error comes through, gRPC status included.
    let Some(CaClientError::Status(status)) = source.downcast_ref::<CaClientError>() else {
        panic!("not a CaClientError: {source:?}");
    };
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(denied.state().last_error.is_some());
}

#[tokio::test]
async fn token_file_is_read_before_every_request() {
    let h = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    let mut cfg = token_config();
    cfg.token = Token::File(path.clone());
    let client = client(&h, cfg, None);
    let want = id("spiffe://cluster.local/ns/default/sa/a");
    client.fetch(&want).await.unwrap();
    assert_eq!(
        h.last_seen().bearer_token.as_deref(),
        Some(TOKEN),
        "trailing newline trimmed"
    );
    // A rotated token is picked up by the next request.
    std::fs::write(&path, "rotated").unwrap();
    let e = client.fetch(&want).await.unwrap_err();
    assert!(
        matches!(e, CaClientError::Status(ref s) if s.code() == Code::Unauthenticated),
        "{e:?}"
    );
    assert_eq!(h.last_seen().bearer_token.as_deref(), Some("rotated"));
    // A missing file is an error that keeps the I/O cause.
    std::fs::remove_file(&path).unwrap();
    let e = client.fetch(&want).await.unwrap_err();
    let CaClientError::Token(io) = &e else {
        panic!("{e:?}");
    };
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    assert!(std::error::Error::source(&e).is_some());
}

/// Records the request metadata and signs like the real service.
struct Recording {
    ca: Arc<CertificateAuthority>,
    seen: Arc<Mutex<Vec<tonic::metadata::MetadataMap>>>,
}

#[tonic::async_trait]
impl IstioCertificateService for Recording {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        self.seen.lock().unwrap().push(request.metadata().clone());
        let want = id("spiffe://cluster.local/ns/default/sa/a");
        let cert_chain = self
            .ca
            .sign_csr(&request.get_ref().csr, &want, Duration::from_secs(60))
            .unwrap();
        Ok(tonic::Response::new(IstioCertificateResponse {
            cert_chain,
        }))
    }
}

#[tokio::test]
async fn client_sends_configured_headers() {
    let h = start().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (chain, key) =
        h.ca.issue_server_cert(
            &[],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            Duration::from_secs(600),
        )
        .unwrap();
    let tls = control_plane_server_config(provider::default(), chain, key, None).unwrap();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let service = Recording {
        ca: h.ca.clone(),
        seen: seen.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(service))
            .serve_with_incoming(tls::incoming(listener, Arc::new(tls))),
    );
    let mut cfg = token_config();
    cfg.extra_headers = vec![
        ("X-Ca-Extra".into(), "one".into()),
        ("x-other".into(), "two".into()),
    ];
    let channel = channel(&h.ca.root_pem(), None, "127.0.0.1", port, None);
    CaClient::new(channel, cfg)
        .fetch(&id("spiffe://cluster.local/ns/default/sa/a"))
        .await
        .unwrap();
    let md = seen.lock().unwrap().pop().unwrap();
    let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(get("authorization").as_deref(), Some("Bearer node-token"));
    assert_eq!(get("clusterid").as_deref(), Some("cluster-1"));
    assert_eq!(get("x-ca-extra").as_deref(), Some("one"));
    assert_eq!(get("x-other").as_deref(), Some("two"));
}
