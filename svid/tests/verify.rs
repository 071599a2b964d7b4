//! SVID rules on load, the rustls verifiers and the data-plane configurations, with leaves
//! from the test PKI (including leaves that break the X.509-SVID rules).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use meshwire_svid::pki_types::{CertificateDer, ServerName, UnixTime};
use meshwire_svid::test_util::{TestLeaf, TestPki, handshake};
use meshwire_svid::verify::{
    PeerVerifyError, SpiffeClientVerifier, SpiffeServerVerifier, VerifierBuilderError,
};
use meshwire_svid::x509::pem_encode;
use meshwire_svid::{
    BundleError, IdentityPolicy, SpiffeId, SvidError, TrustBundle, TrustBundleSet, TrustDomain,
    X509Svid, provider, rustls, tls,
};

const ALICE: &str = "spiffe://cluster.local/ns/default/sa/alice";
const BOB: &str = "spiffe://cluster.local/ns/default/sa/bob";

fn td(s: &str) -> TrustDomain {
    TrustDomain::new(s).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

fn now() -> UnixTime {
    UnixTime::now()
}

fn server_verifier(roots: TrustBundleSet, policy: IdentityPolicy) -> Arc<SpiffeServerVerifier> {
    SpiffeServerVerifier::builder(provider::default())
        .roots(roots)
        .policy(policy)
        .build_server_verifier()
        .unwrap()
}

fn client_verifier(roots: TrustBundleSet, policy: IdentityPolicy) -> Arc<SpiffeClientVerifier> {
    SpiffeClientVerifier::builder(provider::default())
        .roots(roots)
        .policy(policy)
        .build_client_verifier()
        .unwrap()
}

/// A test leaf with these URI SANs.
fn leaf(uris: &[&str]) -> TestLeaf {
    let mut l = TestLeaf::default();
    l.uris = uris.iter().map(|u| (*u).to_owned()).collect();
    l
}

#[test]
fn issued_svid_is_valid_and_verifies() {
    let pki = TestPki::new("cluster.local");
    let svid = pki.svid(&id(ALICE));
    assert_eq!(svid.spiffe_id(), &id(ALICE));
    assert_eq!(svid.cert_chain().len(), 1);
    let life = svid.not_after().duration_since(svid.not_before()).unwrap();
    assert_eq!(life, Duration::from_secs(3600));
    assert_eq!(svid.refresh_at(), svid.not_before() + life / 2);
    assert!(!format!("{svid:?}").contains("PRIVATE"));

    let v = server_verifier(pki.roots().clone(), IdentityPolicy::exact([id(ALICE)]));
    assert_eq!(v.verify_peer(svid.leaf(), &[], now()).unwrap(), id(ALICE));
    let v = client_verifier(
        pki.roots().clone(),
        IdentityPolicy::SameTrustDomain(td("cluster.local")),
    );
    assert_eq!(v.verify_peer(svid.leaf(), &[], now()).unwrap(), id(ALICE));
    assert_eq!(tls::peer_spiffe_id(svid.cert_chain()).unwrap(), id(ALICE));
}

#[test]
fn svid_pem_round_trip_and_key_mismatch() {
    let pki = TestPki::new("cluster.local");
    let a = pki.svid(&id(ALICE));
    let b = pki.svid(&id(BOB));
    let key_pem = |s: &X509Svid| pem_encode("PRIVATE KEY", s.private_key().secret_der());
    let again = X509Svid::from_pem(a.cert_chain_pem().as_bytes(), key_pem(&a).as_bytes()).unwrap();
    assert_eq!(again.spiffe_id(), a.spiffe_id());
    assert_eq!(again.cert_chain(), a.cert_chain());
    // A trailing root is dropped from the chain.
    let with_root = format!("{}{}", a.cert_chain_pem(), pki.ca().root_pem());
    let s = X509Svid::from_pem(with_root.as_bytes(), key_pem(&a).as_bytes()).unwrap();
    assert_eq!(s.cert_chain().len(), 1);
    assert_eq!(
        X509Svid::from_der(a.cert_chain().to_vec(), b.private_key()).unwrap_err(),
        SvidError::KeyMismatch
    );
    assert_eq!(
        X509Svid::from_pem(a.cert_chain_pem().as_bytes(), b"").unwrap_err(),
        SvidError::NoPrivateKey
    );
    assert_eq!(
        X509Svid::from_der(vec![], a.private_key()).unwrap_err(),
        SvidError::EmptyChain
    );
}

#[test]
fn svid_rules_on_load() {
    let pki = TestPki::new("cluster.local");
    let load = |l: TestLeaf| {
        let (chain, key) = pki.leaf(&l);
        X509Svid::from_der(chain, key)
    };
    assert_eq!(load(leaf(&[])).unwrap_err(), SvidError::NoUriSan);
    assert_eq!(
        load(leaf(&[ALICE, BOB])).unwrap_err(),
        SvidError::MultipleUriSans(2)
    );
    assert!(matches!(
        load(leaf(&["https://example.org/x"])).unwrap_err(),
        SvidError::InvalidSpiffeId { .. }
    ));
    assert!(matches!(
        load(leaf(&["spiffe://cluster.local"])).unwrap_err(),
        SvidError::TrustDomainIdAsLeaf(_)
    ));
    let mut l = leaf(&[ALICE]);
    l.is_ca = true;
    assert_eq!(load(l).unwrap_err(), SvidError::LeafIsCa);
    let mut l = leaf(&[ALICE]);
    l.digital_signature = false;
    assert_eq!(load(l).unwrap_err(), SvidError::MissingDigitalSignature);
    let mut l = leaf(&[ALICE]);
    (l.digital_signature, l.key_encipherment) = (false, false);
    assert_eq!(load(l).unwrap_err(), SvidError::MissingDigitalSignature);
    let mut l = leaf(&[ALICE]);
    l.key_cert_sign = true;
    assert_eq!(load(l).unwrap_err(), SvidError::LeafCanSign);
    let (chain, key) = pki.expired(&id(ALICE));
    assert_eq!(
        X509Svid::from_der(chain, key).unwrap_err(),
        SvidError::Expired
    );
    let (chain, key) = pki.not_yet_valid(&id(ALICE));
    assert_eq!(
        X509Svid::from_der(chain, key).unwrap_err(),
        SvidError::NotYetValid
    );
}

/// The rejections every verifier must make, checked on both sides.
#[test]
fn verifier_rejections() {
    let pki = TestPki::new("cluster.local");
    let roots = pki.roots().clone();
    let srv = server_verifier(roots.clone(), IdentityPolicy::exact([id(ALICE)]));
    let cli = client_verifier(
        roots.clone(),
        IdentityPolicy::SameTrustDomain(td("cluster.local")),
    );
    let check = |chain: &[CertificateDer<'static>]| {
        let (leaf, rest) = chain.split_first().unwrap();
        (
            srv.verify_peer(leaf, rest, now()),
            cli.verify_peer(leaf, rest, now()),
        )
    };
    let signed = |l: TestLeaf| pki.leaf(&l).0;

    // Wrong identity (same trust domain): only the exact policy rejects.
    let bob = pki.svid(&id(BOB));
    let (s, c) = check(bob.cert_chain());
    assert!(
        matches!(s, Err(PeerVerifyError::IdentityNotAllowed { .. })),
        "{s:?}"
    );
    assert_eq!(c.unwrap(), id(BOB));

    // Wrong trust domain: a leaf for other.org signed by this CA, whose roots are also
    // trusted for other.org, so that only the identity policy can object.
    let foreign = signed(leaf(&["spiffe://other.org/ns/default/sa/eve"]));
    let mut both = roots.clone();
    both.insert(TrustBundle::new(td("other.org"), pki.bundle().roots().to_vec()).unwrap());
    let cli2 = client_verifier(both, IdentityPolicy::SameTrustDomain(td("cluster.local")));
    let (leaf0, rest) = foreign.split_first().unwrap();
    let e = cli2.verify_peer(leaf0, rest, now()).unwrap_err();
    assert!(
        matches!(e, PeerVerifyError::IdentityNotAllowed { .. }),
        "{e:?}"
    );
    // And with no bundle for the foreign trust domain at all.
    let e = cli.verify_peer(leaf0, rest, now()).unwrap_err();
    assert_eq!(e, PeerVerifyError::NoBundle(td("other.org")));

    // Expired and not yet valid.
    let (expired, _) = pki.expired(&id(ALICE));
    let (s, c) = check(&expired);
    assert_eq!(s.unwrap_err(), PeerVerifyError::Expired);
    assert_eq!(c.unwrap_err(), PeerVerifyError::Expired);
    let (future, _) = pki.not_yet_valid(&id(ALICE));
    let (s, c) = check(&future);
    assert_eq!(s.unwrap_err(), PeerVerifyError::NotYetValid);
    assert_eq!(c.unwrap_err(), PeerVerifyError::NotYetValid);

    // CA certificate used as a leaf.
    let mut l = leaf(&[ALICE]);
    (l.is_ca, l.key_encipherment, l.key_cert_sign) = (true, false, true);
    let (s, c) = check(&signed(l));
    let leaf_is_ca = PeerVerifyError::NotSvid(SvidError::LeafIsCa);
    assert_eq!(s.unwrap_err(), leaf_is_ca);
    assert_eq!(c.unwrap_err(), leaf_is_ca);

    // No URI SAN (DNS only), and two URI SANs.
    let mut l = leaf(&[]);
    l.dns_names = vec!["alice.example".into()];
    l.common_name = Some("alice".into());
    let (s, c) = check(&signed(l));
    let no_uri = PeerVerifyError::NotSvid(SvidError::NoUriSan);
    assert_eq!(s.unwrap_err(), no_uri);
    assert_eq!(c.unwrap_err(), no_uri);
    let (s, c) = check(&signed(leaf(&[ALICE, BOB])));
    let two = PeerVerifyError::NotSvid(SvidError::MultipleUriSans(2));
    assert_eq!(s.unwrap_err(), two);
    assert_eq!(c.unwrap_err(), two);

    // Chain to an unknown root (same trust domain name, different key): the roots share a
    // subject name, so webpki finds the signature wrong.
    let stranger = TestPki::new("cluster.local");
    let (s, c) = check(stranger.svid(&id(ALICE)).cert_chain());
    assert_eq!(s.unwrap_err(), PeerVerifyError::BadSignature);
    assert_eq!(c.unwrap_err(), PeerVerifyError::BadSignature);
    // Under a stranger's intermediate no issuer name matches at all.
    let alien = stranger.with_intermediate().svid(&id(ALICE));
    let (s, c) = check(&alien.cert_chain()[..1]);
    assert_eq!(s.unwrap_err(), PeerVerifyError::UnknownIssuer);
    assert_eq!(c.unwrap_err(), PeerVerifyError::UnknownIssuer);

    // Wrong purpose: a leaf whose EKU lists only serverAuth is refused as a client.
    let mut l = leaf(&[ALICE]);
    l.client_auth = false;
    let (s, c) = check(&signed(l));
    assert_eq!(s.unwrap(), id(ALICE));
    assert_eq!(c.unwrap_err(), PeerVerifyError::WrongPurpose);

    // Errors surface through the rustls traits with the matching certificate error.
    use rustls::client::danger::ServerCertVerifier;
    let name = ServerName::try_from("0.0.0.0").unwrap();
    let err = srv
        .verify_server_cert(&expired[0], &[], &name, &[], now())
        .unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
    );
    let err = srv
        .verify_server_cert(&bob.cert_chain()[0], &[], &name, &[], now())
        .unwrap_err();
    assert!(matches!(
        err,
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(_))
    ));
}

#[test]
fn intermediate_chains_verify() {
    let root = TestPki::new("cluster.local");
    let inter = root.with_intermediate();
    let svid = inter.svid(&id(ALICE));
    assert_eq!(svid.cert_chain().len(), 2);
    let v = server_verifier(root.roots().clone(), IdentityPolicy::exact([id(ALICE)]));
    let (leaf, rest) = svid.cert_chain().split_first().unwrap();
    assert_eq!(v.verify_peer(leaf, rest, now()).unwrap(), id(ALICE));
    // Without the intermediate the chain is broken.
    assert_eq!(
        v.verify_peer(leaf, &[], now()).unwrap_err(),
        PeerVerifyError::UnknownIssuer
    );
}

#[test]
fn bundle_from_pem_with_several_roots() {
    let a = TestPki::new("cluster.local");
    let b = TestPki::new("cluster.local");
    let pem = format!("{}{}", a.ca().root_pem(), b.ca().root_pem());
    let bundle = TrustBundle::from_pem(td("cluster.local"), pem.as_bytes()).unwrap();
    assert_eq!(bundle.roots().len(), 2);
    assert_eq!(bundle.to_pem(), pem);
    let v = server_verifier(bundle.into(), IdentityPolicy::exact([id(ALICE)]));
    for pki in [&a, &b] {
        let s = pki.svid(&id(ALICE));
        assert!(v.verify_peer(s.leaf(), &[], now()).is_ok());
    }
    assert_eq!(
        TrustBundle::from_pem(td("cluster.local"), b"").unwrap_err(),
        BundleError::Empty(td("cluster.local"))
    );
    let mut set = TrustBundleSet::new();
    assert!(set.insert(a.bundle()).is_none());
    assert!(set.insert(b.bundle()).is_some());
    assert_eq!(
        set.get(&td("cluster.local")).unwrap().roots(),
        b.bundle().roots()
    );
    assert!(set.get(&td("other")).is_none());
}

#[test]
fn builder_requires_roots_and_policy() {
    let pki = TestPki::new("cluster.local");
    let b = SpiffeServerVerifier::builder(provider::default());
    assert_eq!(
        b.clone().build_server_verifier().unwrap_err(),
        VerifierBuilderError::NoRoots
    );
    assert_eq!(
        b.clone()
            .roots(pki.roots().clone())
            .build_server_verifier()
            .unwrap_err(),
        VerifierBuilderError::NoPolicy
    );
    assert_eq!(
        b.roots(pki.roots().clone())
            .expect_ids([])
            .build_server_verifier()
            .unwrap_err(),
        VerifierBuilderError::EmptyPolicy
    );
}

#[test]
fn trust_domains_policy_accepts_listed_domains_only() {
    // Three trust domains, each with its own CA, all trusted for path validation.
    let pkis: Vec<_> = ["a.org", "b.org", "c.org"].map(TestPki::new).into();
    let roots: TrustBundleSet = pkis.iter().map(TestPki::bundle).collect();
    let policy = IdentityPolicy::TrustDomains([td("a.org"), td("b.org")].into_iter().collect());
    assert!(policy.allows(&id("spiffe://a.org/x")));
    assert!(!policy.allows(&id("spiffe://c.org/x")));
    let srv = server_verifier(roots.clone(), policy.clone());
    let cli = client_verifier(roots.clone(), policy);
    for (pki, allowed) in pkis.iter().zip([true, true, false]) {
        let who = pki.id("/ns/default/sa/w");
        let svid = pki.svid(&who);
        for got in [
            srv.verify_peer(svid.leaf(), &[], now()),
            cli.verify_peer(svid.leaf(), &[], now()),
        ] {
            if allowed {
                assert_eq!(got.unwrap(), who);
            } else {
                assert!(
                    matches!(got, Err(PeerVerifyError::IdentityNotAllowed { .. })),
                    "{got:?}"
                );
            }
        }
    }
    // An empty list would reject everyone: refused at build time.
    assert_eq!(
        SpiffeServerVerifier::builder(provider::default())
            .roots(roots)
            .policy(IdentityPolicy::TrustDomains(Default::default()))
            .build_server_verifier()
            .unwrap_err(),
        VerifierBuilderError::EmptyPolicy
    );
}

/// How an in-memory handshake went on the client side.
fn handshake_kind(
    client: &Arc<rustls::ClientConfig>,
    server: &Arc<rustls::ServerConfig>,
) -> Option<rustls::HandshakeKind> {
    let (c, s) = handshake(client, server).unwrap();
    assert!(!c.is_handshaking() && !s.is_handshaking());
    c.handshake_kind()
}

#[test]
fn data_plane_configs_never_resume_sessions() {
    let pki = TestPki::new("cluster.local");
    let client = pki.client_config(&id(ALICE), IdentityPolicy::exact([id(BOB)]));
    let server = pki.server_config(&id(BOB));
    assert_eq!(server.send_tls13_tickets, 0);

    // Control: with rustls' usual resumption settings the second handshake resumes, so the
    // check below can tell the difference.
    let mut resuming_client = client.clone();
    resuming_client.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let mut resuming_server = server.clone();
    resuming_server.session_storage = rustls::server::ServerSessionMemoryCache::new(16);
    resuming_server.send_tls13_tickets = 2;
    let (rc, rs) = (Arc::new(resuming_client), Arc::new(resuming_server));
    assert_eq!(handshake_kind(&rc, &rs), Some(rustls::HandshakeKind::Full));
    assert_eq!(
        handshake_kind(&rc, &rs),
        Some(rustls::HandshakeKind::Resumed)
    );

    let (c, s) = (Arc::new(client), Arc::new(server));
    for _ in 0..3 {
        assert_eq!(handshake_kind(&c, &s), Some(rustls::HandshakeKind::Full));
    }
}

#[test]
fn verifiers_on_shared_bundles_follow_their_replacement() {
    let ours = TestPki::new("cluster.local");
    let next = TestPki::new("cluster.local");
    let shared = meshwire_svid::SharedTrustBundles::new(ours.roots().clone());
    let verifier = SpiffeServerVerifier::builder(provider::default())
        .roots(shared.clone())
        .policy(IdentityPolicy::exact([id(ALICE)]))
        .build_server_verifier()
        .unwrap();
    let alice_next = next.svid(&id(ALICE));
    let alice_ours = ours.svid(&id(ALICE));
    // Both roots have the same subject: webpki tries the old one and finds its signature bad.
    let untrusted = |r| {
        matches!(
            r,
            Err(PeerVerifyError::UnknownIssuer | PeerVerifyError::BadSignature)
        )
    };
    assert!(untrusted(verifier.verify_peer(
        alice_next.leaf(),
        &[],
        now()
    )));
    // A rotation: both roots for a while, the verifier untouched.
    let both = [ours.bundle().roots(), next.bundle().roots()].concat();
    shared.replace(TrustBundleSet::from(
        TrustBundle::new(td("cluster.local"), both).unwrap(),
    ));
    assert_eq!(
        verifier.verify_peer(alice_next.leaf(), &[], now()),
        Ok(id(ALICE))
    );
    assert_eq!(
        verifier.verify_peer(alice_ours.leaf(), &[], now()),
        Ok(id(ALICE))
    );
    // The old root dropped.
    shared.replace(next.roots().clone());
    assert!(untrusted(verifier.verify_peer(
        alice_ours.leaf(),
        &[],
        now()
    )));
}
