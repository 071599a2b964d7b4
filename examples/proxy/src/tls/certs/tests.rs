use std::sync::Arc;

use meshwire_svid::test_util::TestPki;
use meshwire_svid::{IdentityPolicy, SpiffeId};

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
