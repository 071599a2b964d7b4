//! Certificate chain and CSR handling on hostile input: PEM and DER SVID loading, peer
//! identity extraction, the SPIFFE verifiers (SVID rules + webpki path building) and CSR
//! verification in the CA. None of it may panic.
//!
//! Random bytes rarely get past the outer DER of a certificate, so most inputs start from a
//! valid chain (leaf + intermediate under the fixture's root) or a valid CSR and edit bytes
//! of it; an unedited chain must verify.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use meshwire_svid::pki_types::pem::PemObject;
use meshwire_svid::pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime,
};
use meshwire_svid::ca::{CaConfig, CertificateAuthority};
use meshwire_svid::service::client::make_csr;
use meshwire_svid::tls::peer_spiffe_id;
use meshwire_svid::verify::SpiffeServerVerifier;
use meshwire_svid::x509::pem_encode;
use meshwire_svid::{IdentityPolicy, SpiffeId, TrustBundleSet, TrustDomain, X509Svid, provider};

/// Byte edits to a valid DER object: (position, value to XOR in), plus an optional cut.
#[derive(Debug, Arbitrary)]
struct Edits {
    xor: Vec<(u16, u8)>,
    truncate: Option<u16>,
}

impl Edits {
    fn apply(&self, der: &[u8]) -> Vec<u8> {
        let mut out = der.to_vec();
        for &(pos, x) in &self.xor {
            let len = out.len();
            if let Some(b) = out.get_mut(usize::from(pos) % len.max(1)) {
                *b ^= x;
            }
        }
        if let Some(t) = self.truncate {
            out.truncate(usize::from(t));
        }
        out
    }

    fn is_identity(&self) -> bool {
        self.xor.iter().all(|&(_, x)| x == 0) && self.truncate.is_none()
    }
}

#[derive(Debug, Arbitrary)]
enum Chain {
    /// Arbitrary certificates.
    Raw(Vec<Vec<u8>>),
    /// The fixture's valid chain with edits to the leaf and the intermediate.
    Edited {
        leaf: Edits,
        intermediate: Edits,
        drop_intermediate: bool,
    },
}

#[derive(Debug, Arbitrary)]
enum Csr {
    /// Arbitrary text.
    Raw(String),
    /// The fixture's valid CSR with edits.
    Edited(Edits),
}

#[derive(Debug, Arbitrary)]
struct Input {
    chain: Chain,
    key: Vec<u8>,
    pem: String,
    csr: Csr,
    /// Seconds since the epoch for the verification time.
    now: u32,
}

struct Fixture {
    ca: CertificateAuthority,
    verifier: Arc<SpiffeServerVerifier>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    csr: Vec<u8>,
    approved: SpiffeId,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let td = TrustDomain::new("cluster.local").expect("valid trust domain");
        let ca = CertificateAuthority::generate_root(&td, CaConfig::default()).expect("root");
        let inter = ca
            .generate_intermediate(CaConfig::default())
            .expect("intermediate");
        let approved = SpiffeId::new("spiffe://cluster.local/ns/fuzz/sa/fuzz").expect("id");
        let svid = inter
            .issue(&approved, Duration::from_secs(86_400))
            .expect("leaf");
        let verifier = SpiffeServerVerifier::builder(provider::default())
            .roots(TrustBundleSet::from(ca.bundle()))
            .policy(IdentityPolicy::SameTrustDomain(td))
            .build_server_verifier()
            .expect("verifier");
        let csr_pem = make_csr(&approved).expect("csr").csr_pem;
        let csr = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .expect("csr pem")
            .as_ref()
            .to_vec();
        Fixture {
            ca,
            verifier,
            chain: svid.cert_chain().to_vec(),
            key: svid.private_key(),
            csr,
            approved,
        }
    })
}

fuzz_target!(|input: Input| {
    let f = fixture();
    let (chain, key, pristine) = match &input.chain {
        Chain::Raw(certs) => (
            certs
                .iter()
                .map(|c| CertificateDer::from(c.clone()))
                .collect(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(input.key.clone())),
            false,
        ),
        Chain::Edited {
            leaf,
            intermediate,
            drop_intermediate,
        } => {
            let mut chain = vec![CertificateDer::from(leaf.apply(&f.chain[0]))];
            if !drop_intermediate {
                chain.push(CertificateDer::from(intermediate.apply(&f.chain[1])));
            }
            let pristine = leaf.is_identity() && intermediate.is_identity() && !drop_intermediate;
            (chain, f.key.clone_key(), pristine)
        }
    };
    let chain: Vec<CertificateDer<'static>> = chain;

    let _ = peer_spiffe_id(&chain);
    if let Some((leaf, rest)) = chain.split_first() {
        let now = UnixTime::since_unix_epoch(Duration::from_secs(u64::from(input.now)));
        let _ = f.verifier.verify_peer(leaf, rest, now);
        if pristine {
            let got = f.verifier.verify_peer(leaf, rest, UnixTime::now());
            assert_eq!(got.as_ref(), Ok(&f.approved), "the unedited chain verifies");
        }
    }
    if let Ok(svid) = X509Svid::from_der(chain, key) {
        assert!(!svid.cert_chain().is_empty());
        assert!(svid.not_before() < svid.not_after());
    }
    let _ = X509Svid::from_pem(input.pem.as_bytes(), input.pem.as_bytes());
    let _ = meshwire_svid::TrustBundle::from_pem(f.ca.trust_domain().clone(), input.pem.as_bytes());

    let csr = match &input.csr {
        Csr::Raw(s) => s.clone(),
        Csr::Edited(edits) => pem_encode("CERTIFICATE REQUEST", &edits.apply(&f.csr)),
    };
    if let Ok(pems) = f.ca.sign_csr(&csr, &f.approved, Duration::from_secs(60)) {
        // Whatever was signed carries only the approved identity.
        let leaf = pems
            .first()
            .map(|p| CertificateDer::from_pem_slice(p.as_bytes()));
        let leaf: CertificateDer<'static> = leaf.expect("a leaf").expect("issued PEM parses");
        assert_eq!(peer_spiffe_id(&[leaf]).as_ref(), Ok(&f.approved));
    }
});
