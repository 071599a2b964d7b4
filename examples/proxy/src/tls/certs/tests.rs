use std::sync::Arc;

use meshwire_svid::test_util::{TestPki, handshake};
use meshwire_svid::{IdentityPolicy, SharedTrustBundles, SpiffeId, TrustBundle, TrustBundleSet};

use super::{Certificates, Managed};

fn managed() -> Arc<Managed<TestPki>> {
    Managed::new(
        TestPki::new("cluster.local"),
        meshwire_svid::provider::ring(),
        crate::metrics::Metrics::new(),
    )
}

#[tokio::test]
async fn one_server_configuration_per_identity_until_it_is_forgotten() {
    let certs = managed();
    let id = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap();
    let first = certs.server_config(&id).await.unwrap();
    let again = certs.server_config(&id).await.unwrap();
    assert!(
        Arc::ptr_eq(&first, &again),
        "the certificate rotates through the resolver, the configuration is reused"
    );
    assert_eq!(certs.held()[0].identity, id.to_string());
    assert_eq!(certs.held()[0].state, "valid");

    certs.forget(&id);
    assert!(certs.held().is_empty());
    let after = certs.server_config(&id).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &after));
}

#[tokio::test]
async fn client_configurations_hold_the_identity_on_demand() {
    let certs = managed();
    let id = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap();
    let policy = IdentityPolicy::SameTrustDomain(id.trust_domain().clone());
    certs.client_config(&id, policy).await.unwrap();
    let held = certs.held();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].state, "valid");
    assert_eq!(held[0].chain_length, 1);
}

/// A source that counts its fetches.
struct Counting {
    pki: Arc<TestPki>,
    fetches: Arc<std::sync::atomic::AtomicUsize>,
}

impl meshwire_svid::manager::CertificateSource for Counting {
    type Error = meshwire_svid::ca::CaError;
    fn fetch(
        &self,
        id: &SpiffeId,
    ) -> impl Future<Output = Result<meshwire_svid::x509::FetchedSvid, Self::Error>> + Send {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        meshwire_svid::manager::CertificateSource::fetch(&self.pki, id)
    }
}

/// The trust bundle of `ours`'s trust domain with the roots of both CAs.
fn both_roots(ours: &TestPki, next: &TestPki) -> TrustBundleSet {
    TrustBundleSet::from(
        TrustBundle::new(
            ours.trust_domain().clone(),
            [ours.bundle().roots(), next.bundle().roots()].concat(),
        )
        .unwrap(),
    )
}

/// A peer's configurations with an SVID of `next`, trusting both CAs' roots (so only our
/// side's verdict decides the handshake).
fn peer_configs(
    ours: &TestPki,
    next: &TestPki,
    peer: &SpiffeId,
) -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
    let both = both_roots(ours, next);
    let svid = next.svid(peer);
    let policy = IdentityPolicy::SameTrustDomain(ours.trust_domain().clone());
    let crypto = meshwire_svid::provider::ring();
    (
        Arc::new(
            meshwire_svid::tls::client_config(crypto.clone(), &svid, &both, policy.clone())
                .unwrap(),
        ),
        Arc::new(meshwire_svid::tls::server_config(crypto, &svid, &both, policy).unwrap()),
    )
}

#[tokio::test]
async fn a_root_added_to_the_live_bundles_is_trusted_without_a_certificate_refresh() {
    let ours = Arc::new(TestPki::new("cluster.local"));
    // The next CA of the same trust domain (a SPIRE CA rotation): its root is not trusted yet.
    let next = TestPki::new("cluster.local");
    let live = SharedTrustBundles::new(ours.roots().clone());
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let source = Counting {
        pki: ours.clone(),
        fetches: fetches.clone(),
    };
    let certs = Managed::with_live_roots(
        source,
        meshwire_svid::provider::ring(),
        crate::metrics::Metrics::new(),
        live.clone(),
    );
    let ours = &*ours;
    let id = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap();
    let peer = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/client").unwrap();
    let (peer_client, peer_server) = peer_configs(ours, &next, &peer);

    let server = certs.server_config(&id).await.unwrap();
    let client = certs
        .client_config(&id, IdentityPolicy::exact([peer.clone()]))
        .await
        .unwrap();
    assert!(
        handshake(&peer_client, &server).is_err(),
        "our server refuses a client of the untrusted root"
    );
    assert!(
        handshake(&client, &peer_server).is_err(),
        "our client refuses a server of the untrusted root"
    );

    // The bundle update: both roots, as during a rotation.
    live.replace(both_roots(ours, &next));
    let (_, s) = handshake(&peer_client, &server).expect("the new root verifies on our server");
    assert_eq!(
        meshwire_svid::tls::peer_spiffe_id(s.peer_certificates().unwrap()).unwrap(),
        peer
    );
    handshake(&client, &peer_server).expect("the new root verifies on our client");
    // And the old root still does: several roots are accepted during the rotation.
    let (old_client, _) = peer_configs(ours, ours, &peer);
    handshake(&old_client, &server).expect("the old root verifies too");
    assert!(Arc::ptr_eq(
        &server,
        &certs.server_config(&id).await.unwrap()
    ));
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "no certificate was fetched again"
    );
}
