//! Issues an X.509-SVID from a fresh CA and verifies it the way a TLS peer would: chain to
//! the trust bundle, then the identity policy. A second CA's SVID is refused.
//!
//! `cargo run -p meshwire-svid --example issue_and_verify`

use std::time::Duration;

use meshwire_svid::ca::{CaConfig, CertificateAuthority};
use meshwire_svid::pki_types::UnixTime;
use meshwire_svid::verify::SpiffeServerVerifier;
use meshwire_svid::{IdentityPolicy, SpiffeId, TrustBundleSet, TrustDomain, provider};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let td: TrustDomain = "cluster.local".parse()?;
    let ca = CertificateAuthority::generate_root(&td, CaConfig::default())?;
    let id = SpiffeId::from_istio(&td, "default", "reviews")?;

    let svid = ca.issue(&id, Duration::from_secs(3600))?;
    println!(
        "issued {} (refresh at {:?})",
        svid.spiffe_id(),
        svid.refresh_at()
    );
    print!("{}", svid.cert_chain_pem());

    let verifier = SpiffeServerVerifier::builder(provider::default())
        .roots(TrustBundleSet::from(ca.bundle()))
        .policy(IdentityPolicy::exact([id.clone()]))
        .build_server_verifier()?;
    let (leaf, intermediates) = (svid.leaf(), &svid.cert_chain()[1..]);
    let peer = verifier.verify_peer(leaf, intermediates, UnixTime::now())?;
    println!("verified: {peer}");

    // The same identity from a CA the bundle does not hold is refused.
    let stranger = CertificateAuthority::generate_root(&td, CaConfig::default())?;
    let forged = stranger.issue(&id, Duration::from_secs(3600))?;
    match verifier.verify_peer(forged.leaf(), &[], UnixTime::now()) {
        Ok(_) => return Err("an SVID from an unknown CA was accepted".into()),
        Err(e) => println!("refused an SVID from another CA: {e}"),
    }
    Ok(())
}
