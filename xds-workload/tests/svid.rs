//! `Identity` to and from `meshwire_svid::SpiffeId` (feature `svid`), part by part.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshwire_svid::{SpiffeId, TrustDomain};
use meshwire_xds_workload::Identity;
use meshwire_xds_workload::workload::{InvalidSpiffeIdentity, NotAnIstioIdentity};

#[test]
fn identity_to_spiffe_id_and_back() {
    let id = Identity::new("cluster.local", "shop", "web");
    let spiffe = SpiffeId::try_from(&id).unwrap();
    assert_eq!(
        spiffe.trust_domain(),
        &TrustDomain::new("cluster.local").unwrap()
    );
    assert_eq!(spiffe.path(), "/ns/shop/sa/web");
    // The same ID the text form parses to.
    assert_eq!(spiffe, SpiffeId::new(&id.to_string()).unwrap());
    assert_eq!(Identity::try_from(&spiffe).unwrap(), id);
    // By value too.
    assert_eq!(
        Identity::try_from(SpiffeId::try_from(id.clone()).unwrap()).unwrap(),
        id
    );
}

#[test]
fn spiffe_id_from_a_built_trust_domain() {
    let td = TrustDomain::new("example.org").unwrap();
    let spiffe = SpiffeId::from_istio(&td, "ns-1", "sa_2").unwrap();
    assert_eq!(
        Identity::try_from(&spiffe).unwrap(),
        Identity::new("example.org", "ns-1", "sa_2")
    );
}

#[test]
fn identities_that_are_not_spiffe_ids_are_rejected_with_the_rule() {
    for (td, ns, sa) in [
        ("Cluster.Local", "shop", "web"), // upper-case trust domain
        ("", "shop", "web"),              // no trust domain
        ("cluster.local", "", "web"),     // empty namespace segment
        ("cluster.local", "shop", "a/b"), // a slash in a segment
        ("cluster.local", "..", "web"),   // a dot segment
        ("cluster.local", "shop", "w b"), // a character paths do not allow
        ("td:8080", "shop", "web"),       // a port
    ] {
        let id = Identity::new(td, ns, sa);
        let err: InvalidSpiffeIdentity = SpiffeId::try_from(&id).unwrap_err();
        assert_eq!(err.identity, id);
        assert!(
            std::error::Error::source(&err).is_some(),
            "{err} carries the SPIFFE rule it broke"
        );
        assert!(
            err.to_string().contains("is not a valid SPIFFE ID"),
            "{err}"
        );
    }
}

#[test]
fn spiffe_ids_that_are_not_istio_identities_are_rejected() {
    for text in [
        "spiffe://cluster.local",
        "spiffe://cluster.local/ns/shop",
        "spiffe://cluster.local/ns/shop/sa/web/extra",
        "spiffe://cluster.local/sa/web/ns/shop",
        "spiffe://cluster.local/workload/web",
    ] {
        let spiffe = SpiffeId::new(text).unwrap();
        let err: NotAnIstioIdentity = Identity::try_from(&spiffe).unwrap_err();
        assert_eq!(err.0, spiffe);
        assert!(err.to_string().contains(text), "{err}");
    }
}
