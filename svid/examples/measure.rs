//! Rough costs of the identity operations, as ratios to one ECDSA P-256 key generation
//! measured in the same run. Run in release mode:
//! `cargo run --release -p meshwire-svid --features test-util --example measure`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use meshwire_svid::ca::{CaConfig, CertificateAuthority};
use meshwire_svid::pki_types::UnixTime;
use meshwire_svid::service::client::make_csr;
use meshwire_svid::test_util::handshake;
use meshwire_svid::verify::SpiffeServerVerifier;
use meshwire_svid::{IdentityPolicy, SpiffeId, TrustBundleSet, TrustDomain, provider, tls};

fn time<T>(iters: u32, mut f: impl FnMut() -> T) -> Duration {
    for _ in 0..iters.min(10) {
        black_box(f());
    }
    let start = Instant::now();
    for _ in 0..iters {
        black_box(f());
    }
    start.elapsed() / iters
}

fn main() {
    let td = TrustDomain::new("cluster.local").unwrap();
    let ca = CertificateAuthority::generate_root(&td, CaConfig::default()).unwrap();
    let id = SpiffeId::from_istio(&td, "default", "sleep").unwrap();
    let peer = SpiffeId::from_istio(&td, "default", "httpbin").unwrap();
    let roots = TrustBundleSet::from(ca.bundle());
    let svid = ca.issue(&id, Duration::from_secs(3600)).unwrap();
    let peer_svid = ca.issue(&peer, Duration::from_secs(3600)).unwrap();
    let verifier = SpiffeServerVerifier::builder(provider::default())
        .roots(roots.clone())
        .expect_ids([peer.clone()])
        .build_server_verifier()
        .unwrap();
    let csr = make_csr(&id).unwrap();
    let client = std::sync::Arc::new(
        tls::client_config(
            provider::default(),
            &svid,
            &roots,
            IdentityPolicy::exact([peer.clone()]),
        )
        .unwrap(),
    );
    let server = std::sync::Arc::new(
        tls::server_config(
            provider::default(),
            &peer_svid,
            &roots,
            IdentityPolicy::SameTrustDomain(td.clone()),
        )
        .unwrap(),
    );

    let baseline = time(2000, || {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    });
    let rows: Vec<(&str, Duration)> = vec![
        (
            "parse SPIFFE ID",
            time(200_000, || {
                SpiffeId::new("spiffe://cluster.local/ns/default/sa/sleep").unwrap()
            }),
        ),
        ("make key + CSR", time(2000, || make_csr(&id).unwrap())),
        (
            "CA: verify + sign CSR",
            time(2000, || {
                ca.sign_csr(&csr.csr_pem, &id, Duration::from_secs(3600))
                    .unwrap()
            }),
        ),
        (
            "CA: issue SVID (key + leaf)",
            time(2000, || ca.issue(&id, Duration::from_secs(3600)).unwrap()),
        ),
        (
            "verify peer chain + identity",
            time(5000, || {
                verifier
                    .verify_peer(peer_svid.leaf(), &[], UnixTime::now())
                    .unwrap()
            }),
        ),
        (
            "mutual TLS 1.3 handshake (in memory)",
            time(500, || handshake(&client, &server).unwrap()),
        ),
    ];
    println!(
        "baseline: P-256 key generation {:.1} us",
        baseline.as_secs_f64() * 1e6
    );
    for (name, d) in rows {
        println!(
            "{name:40} {:>10.2} us  {:>8.2}x baseline",
            d.as_secs_f64() * 1e6,
            d.as_secs_f64() / baseline.as_secs_f64()
        );
    }
}
