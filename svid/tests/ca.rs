//! The CA: what it signs, what it refuses, how it persists; and the certificate-service
//! client's own checks of a CA's answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use meshwire_svid::ca::{CaConfig, CaError, CertificateAuthority};
use meshwire_svid::pki_types::pem::PemObject;
use meshwire_svid::pki_types::{CertificateDer, CertificateSigningRequestDer, UnixTime};
use meshwire_svid::service::client::{
    CaClientConfig, CaClientError, Token, make_csr, svid_from_response,
};
use meshwire_svid::test_util::TestPki;
use meshwire_svid::verify::SpiffeServerVerifier;
use meshwire_svid::x509::pem_encode;
use meshwire_svid::{IdentityPolicy, SpiffeId, SvidError, TrustDomain, provider, tls};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

const ALICE: &str = "spiffe://cluster.local/ns/default/sa/alice";
const BOB: &str = "spiffe://cluster.local/ns/default/sa/bob";

/// The trust domain of most tests.
fn cluster_local() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn ca(trust_domain: &str) -> CertificateAuthority {
    let td = TrustDomain::new(trust_domain).unwrap();
    CertificateAuthority::generate_root(&td, CaConfig::default()).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

fn csr(san: &str) -> String {
    make_csr(&id(san)).unwrap().csr_pem
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).unwrap().1
}

#[test]
fn ttl_is_capped() {
    let mut cfg = CaConfig::default();
    cfg.max_ttl = Duration::from_secs(600);
    cfg.backdate = Duration::ZERO;
    let ca = CertificateAuthority::generate_root(&cluster_local(), cfg).unwrap();
    let svid = ca.issue(&id(ALICE), Duration::from_secs(86400)).unwrap();
    let life = svid.not_after().duration_since(svid.not_before()).unwrap();
    assert!(life <= Duration::from_secs(601), "{life:?}");
    assert_eq!(
        ca.issue(&id(ALICE), Duration::ZERO).unwrap_err(),
        CaError::ZeroTtl
    );
    // The default backdate starts a leaf a minute early.
    let svid = self::ca("cluster.local")
        .issue(&id(ALICE), Duration::from_secs(3600))
        .unwrap();
    let life = svid.not_after().duration_since(svid.not_before()).unwrap();
    assert_eq!(life, Duration::from_secs(3600 + 60));
}

#[test]
fn ca_signs_csr_with_only_the_approved_identity() {
    let ca = ca("cluster.local");
    let pems = ca
        .sign_csr(&csr(ALICE), &id(ALICE), Duration::from_secs(600))
        .unwrap();
    assert_eq!(pems.len(), 2);
    assert_eq!(pems[1], ca.root_pem());
    let chain = certs(&pems[0]);
    assert_eq!(tls::peer_spiffe_id(&chain).unwrap(), id(ALICE));
    // The x509 view: serverAuth + clientAuth, not a CA, empty subject, critical SAN.
    let cert = parse(&chain[0]);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!cert.is_ca());
    assert!(cert.subject().iter_attributes().next().is_none());
    assert!(cert.subject_alternative_name().unwrap().unwrap().critical);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    // Serial numbers are random: two signings of the same CSR differ.
    let again = ca
        .sign_csr(&csr(ALICE), &id(ALICE), Duration::from_secs(600))
        .unwrap();
    let serial = |pem: &str| parse(&certs(pem)[0]).raw_serial().to_vec();
    assert_ne!(serial(&pems[0]), serial(&again[0]));
    assert!(serial(&pems[0]).len() >= 16);

    // A CSR asking for another identity than the approved one is refused.
    let e = ca
        .sign_csr(&csr(BOB), &id(ALICE), Duration::from_secs(600))
        .unwrap_err();
    assert!(matches!(e, CaError::IdentityMismatch { .. }), "{e:?}");
    // An identity outside the trust domain is refused.
    let other = "spiffe://other.org/ns/a/sa/b";
    let e = ca
        .sign_csr(&csr(other), &id(other), Duration::from_secs(600))
        .unwrap_err();
    assert!(matches!(e, CaError::ForeignTrustDomain { .. }), "{e:?}");
    assert!(matches!(
        ca.sign_csr("not a csr", &id(ALICE), Duration::from_secs(1))
            .unwrap_err(),
        CaError::CsrPem(_)
    ));

    // Through an intermediate the answer is leaf, intermediate, root.
    let inter = ca.generate_intermediate(CaConfig::default()).unwrap();
    let pems = inter
        .sign_csr(&csr(ALICE), &id(ALICE), Duration::from_secs(600))
        .unwrap();
    assert_eq!(pems.len(), 3);
    assert_eq!(pems[2], ca.root_pem());
}

#[test]
fn ca_refuses_forged_csr() {
    let ca = ca("cluster.local");
    let pem = csr(ALICE);
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    // Change the requested identity inside the signed part: alice -> alicf.
    let pos = der.windows(5).position(|w| w == b"alice").unwrap();
    let mut forged = der.clone();
    forged[pos + 4] = b'f';
    let forged_pem = pem_encode("CERTIFICATE REQUEST", &forged);
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
    let forged_pem = pem_encode("CERTIFICATE REQUEST", &forged);
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
    assert_eq!(
        loaded.trust_domain(),
        &TrustDomain::new("example.org").unwrap()
    );
    assert_eq!(loaded.root(), ca.root());
    let svid = loaded
        .issue(&id("spiffe://example.org/w"), Duration::from_secs(60))
        .unwrap();
    let v = SpiffeServerVerifier::builder(provider::default())
        .roots(meshwire_svid::TrustBundleSet::from(ca.bundle()))
        .policy(IdentityPolicy::SameTrustDomain(
            loaded.trust_domain().clone(),
        ))
        .build_server_verifier()
        .unwrap();
    assert!(v.verify_peer(svid.leaf(), &[], UnixTime::now()).is_ok());

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
    assert!(v.verify_peer(leaf, rest, UnixTime::now()).is_ok());

    // Wrong key, leaf as CA, chain without root.
    let other = self::ca("example.org");
    let load = |chain: &str, key: &str| {
        CertificateAuthority::from_pem(chain.as_bytes(), key.as_bytes(), CaConfig::default())
    };
    assert_eq!(
        load(&ca.cert_chain_pem(), &other.private_key_pem()).unwrap_err(),
        CaError::KeyMismatch
    );
    assert_eq!(
        load(&svid.cert_chain_pem(), &other.private_key_pem()).unwrap_err(),
        CaError::NotACa
    );
    let inter_only = pem_encode("CERTIFICATE", &certs(&inter.cert_chain_pem())[0]);
    assert_eq!(
        load(&inter_only, &inter.private_key_pem()).unwrap_err(),
        CaError::NoRoot
    );
}

#[test]
fn extreme_lifetimes_are_cut_or_refused_without_panicking() {
    // An uncapped CA asked for absurd lifetimes (a request's validity_duration comes from
    // the wire) issues up to the last time X.509 can express.
    let mut cfg = CaConfig::default();
    cfg.max_ttl = Duration::MAX;
    cfg.ca_ttl = Duration::MAX;
    let ca = CertificateAuthority::generate_root(&cluster_local(), cfg).unwrap();
    let end_of_x509 = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    for ttl in [Duration::from_secs(20_000 * 365 * 86_400), Duration::MAX] {
        let svid = ca.issue(&id(ALICE), ttl).unwrap();
        assert_eq!(svid.not_after(), end_of_x509);
        let pems = ca.sign_csr(&csr(ALICE), &id(ALICE), ttl).unwrap();
        let leaf = parse(&certs(&pems[0])[0]).validity().not_after.timestamp();
        assert_eq!(leaf, 253_402_300_799);
    }
    assert_eq!(
        parse(ca.root()).validity().not_after.timestamp(),
        253_402_300_799
    );

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
    cfg.backdate = Duration::MAX;
    assert_eq!(
        CertificateAuthority::generate_root(&cluster_local(), cfg.clone()).unwrap_err(),
        CaError::ValidityOutOfRange
    );
    assert_eq!(
        ca.generate_intermediate(cfg).unwrap_err(),
        CaError::ValidityOutOfRange
    );
}

#[test]
fn issued_keys_and_signatures_are_ecdsa_p256() {
    let ca = ca("cluster.local");
    let svid = ca.issue(&id(ALICE), Duration::from_secs(600)).unwrap();
    let from_csr = ca
        .sign_csr(&csr(ALICE), &id(ALICE), Duration::from_secs(600))
        .unwrap();
    let csr_leaf = certs(&from_csr[0]);
    for der in [svid.leaf(), &csr_leaf[0], ca.root()] {
        let cert = parse(der);
        assert_p256(cert.public_key());
        assert_eq!(
            cert.signature_algorithm.algorithm,
            OID_SIG_ECDSA_WITH_SHA256
        );
    }
    // The client's CSR key too.
    let pem = csr(ALICE);
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, parsed) = X509CertificationRequest::from_der(der.as_ref()).unwrap();
    assert_p256(&parsed.certification_request_info.subject_pki);
}

fn assert_p256(spki: &SubjectPublicKeyInfo<'_>) {
    assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    let params = spki.algorithm.parameters.as_ref().unwrap();
    assert_eq!(params.as_oid().unwrap(), OID_EC_P256);
}

#[test]
fn client_checks_the_returned_chain() {
    let pki = TestPki::new("cluster.local");
    let inter = pki.with_intermediate();
    let want = id(ALICE);
    let csr = make_csr(&want).unwrap();
    assert!(format!("{csr:?}").contains("redacted"));
    // The CSR carries an empty subject and one critical URI SAN: the identity.
    let der = CertificateSigningRequestDer::from_pem_slice(csr.csr_pem.as_bytes()).unwrap();
    let (_, parsed) = X509CertificationRequest::from_der(der.as_ref()).unwrap();
    let subject = &parsed.certification_request_info.subject;
    assert!(subject.iter_attributes().next().is_none());
    let exts: Vec<_> = parsed.requested_extensions().unwrap().collect();
    let [ParsedExtension::SubjectAlternativeName(san)] = exts.as_slice() else {
        panic!("{exts:?}");
    };
    assert!(matches!(san.general_names.as_slice(), [GeneralName::URI(u)] if *u == ALICE));
    // subjectAltName (2.5.29.17) marked critical: OID followed by BOOLEAN TRUE.
    let critical_san = [0x06, 0x03, 0x55, 0x1d, 0x11, 0x01, 0x01, 0xff];
    assert!(der.as_ref().windows(8).any(|w| w == critical_san));

    // Leaf, intermediate, and a last element with two roots.
    let mut pems = inter
        .ca()
        .sign_csr(&csr.csr_pem, &want, Duration::from_secs(600))
        .unwrap();
    let extra_root = TestPki::new("cluster.local");
    let last = pems.pop().unwrap();
    pems.push(format!("{last}{}", extra_root.ca().root_pem()));
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
    let pems_b = pki
        .ca()
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

#[test]
fn client_config_debug_hides_credentials() {
    let mut cfg = CaClientConfig::default();
    cfg.token = Token::Static("s3cret-token".into());
    cfg.extra_headers
        .push(("x-ca-auth".into(), "hunter2".into()));
    let shown = format!("{cfg:?}");
    assert!(shown.contains("x-ca-auth"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("s3cret-token"), "{shown}");
}
