//! Round trips through the `spiffe` crate's types, and the refusals of each side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshwire_svid::spiffe::ConversionError;
use meshwire_svid::test_util::TestPki;
use meshwire_svid::{SpiffeId, SvidError, TrustBundle, TrustBundleSet, TrustDomain, X509Svid};

#[test]
fn spiffe_id_round_trip() {
    for s in [
        "spiffe://cluster.local/ns/default/sa/web",
        "spiffe://example.org",
        "spiffe://td-with_under.score.9/Path/With.Dots/and-dash_/UPPER",
    ] {
        let ours = SpiffeId::new(s).unwrap();
        let theirs = spiffe::SpiffeId::try_from(&ours).unwrap();
        assert_eq!(theirs.to_string(), s);
        assert_eq!(theirs.trust_domain_name(), ours.trust_domain().as_str());
        assert_eq!(theirs.path(), ours.path());
        assert_eq!(SpiffeId::try_from(&theirs).unwrap(), ours);
        // Owned forms too.
        let back: SpiffeId = spiffe::SpiffeId::try_from(ours.clone())
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(back, ours);
    }
}

#[test]
fn trust_domain_round_trip() {
    let ours = TrustDomain::new("cluster.local").unwrap();
    let theirs = spiffe::TrustDomain::try_from(&ours).unwrap();
    assert_eq!(theirs.as_str(), "cluster.local");
    assert_eq!(TrustDomain::try_from(theirs).unwrap(), ours);
}

#[test]
fn x509_svid_round_trip() {
    let pki = TestPki::new("cluster.local").with_intermediate();
    let ours = pki.svid(&pki.istio_id("default", "web"));
    let theirs = spiffe::X509Svid::try_from(&ours).unwrap();
    assert_eq!(theirs.spiffe_id().to_string(), ours.spiffe_id().to_string());
    assert_eq!(theirs.cert_chain().len(), 2);
    assert_eq!(theirs.leaf().as_bytes(), ours.leaf().as_ref());
    assert_eq!(
        theirs.private_key().as_bytes(),
        ours.private_key().secret_der()
    );
    let back = X509Svid::try_from(theirs).unwrap();
    assert_eq!(back.spiffe_id(), ours.spiffe_id());
    assert_eq!(back.cert_chain(), ours.cert_chain());
    assert_eq!(
        back.private_key().secret_der(),
        ours.private_key().secret_der()
    );
}

#[test]
fn an_expired_svid_from_the_spiffe_crate_is_refused() {
    let pki = TestPki::new("cluster.local");
    let (chain, key) = pki.expired(&pki.istio_id("default", "web"));
    let der: Vec<u8> = chain.iter().flat_map(|c| c.as_ref().to_vec()).collect();
    // The spiffe crate does not check validity; this crate does.
    let theirs = spiffe::X509Svid::parse_from_der(&der, key.secret_der()).unwrap();
    assert!(matches!(
        X509Svid::try_from(&theirs).unwrap_err(),
        ConversionError::Svid(SvidError::Expired)
    ));
}

#[test]
fn bundles_round_trip() {
    let a = TestPki::new("a.org");
    let b = TestPki::new("b.org");
    let extra = TestPki::new("a.org");
    let two_roots = TrustBundle::new(
        a.trust_domain().clone(),
        [a.bundle().roots(), extra.bundle().roots()].concat(),
    )
    .unwrap();

    let theirs = spiffe::X509Bundle::try_from(&two_roots).unwrap();
    assert_eq!(theirs.trust_domain().as_str(), "a.org");
    assert_eq!(theirs.authorities().len(), 2);
    let back = TrustBundle::try_from(&theirs).unwrap();
    assert_eq!(back.roots(), two_roots.roots());

    let set: TrustBundleSet = [two_roots.clone(), b.bundle()].into_iter().collect();
    let theirs = spiffe::X509BundleSet::try_from(&set).unwrap();
    assert_eq!(theirs.len(), 2);
    let back = TrustBundleSet::try_from(theirs).unwrap();
    assert_eq!(back.len(), 2);
    for bundle in set.iter() {
        let got = back.get(bundle.trust_domain()).unwrap();
        assert_eq!(got.roots(), bundle.roots());
    }
}

#[test]
fn an_empty_bundle_from_the_spiffe_crate_is_refused() {
    let td = spiffe::TrustDomain::new("a.org").unwrap();
    let empty = spiffe::X509Bundle::new(td);
    assert!(matches!(
        TrustBundle::try_from(&empty).unwrap_err(),
        ConversionError::Bundle(_)
    ));
    let set: spiffe::X509BundleSet = [empty].into_iter().collect();
    assert!(TrustBundleSet::try_from(&set).is_err());
}
