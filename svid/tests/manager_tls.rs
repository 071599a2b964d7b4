//! The certificate manager's rustls resolver: configurations built once present each new
//! certificate after a rotation, on the server and on the client side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use meshwire_svid::manager::{CertificateManager, CertificateResolver, ManagerConfig, Priority};
use meshwire_svid::pki_types::CertificateDer;
use meshwire_svid::test_util::{self, TestPki};
use meshwire_svid::{IdentityPolicy, provider, rustls};

/// Runs an in-memory handshake; returns the leaves each side saw from the other
/// (client saw, server saw), or the error of the side that failed.
fn handshake(
    client: &Arc<rustls::ClientConfig>,
    server: &Arc<rustls::ServerConfig>,
) -> Result<(CertificateDer<'static>, CertificateDer<'static>), rustls::Error> {
    let (c, s) = test_util::handshake(client, server)?;
    assert!(!c.is_handshaking() && !s.is_handshaking());
    let leaf = |certs: Option<&[CertificateDer<'static>]>| certs.unwrap()[0].clone();
    Ok((leaf(c.peer_certificates()), leaf(s.peer_certificates())))
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_rotation_is_served_without_rebuilding_the_configs() {
    let pki = Arc::new(TestPki::new("cluster.local"));
    let server_id = pki.istio_id("default", "server");
    let client_id = pki.istio_id("default", "client");
    let source = {
        let pki = pki.clone();
        move |id: &meshwire_svid::SpiffeId| pki.svid_for(id, Duration::from_secs(100))
    };
    let mgr = CertificateManager::new(Issuing(source), ManagerConfig::default());
    let server_handle = mgr.hold(&server_id, Priority::OnDemand);
    let client_handle = mgr.hold(&client_id, Priority::OnDemand);
    let server_first = server_handle.get().await.unwrap();
    let client_first = client_handle.get().await.unwrap();

    let server_resolver = CertificateResolver::new(server_handle, provider::default());
    let client_resolver = CertificateResolver::new(client_handle, provider::default());
    let policy = IdentityPolicy::SameTrustDomain(pki.trust_domain().clone());
    let server = Arc::new(server_resolver.server_config(pki.roots(), policy).unwrap());
    let client = Arc::new(
        client_resolver
            .client_config(pki.roots(), IdentityPolicy::exact([server_id.clone()]))
            .unwrap(),
    );

    let (client_saw, server_saw) = handshake(&client, &server).unwrap();
    assert_eq!(client_saw, *server_first.svid.leaf());
    assert_eq!(server_saw, *client_first.svid.leaf());

    // Past half-life both certificates are replaced; the same configurations present the
    // new ones.
    tokio::time::sleep(Duration::from_secs(55)).await;
    settle().await;
    let server_next = server_resolver.handle().current().unwrap();
    let client_next = client_resolver.handle().current().unwrap();
    assert_ne!(server_next.svid.leaf(), server_first.svid.leaf(), "rotated");
    assert_ne!(client_next.svid.leaf(), client_first.svid.leaf(), "rotated");
    let (client_saw, server_saw) = handshake(&client, &server).unwrap();
    assert_eq!(client_saw, *server_next.svid.leaf());
    assert_eq!(server_saw, *client_next.svid.leaf());
    // The key is loaded once per certificate.
    let a = server_resolver.current().unwrap();
    let b = server_resolver.current().unwrap();
    assert!(Arc::ptr_eq(&a, &b));
}

#[tokio::test(start_paused = true)]
async fn no_certificate_yet_fails_the_handshake() {
    let pki = TestPki::new("cluster.local");
    let server_id = pki.istio_id("default", "server");
    // A source that never answers: the identity never gets a certificate.
    let mgr = CertificateManager::new(Never, ManagerConfig::default());
    let resolver = CertificateResolver::new(
        mgr.hold(&server_id, Priority::OnDemand),
        provider::default(),
    );
    assert!(resolver.current().is_none());
    let policy = IdentityPolicy::SameTrustDomain(pki.trust_domain().clone());
    let server = Arc::new(resolver.server_config(pki.roots(), policy).unwrap());
    let client = Arc::new(pki.client_config(
        &pki.istio_id("default", "client"),
        IdentityPolicy::exact([server_id]),
    ));
    assert!(handshake(&client, &server).is_err());
}

/// Issues with a closure.
struct Issuing<F>(F);

#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
struct Unreachable;

impl<F> meshwire_svid::manager::CertificateSource for Issuing<F>
where
    F: Fn(&meshwire_svid::SpiffeId) -> meshwire_svid::X509Svid + Send + Sync + 'static,
{
    type Error = Unreachable;
    async fn fetch(
        &self,
        id: &meshwire_svid::SpiffeId,
    ) -> Result<meshwire_svid::x509::FetchedSvid, Unreachable> {
        Ok(meshwire_svid::x509::FetchedSvid::new(
            (self.0)(id),
            Vec::new(),
        ))
    }
}

/// Never answers.
struct Never;

impl meshwire_svid::manager::CertificateSource for Never {
    type Error = Unreachable;
    async fn fetch(
        &self,
        _id: &meshwire_svid::SpiffeId,
    ) -> Result<meshwire_svid::x509::FetchedSvid, Unreachable> {
        std::future::pending().await
    }
}
