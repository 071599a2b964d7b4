//! Certificate chain and CSR handling on hostile input: PEM and DER SVID loading, peer
//! identity extraction, the SPIFFE verifiers (SVID rules + webpki path building) and CSR
//! verification in the CA. None of it may panic.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use svid::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use svid::{
    CaConfig, CertificateAuthority, IdentityPolicy, SpiffeServerVerifier, TrustBundleSet,
    TrustDomain, X509Svid, peer_spiffe_id, provider,
};

#[derive(Debug, Arbitrary)]
struct Input {
    certs: Vec<Vec<u8>>,
    key: Vec<u8>,
    pem: String,
    /// Seconds since the epoch for the verification time.
    now: u32,
}

struct Fixture {
    ca: CertificateAuthority,
    verifier: Arc<SpiffeServerVerifier>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let td = TrustDomain::new("cluster.local").expect("valid trust domain");
        let ca = CertificateAuthority::generate_root(&td, CaConfig::default()).expect("root");
        let verifier = SpiffeServerVerifier::builder(provider::default())
            .roots(TrustBundleSet::from(ca.bundle()))
            .policy(IdentityPolicy::SameTrustDomain(td))
            .build_server_verifier()
            .expect("verifier");
        Fixture { ca, verifier }
    })
}

fuzz_target!(|input: Input| {
    let f = fixture();
    let chain: Vec<CertificateDer<'static>> =
        input.certs.iter().map(|c| CertificateDer::from(c.clone())).collect();

    let _ = peer_spiffe_id(&chain);
    if let Some((leaf, rest)) = chain.split_first() {
        let now = UnixTime::since_unix_epoch(Duration::from_secs(u64::from(input.now)));
        let _ = f.verifier.verify_peer(leaf, rest, now);
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(input.key.clone()));
    if let Ok(svid) = X509Svid::from_der(chain, key) {
        assert!(!svid.cert_chain().is_empty());
        assert!(svid.not_before() < svid.not_after());
    }
    let _ = X509Svid::from_pem(input.pem.as_bytes(), input.pem.as_bytes());
    let _ = svid::TrustBundle::from_pem(f.ca.trust_domain().clone(), input.pem.as_bytes());
    let approved = svid::SpiffeId::new("spiffe://cluster.local/ns/fuzz/sa/fuzz").expect("valid id");
    if let Ok(pems) = f.ca.sign_csr(&input.pem, &approved, Duration::from_secs(60)) {
        // Whatever was signed carries only the approved identity.
        let leaf = svid::pki_types::pem::PemObject::from_pem_slice(pems[0].as_bytes());
        let leaf: CertificateDer<'static> = leaf.expect("issued PEM parses");
        assert_eq!(peer_spiffe_id(&[leaf]).as_ref(), Ok(&approved));
    }
});
