//! Unit tests that need crate-internal helpers to craft unusual certificates.

use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, IsCa, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::*;

fn td(s: &str) -> TrustDomain {
    TrustDomain::new(s).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

fn ca(trust_domain: &str) -> CertificateAuthority {
    CertificateAuthority::generate_root(&td(trust_domain), CaConfig::default()).unwrap()
}

fn now() -> UnixTime {
    UnixTime::now()
}

fn server_verifier(
    roots: TrustBundleSet,
    policy: IdentityPolicy,
) -> std::sync::Arc<SpiffeServerVerifier> {
    SpiffeServerVerifier::builder(provider::default())
        .roots(roots)
        .policy(policy)
        .build_server_verifier()
        .unwrap()
}

fn client_verifier(
    roots: TrustBundleSet,
    policy: IdentityPolicy,
) -> std::sync::Arc<SpiffeClientVerifier> {
    SpiffeClientVerifier::builder(provider::default())
        .roots(roots)
        .policy(policy)
        .build_client_verifier()
        .unwrap()
}

/// Leaf parameters as the CA makes them, for tests to bend.
fn leaf_params(sans: Vec<SanType>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(60)).into();
    p.not_after = (now + Duration::from_secs(3600)).into();
    p
}

fn uri(s: &str) -> SanType {
    SanType::URI(Ia5String::try_from(s.to_string()).unwrap())
}

const ALICE: &str = "spiffe://cluster.local/ns/default/sa/alice";
const BOB: &str = "spiffe://cluster.local/ns/default/sa/bob";

#[test]
fn issued_svid_is_valid_and_verifies() {
    let ca = ca("cluster.local");
    let svid = ca.issue(&id(ALICE), Duration::from_secs(3600)).unwrap();
    assert_eq!(svid.spiffe_id(), &id(ALICE));
    assert_eq!(svid.cert_chain().len(), 1);
    let life = svid.not_after().duration_since(svid.not_before()).unwrap();
    assert_eq!(life, Duration::from_secs(3600 + 60));
    assert_eq!(svid.refresh_at(), svid.not_before() + life / 2);
    assert!(!format!("{svid:?}").contains("PRIVATE"));

    let roots = TrustBundleSet::from(ca.bundle());
    let v = server_verifier(roots.clone(), IdentityPolicy::exact([id(ALICE)]));
    assert_eq!(v.verify_peer(svid.leaf(), &[], now()).unwrap(), id(ALICE));
    let v = client_verifier(roots, IdentityPolicy::SameTrustDomain(td("cluster.local")));
    assert_eq!(v.verify_peer(svid.leaf(), &[], now()).unwrap(), id(ALICE));
    assert_eq!(peer_spiffe_id(svid.cert_chain()).unwrap(), id(ALICE));
}

#[test]
fn ttl_is_capped() {
    let mut cfg = CaConfig::default();
    cfg.max_ttl(Duration::from_secs(600))
        .backdate(Duration::ZERO);
    let ca = CertificateAuthority::generate_root(&td("cluster.local"), cfg).unwrap();
    let svid = ca.issue(&id(ALICE), Duration::from_secs(86400)).unwrap();
    let life = svid.not_after().duration_since(svid.not_before()).unwrap();
    assert!(life <= Duration::from_secs(601), "{life:?}");
    assert_eq!(
        ca.issue(&id(ALICE), Duration::ZERO).unwrap_err(),
        CaError::ZeroTtl
    );
}

#[test]
fn svid_pem_round_trip_and_key_mismatch() {
    let ca = ca("cluster.local");
    let a = ca.issue(&id(ALICE), Duration::from_secs(3600)).unwrap();
    let b = ca.issue(&id(BOB), Duration::from_secs(3600)).unwrap();
    let key_pem = |k: PrivateKeyDer<'_>| svid::pem_encode("PRIVATE KEY", k.secret_der());
    let again = X509Svid::from_pem(
        a.cert_chain_pem().as_bytes(),
        key_pem(a.private_key()).as_bytes(),
    )
    .unwrap();
    assert_eq!(again.spiffe_id(), a.spiffe_id());
    assert_eq!(again.cert_chain(), a.cert_chain());
    // A trailing root is dropped from the chain.
    let with_root = format!("{}{}", a.cert_chain_pem(), ca.root_pem());
    let s = X509Svid::from_pem(with_root.as_bytes(), key_pem(a.private_key()).as_bytes()).unwrap();
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
    let ca = ca("cluster.local");
    let load = |p: CertificateParams| {
        let (chain, key) = ca.sign_params(&p).unwrap();
        X509Svid::from_der(chain, key)
    };
    assert_eq!(load(leaf_params(vec![])).unwrap_err(), SvidError::NoUriSan);
    assert_eq!(
        load(leaf_params(vec![uri(ALICE), uri(BOB)])).unwrap_err(),
        SvidError::MultipleUriSans(2)
    );
    assert!(matches!(
        load(leaf_params(vec![uri("https://example.org/x")])).unwrap_err(),
        SvidError::InvalidSpiffeId { .. }
    ));
    assert!(matches!(
        load(leaf_params(vec![uri("spiffe://cluster.local")])).unwrap_err(),
        SvidError::TrustDomainIdAsLeaf(_)
    ));
    let mut p = leaf_params(vec![uri(ALICE)]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    assert_eq!(load(p).unwrap_err(), SvidError::LeafIsCa);
    let mut p = leaf_params(vec![uri(ALICE)]);
    p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    assert_eq!(load(p).unwrap_err(), SvidError::MissingDigitalSignature);
    let mut p = leaf_params(vec![uri(ALICE)]);
    p.key_usages = vec![];
    assert_eq!(load(p).unwrap_err(), SvidError::MissingDigitalSignature);
    let mut p = leaf_params(vec![uri(ALICE)]);
    p.key_usages.push(KeyUsagePurpose::KeyCertSign);
    assert_eq!(load(p).unwrap_err(), SvidError::LeafCanSign);
    let now = SystemTime::now();
    let (chain, key) = ca
        .issue_with_validity(
            &id(ALICE),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    assert_eq!(
        X509Svid::from_der(chain, key).unwrap_err(),
        SvidError::Expired
    );
    let (chain, key) = ca
        .issue_with_validity(
            &id(ALICE),
            now + Duration::from_secs(3600),
            now + Duration::from_secs(7200),
        )
        .unwrap();
    assert_eq!(
        X509Svid::from_der(chain, key).unwrap_err(),
        SvidError::NotYetValid
    );
}

/// The rejections every verifier must make, checked on both sides.
#[test]
fn verifier_rejections() {
    let ca = ca("cluster.local");
    let roots = TrustBundleSet::from(ca.bundle());
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
    let signed = |p: CertificateParams| ca.sign_params(&p).unwrap().0;

    // Wrong identity (same trust domain): only the exact policy rejects.
    let bob = ca.issue(&id(BOB), Duration::from_secs(600)).unwrap();
    let (s, c) = check(bob.cert_chain());
    assert!(
        matches!(s, Err(PeerVerifyError::IdentityNotAllowed { .. })),
        "{s:?}"
    );
    assert_eq!(c.unwrap(), id(BOB));

    // Wrong trust domain, same roots inserted for it so only the policy can object.
    let other_td_ca = ca_with_same_roots_other_td(&ca);
    let mut both = roots.clone();
    both.insert(TrustBundle::new(td("other.org"), ca.bundle().roots().to_vec()).unwrap());
    let cli2 = client_verifier(both, IdentityPolicy::SameTrustDomain(td("cluster.local")));
    let foreign = other_td_ca;
    let (leaf, rest) = foreign.split_first().unwrap();
    let e = cli2.verify_peer(leaf, rest, now()).unwrap_err();
    assert!(
        matches!(e, PeerVerifyError::IdentityNotAllowed { .. }),
        "{e:?}"
    );
    // And with no bundle for the foreign trust domain at all.
    let e = cli.verify_peer(leaf, rest, now()).unwrap_err();
    assert_eq!(e, PeerVerifyError::NoBundle(td("other.org")));

    // Expired and not yet valid.
    let t = SystemTime::now();
    let (expired, _) = ca
        .issue_with_validity(
            &id(ALICE),
            t - Duration::from_secs(7200),
            t - Duration::from_secs(3600),
        )
        .unwrap();
    let (s, c) = check(&expired);
    assert_eq!(s.unwrap_err(), PeerVerifyError::Expired);
    assert_eq!(c.unwrap_err(), PeerVerifyError::Expired);
    let (future, _) = ca
        .issue_with_validity(
            &id(ALICE),
            t + Duration::from_secs(3600),
            t + Duration::from_secs(7200),
        )
        .unwrap();
    let (s, c) = check(&future);
    assert_eq!(s.unwrap_err(), PeerVerifyError::NotYetValid);
    assert_eq!(c.unwrap_err(), PeerVerifyError::NotYetValid);

    // CA certificate used as a leaf.
    let mut p = leaf_params(vec![uri(ALICE)]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    let (s, c) = check(&signed(p));
    assert_eq!(
        s.unwrap_err(),
        PeerVerifyError::NotSvid(SvidError::LeafIsCa)
    );
    assert_eq!(
        c.unwrap_err(),
        PeerVerifyError::NotSvid(SvidError::LeafIsCa)
    );

    // No URI SAN (DNS only), and two URI SANs.
    let mut p = leaf_params(vec![SanType::DnsName(
        Ia5String::try_from("alice.example".to_string()).unwrap(),
    )]);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "alice");
    let (s, c) = check(&signed(p));
    assert_eq!(
        s.unwrap_err(),
        PeerVerifyError::NotSvid(SvidError::NoUriSan)
    );
    assert_eq!(
        c.unwrap_err(),
        PeerVerifyError::NotSvid(SvidError::NoUriSan)
    );
    let (s, c) = check(&signed(leaf_params(vec![uri(ALICE), uri(BOB)])));
    assert_eq!(
        s.unwrap_err(),
        PeerVerifyError::NotSvid(SvidError::MultipleUriSans(2))
    );
    assert_eq!(
        c.unwrap_err(),
        PeerVerifyError::NotSvid(SvidError::MultipleUriSans(2))
    );

    // Chain to an unknown root (same trust domain name, different key).
    let stranger = self::ca("cluster.local");
    let alien = stranger
        .issue(&id(ALICE), Duration::from_secs(600))
        .unwrap();
    // The roots share a subject name, so webpki finds the signature wrong.
    let (s, c) = check(alien.cert_chain());
    assert_eq!(s.unwrap_err(), PeerVerifyError::BadSignature);
    assert_eq!(c.unwrap_err(), PeerVerifyError::BadSignature);
    // Under a stranger's intermediate no issuer name matches at all.
    let stranger_inter = stranger.generate_intermediate(CaConfig::default()).unwrap();
    let alien = stranger_inter
        .issue(&id(ALICE), Duration::from_secs(600))
        .unwrap();
    let (s, c) = check(&alien.cert_chain()[..1]);
    assert_eq!(s.unwrap_err(), PeerVerifyError::UnknownIssuer);
    assert_eq!(c.unwrap_err(), PeerVerifyError::UnknownIssuer);

    // Wrong purpose: a leaf whose EKU lists only serverAuth is refused as a client.
    let mut p = leaf_params(vec![uri(ALICE)]);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let (s, c) = check(&signed(p));
    assert_eq!(s.unwrap(), id(ALICE));
    assert_eq!(c.unwrap_err(), PeerVerifyError::WrongPurpose);

    // Errors surface through the rustls traits with the matching certificate error.
    use rustls::client::danger::ServerCertVerifier;
    let name = rustls_pki_types::ServerName::try_from("0.0.0.0").unwrap();
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

/// A leaf for `spiffe://other.org/...` signed by `ca`'s key (a CA that signs outside its
/// trust domain, so that only the identity policy distinguishes it).
fn ca_with_same_roots_other_td(ca: &CertificateAuthority) -> Vec<CertificateDer<'static>> {
    ca.sign_params(&leaf_params(vec![uri(
        "spiffe://other.org/ns/default/sa/eve",
    )]))
    .unwrap()
    .0
}

#[test]
fn intermediate_chains_verify() {
    let root = ca("cluster.local");
    let inter = root.generate_intermediate(CaConfig::default()).unwrap();
    let svid = inter.issue(&id(ALICE), Duration::from_secs(600)).unwrap();
    assert_eq!(svid.cert_chain().len(), 2);
    let roots = TrustBundleSet::from(root.bundle());
    let v = server_verifier(roots, IdentityPolicy::exact([id(ALICE)]));
    let (leaf, rest) = svid.cert_chain().split_first().unwrap();
    assert_eq!(v.verify_peer(leaf, rest, now()).unwrap(), id(ALICE));
    // Without the intermediate the chain is broken.
    assert_eq!(
        v.verify_peer(leaf, &[], now()).unwrap_err(),
        PeerVerifyError::UnknownIssuer
    );
    // The PEM from sign_csr ends with the root.
    let csr = test_csr(ALICE);
    let pems = inter
        .sign_csr(&csr, &id(ALICE), Duration::from_secs(600))
        .unwrap();
    assert_eq!(pems.len(), 3);
    assert_eq!(pems[2], root.root_pem());
}

fn test_csr(san: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![uri(san)];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn ca_signs_csr_with_only_the_approved_identity() {
    let ca = ca("cluster.local");
    let pems = ca
        .sign_csr(&test_csr(ALICE), &id(ALICE), Duration::from_secs(600))
        .unwrap();
    assert_eq!(pems.len(), 2);
    assert_eq!(pems[1], ca.root_pem());
    let chain = svid::certs_from_pem(pems[0].as_bytes()).unwrap();
    assert_eq!(peer_spiffe_id(&chain).unwrap(), id(ALICE));
    let info = svid::inspect_leaf(&chain[0]).unwrap();
    assert_eq!(info.spiffe_id, id(ALICE));
    // The x509 view: serverAuth + clientAuth, not a CA.
    let (_, cert) = <x509_parser::certificate::X509Certificate<'_> as x509_parser::prelude::FromDer<'_, _>>::from_der(&chain[0]).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!cert.is_ca());
    assert!(
        cert.subject().iter_attributes().next().is_none(),
        "empty subject"
    );
    assert!(cert.subject_alternative_name().unwrap().unwrap().critical);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    // Serial numbers are random: two signings of the same CSR differ.
    let again = ca
        .sign_csr(&test_csr(ALICE), &id(ALICE), Duration::from_secs(600))
        .unwrap();
    let serial = |pem: &str| {
        let der = svid::certs_from_pem(pem.as_bytes()).unwrap().remove(0);
        let (_, c) =
            <x509_parser::certificate::X509Certificate<'_> as x509_parser::prelude::FromDer<
                '_,
                _,
            >>::from_der(&der)
            .unwrap();
        c.raw_serial().to_vec()
    };
    assert_ne!(serial(&pems[0]), serial(&again[0]));
    assert!(serial(&pems[0]).len() >= 16);

    // A CSR asking for another identity than the approved one is refused.
    let e = ca
        .sign_csr(&test_csr(BOB), &id(ALICE), Duration::from_secs(600))
        .unwrap_err();
    assert!(matches!(e, CaError::IdentityMismatch { .. }), "{e:?}");
    // An identity outside the trust domain is refused.
    let other = "spiffe://other.org/ns/a/sa/b";
    let e = ca
        .sign_csr(&test_csr(other), &id(other), Duration::from_secs(600))
        .unwrap_err();
    assert!(matches!(e, CaError::ForeignTrustDomain { .. }), "{e:?}");
    assert!(matches!(
        ca.sign_csr("not a csr", &id(ALICE), Duration::from_secs(1))
            .unwrap_err(),
        CaError::CsrPem(_)
    ));
}

#[test]
fn ca_refuses_forged_csr() {
    let ca = ca("cluster.local");
    let pem = test_csr(ALICE);
    let der = PemObject::from_pem_slice(pem.as_bytes())
        .map(|d: CertificateSigningRequestDer<'static>| d.as_ref().to_vec())
        .unwrap();
    // Change the requested identity inside the signed part: alice -> alicf.
    let pos = der.windows(5).position(|w| w == b"alice").unwrap();
    let mut forged = der.clone();
    forged[pos + 4] = b'f';
    let forged_pem = svid::pem_encode("CERTIFICATE REQUEST", &forged);
    let approved = id("spiffe://cluster.local/ns/default/sa/alicf");
    assert_eq!(
        ca.sign_csr(&forged_pem, &approved, Duration::from_secs(600))
            .unwrap_err(),
        CaError::CsrSignature
    );
    // Flip a bit of the signature itself.
    let mut forged = der;
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let forged_pem = svid::pem_encode("CERTIFICATE REQUEST", &forged);
    assert_eq!(
        ca.sign_csr(&forged_pem, &id(ALICE), Duration::from_secs(600))
            .unwrap_err(),
        CaError::CsrSignature
    );
}

#[test]
fn ca_persists_and_reloads() {
    let ca = ca("example.org");
    let loaded = CertificateAuthority::from_pem(
        ca.cert_chain_pem().as_bytes(),
        ca.private_key_pem().as_bytes(),
        CaConfig::default(),
    )
    .unwrap();
    assert_eq!(loaded.trust_domain(), &td("example.org"));
    assert_eq!(loaded.root(), ca.root());
    let svid = loaded
        .issue(&id("spiffe://example.org/w"), Duration::from_secs(60))
        .unwrap();
    let v = server_verifier(
        ca.bundle().into(),
        IdentityPolicy::SameTrustDomain(td("example.org")),
    );
    assert!(v.verify_peer(svid.leaf(), &[], now()).is_ok());

    // Intermediate + root chain.
    let inter = ca.generate_intermediate(CaConfig::default()).unwrap();
    let loaded = CertificateAuthority::from_pem(
        inter.cert_chain_pem().as_bytes(),
        inter.private_key_pem().as_bytes(),
        CaConfig::default(),
    )
    .unwrap();
    let svid = loaded
        .issue(&id("spiffe://example.org/w"), Duration::from_secs(60))
        .unwrap();
    assert_eq!(svid.cert_chain().len(), 2);
    let (leaf, rest) = svid.cert_chain().split_first().unwrap();
    assert!(v.verify_peer(leaf, rest, now()).is_ok());

    // Wrong key, leaf as CA, chain without root.
    let other = self::ca("example.org");
    assert_eq!(
        CertificateAuthority::from_pem(
            ca.cert_chain_pem().as_bytes(),
            other.private_key_pem().as_bytes(),
            CaConfig::default()
        )
        .unwrap_err(),
        CaError::KeyMismatch
    );
    let leaf_pem = svid.cert_chain_pem();
    assert_eq!(
        CertificateAuthority::from_pem(
            leaf_pem.as_bytes(),
            other.private_key_pem().as_bytes(),
            CaConfig::default()
        )
        .unwrap_err(),
        CaError::NotACa
    );
    let inter_only =
        svid::cert_to_pem(&svid::certs_from_pem(inter.cert_chain_pem().as_bytes()).unwrap()[0]);
    assert_eq!(
        CertificateAuthority::from_pem(
            inter_only.as_bytes(),
            inter.private_key_pem().as_bytes(),
            CaConfig::default()
        )
        .unwrap_err(),
        CaError::NoRoot
    );
}

#[test]
fn bundle_from_pem_with_several_roots() {
    let a = ca("cluster.local");
    let b = ca("cluster.local");
    let pem = format!("{}{}", a.root_pem(), b.root_pem());
    let bundle = TrustBundle::from_pem(td("cluster.local"), pem.as_bytes()).unwrap();
    assert_eq!(bundle.roots().len(), 2);
    assert_eq!(bundle.to_pem(), pem);
    let v = server_verifier(bundle.into(), IdentityPolicy::exact([id(ALICE)]));
    for ca in [&a, &b] {
        let s = ca.issue(&id(ALICE), Duration::from_secs(60)).unwrap();
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
    let ca = ca("cluster.local");
    let b = SpiffeServerVerifier::builder(provider::default());
    assert_eq!(
        b.clone().build_server_verifier().unwrap_err(),
        VerifierBuilderError::NoRoots
    );
    assert_eq!(
        b.clone()
            .roots(TrustBundleSet::from(ca.bundle()))
            .build_server_verifier()
            .unwrap_err(),
        VerifierBuilderError::NoPolicy
    );
    assert_eq!(
        b.roots(TrustBundleSet::from(ca.bundle()))
            .expect_ids([])
            .build_server_verifier()
            .unwrap_err(),
        VerifierBuilderError::EmptyPolicy
    );
}

#[test]
fn pem_encoding_decodes() {
    for len in 0..70 {
        let data: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
        let pem = svid::pem_encode("CERTIFICATE", &data);
        let back: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        if len == 0 {
            assert!(back.is_empty() || back[0].is_empty());
        } else {
            assert_eq!(back[0].as_ref(), data.as_slice(), "len {len}");
        }
    }
}

use rustls_pki_types::pem::PemObject;

#[test]
fn client_checks_the_returned_chain() {
    let ca = ca("cluster.local");
    let inter = ca.generate_intermediate(CaConfig::default()).unwrap();
    let want = id(ALICE);
    let csr = make_csr(&want).unwrap();
    assert!(format!("{csr:?}").contains("redacted"));
    // The CSR carries an empty subject and one critical URI SAN.
    let der = CertificateSigningRequestDer::from_pem_slice(csr.csr_pem.as_bytes()).unwrap();
    let (_, parsed) = <x509_parser::certification_request::X509CertificationRequest<'_> as x509_parser::prelude::FromDer<'_, _>>::from_der(der.as_ref()).unwrap();
    assert!(
        parsed
            .certification_request_info
            .subject
            .iter_attributes()
            .next()
            .is_none()
    );
    let exts: Vec<_> = parsed.requested_extensions().unwrap().collect();
    assert_eq!(exts.len(), 1);
    // subjectAltName (2.5.29.17) marked critical: OID followed by BOOLEAN TRUE.
    let critical_san = [0x06, 0x03, 0x55, 0x1d, 0x11, 0x01, 0x01, 0xff];
    assert!(der.as_ref().windows(8).any(|w| w == critical_san));
    let ca_view = ca::verify_csr(der.as_ref()).unwrap();
    assert_eq!(ca_view.uris, vec![ALICE.to_string()]);

    // Leaf, intermediate, and a last element with two roots.
    let mut pems = inter
        .sign_csr(&csr.csr_pem, &want, Duration::from_secs(600))
        .unwrap();
    let extra_root = self::ca("cluster.local");
    let last = pems.pop().unwrap();
    pems.push(format!("{last}{}", extra_root.root_pem()));
    let got = svid_from_response(&want, &pems, csr.key.clone_key()).unwrap();
    assert_eq!(got.svid.spiffe_id(), &want);
    assert_eq!(got.svid.cert_chain().len(), 2);
    assert_eq!(got.roots.len(), 2);

    // A single element: accepted, no roots.
    let got = svid_from_response(&want, &pems[..1], csr.key.clone_key()).unwrap();
    assert!(got.roots.is_empty());

    // Empty answer.
    assert!(matches!(
        svid_from_response(&want, &[], csr.key.clone_key()).unwrap_err(),
        CaClientError::EmptyChain
    ));
    // A leaf for someone else (a CA ignoring the request).
    let csr_b = make_csr(&id(BOB)).unwrap();
    let pems_b = ca
        .sign_csr(&csr_b.csr_pem, &id(BOB), Duration::from_secs(600))
        .unwrap();
    assert!(matches!(
        svid_from_response(&want, &pems_b, csr_b.key.clone_key()).unwrap_err(),
        CaClientError::WrongIdentity { .. }
    ));
    // A leaf that does not match our key.
    assert!(matches!(
        svid_from_response(&id(BOB), &pems_b, csr.key.clone_key()).unwrap_err(),
        CaClientError::BadChain(SvidError::KeyMismatch)
    ));
}

use rustls_pki_types::CertificateSigningRequestDer;

#[test]
fn extreme_lifetimes_are_cut_or_refused_without_panicking() {
    // An uncapped CA asked for absurd lifetimes (a request's validity_duration comes from
    // the wire) issues up to the last time X.509 can express.
    let mut cfg = CaConfig::default();
    cfg.max_ttl(Duration::MAX).ca_ttl(Duration::MAX);
    let ca = CertificateAuthority::generate_root(&td("cluster.local"), cfg).unwrap();
    let end_of_x509 = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    for ttl in [Duration::from_secs(20_000 * 365 * 86_400), Duration::MAX] {
        let svid = ca.issue(&id(ALICE), ttl).unwrap();
        assert_eq!(svid.not_after(), end_of_x509);
        let pems = ca.sign_csr(&test_csr(ALICE), &id(ALICE), ttl).unwrap();
        let leaf = svid::certs_from_pem(pems[0].as_bytes()).unwrap();
        assert_eq!(svid::inspect_leaf(&leaf[0]).unwrap().not_after, end_of_x509);
    }
    use x509_parser::prelude::FromDer as _;
    let (_, root) = x509_parser::certificate::X509Certificate::from_der(ca.root()).unwrap();
    assert_eq!(root.validity().not_after.timestamp(), 253_402_300_799);

    // Explicit bounds a certificate cannot carry are refused.
    let now = SystemTime::now();
    let far = now + Duration::from_secs(20_000 * 365 * 86_400);
    assert_eq!(
        ca.issue_with_validity(&id(ALICE), now, far).unwrap_err(),
        CaError::ValidityOutOfRange
    );
    let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
    assert_eq!(
        ca.issue_with_validity(&id(ALICE), before_1970, now)
            .unwrap_err(),
        CaError::ValidityOutOfRange
    );
    // A backdate reaching before 1970 is refused, for leaves and for new CAs.
    let mut cfg = CaConfig::default();
    cfg.backdate(Duration::MAX);
    assert_eq!(
        CertificateAuthority::generate_root(&td("cluster.local"), cfg.clone()).unwrap_err(),
        CaError::ValidityOutOfRange
    );
    assert_eq!(
        ca.generate_intermediate(cfg).unwrap_err(),
        CaError::ValidityOutOfRange
    );
}

#[test]
fn trust_domains_policy_accepts_listed_domains_only() {
    // Three trust domains, each with its own CA, all trusted for path validation.
    let cas: Vec<_> = ["a.org", "b.org", "c.org"].iter().map(|d| ca(d)).collect();
    let roots: TrustBundleSet = cas.iter().map(|c| c.bundle()).collect();
    let policy = IdentityPolicy::TrustDomains([td("a.org"), td("b.org")].into_iter().collect());
    assert!(policy.allows(&id("spiffe://a.org/x")));
    assert!(!policy.allows(&id("spiffe://c.org/x")));
    let srv = server_verifier(roots.clone(), policy.clone());
    let cli = client_verifier(roots.clone(), policy);
    for (ca, allowed) in cas.iter().zip([true, true, false]) {
        let who = SpiffeId::from_path(ca.trust_domain(), "/ns/default/sa/w").unwrap();
        let svid = ca.issue(&who, Duration::from_secs(600)).unwrap();
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

/// Runs a handshake in memory and returns how it went on the client side.
fn handshake_kind(
    client: &std::sync::Arc<rustls::ClientConfig>,
    server: &std::sync::Arc<rustls::ServerConfig>,
) -> Option<rustls::HandshakeKind> {
    let name = rustls_pki_types::ServerName::try_from("0.0.0.0").unwrap();
    let mut c = rustls::ClientConnection::new(client.clone(), name).unwrap();
    let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
    // A few extra rounds let the server's session tickets (if any) reach the client.
    for _ in 0..6 {
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        buf.clear();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets().unwrap();
    }
    assert!(!c.is_handshaking() && !s.is_handshaking());
    c.handshake_kind()
}

#[test]
fn data_plane_configs_never_resume_sessions() {
    let ca = ca("cluster.local");
    let roots = TrustBundleSet::from(ca.bundle());
    let client_svid = ca.issue(&id(ALICE), Duration::from_secs(600)).unwrap();
    let server_svid = ca.issue(&id(BOB), Duration::from_secs(600)).unwrap();
    let client = client_config(
        provider::default(),
        &client_svid,
        &roots,
        IdentityPolicy::exact([id(BOB)]),
    )
    .unwrap();
    let server = server_config(
        provider::default(),
        &server_svid,
        &roots,
        IdentityPolicy::SameTrustDomain(td("cluster.local")),
    )
    .unwrap();
    assert_eq!(server.send_tls13_tickets, 0);

    // Control: with rustls' usual resumption settings the second handshake resumes, so the
    // check below can tell the difference.
    let mut resuming_client = client.clone();
    resuming_client.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let mut resuming_server = server.clone();
    resuming_server.session_storage = rustls::server::ServerSessionMemoryCache::new(16);
    resuming_server.send_tls13_tickets = 2;
    let (rc, rs) = (
        std::sync::Arc::new(resuming_client),
        std::sync::Arc::new(resuming_server),
    );
    assert_eq!(handshake_kind(&rc, &rs), Some(rustls::HandshakeKind::Full));
    assert_eq!(
        handshake_kind(&rc, &rs),
        Some(rustls::HandshakeKind::Resumed)
    );

    let (c, s) = (std::sync::Arc::new(client), std::sync::Arc::new(server));
    for _ in 0..3 {
        assert_eq!(handshake_kind(&c, &s), Some(rustls::HandshakeKind::Full));
    }
}

#[test]
fn issued_keys_and_signatures_are_ecdsa_p256() {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
    };
    use x509_parser::prelude::FromDer as _;
    let ca = ca("cluster.local");
    let svid = ca.issue(&id(ALICE), Duration::from_secs(600)).unwrap();
    let from_csr = ca
        .sign_csr(&test_csr(ALICE), &id(ALICE), Duration::from_secs(600))
        .unwrap();
    let csr_leaf = svid::certs_from_pem(from_csr[0].as_bytes()).unwrap();
    for der in [svid.leaf(), &csr_leaf[0], ca.root()] {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
        let spki = cert.public_key();
        assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap();
        assert_eq!(curve, OID_EC_P256);
        assert_eq!(
            cert.signature_algorithm.algorithm,
            OID_SIG_ECDSA_WITH_SHA256
        );
    }
    // The client's CSR key too.
    let csr = make_csr(&id(ALICE)).unwrap();
    let der = CertificateSigningRequestDer::from_pem_slice(csr.csr_pem.as_bytes()).unwrap();
    let (_, parsed) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .unwrap();
    let spki = &parsed.certification_request_info.subject_pki;
    assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    assert_eq!(
        spki.algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap(),
        OID_EC_P256
    );
}

#[test]
fn client_config_debug_hides_credentials() {
    let mut cfg = CaClientConfig::default();
    cfg.token(Token::Static("s3cret-token".into()))
        .header("x-ca-auth", "hunter2");
    let shown = format!("{cfg:?}");
    assert!(shown.contains("x-ca-auth"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("s3cret-token"), "{shown}");
}
