//! A throw-away test PKI, so that the tests of crates built on this one stop building their
//! own certificate fixtures. **Never for production**: keys live in memory, and the helpers
//! panic on the errors a test cannot recover from.
//!
//! [`TestPki`] is a root CA for one trust domain (optionally signing through an
//! intermediate) that issues SVIDs for given SPIFFE IDs, expired and not-yet-valid chains,
//! leaves that break the X.509-SVID rules ([`TestLeaf`]), and ready data-plane
//! configurations. With the `manager` feature it is also a
//! [`CertificateSource`](crate::manager::CertificateSource), so a
//! [`CertificateManager`](crate::manager::CertificateManager) under test can fetch from it
//! (share it with an `Arc`).
//!
//! ```
//! use meshwire_svid::IdentityPolicy;
//! use meshwire_svid::test_util::TestPki;
//!
//! let pki = TestPki::new("cluster.local");
//! let client = pki.istio_id("default", "sleep");
//! let server = pki.istio_id("default", "httpbin");
//! let svid = pki.svid(&client);
//! assert_eq!(svid.spiffe_id(), &client);
//! let _config = pki.client_config(&client, IdentityPolicy::exact([server]));
//! // A peer of another trust domain: its own PKI.
//! let other = TestPki::new("other.org");
//! assert!(pki.roots().get(other.trust_domain()).is_none());
//! ```
// A fixture that cannot be built is a broken test: panicking with the reason is the point.
#![allow(clippy::expect_used)]

use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType,
};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::bundle::{TrustBundle, TrustBundleSet};
use crate::ca::{CaConfig, CertificateAuthority};
use crate::id::{SpiffeId, TrustDomain};
use crate::verify::IdentityPolicy;
use crate::x509::X509Svid;

/// A certificate chain (leaf first, then intermediates) and the leaf's PKCS#8 key, for leaves
/// an [`X509Svid`] would refuse.
pub type Chain = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A test CA for one trust domain and the trust bundles that trust it.
#[derive(Debug)]
pub struct TestPki {
    ca: CertificateAuthority,
    roots: TrustBundleSet,
}

impl TestPki {
    /// A fresh root CA (ECDSA P-256) for `trust_domain`, with a zero backdate, so an SVID's
    /// lifetime is exactly the one asked for.
    ///
    /// # Panics
    /// If `trust_domain` is not a valid trust domain name.
    pub fn new(trust_domain: &str) -> Self {
        let td = TrustDomain::new(trust_domain).expect("a valid trust domain name");
        let config = CaConfig {
            backdate: Duration::ZERO,
            ..CaConfig::default()
        };
        let ca = CertificateAuthority::generate_root(&td, config).expect("a test root CA");
        let roots = TrustBundleSet::from(ca.bundle());
        Self { ca, roots }
    }

    /// A PKI of the same trust domain and root whose leaves are signed by a new intermediate
    /// CA, so chains carry the intermediate.
    pub fn with_intermediate(&self) -> Self {
        let ca = self
            .ca
            .generate_intermediate(self.ca.config().clone())
            .expect("a test intermediate CA");
        Self {
            ca,
            roots: self.roots.clone(),
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        self.ca.trust_domain()
    }

    /// The CA that signs the leaves.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The root of the trust domain as a bundle.
    pub fn bundle(&self) -> TrustBundle {
        self.ca.bundle()
    }

    /// Bundles holding this PKI's root for its trust domain.
    pub fn roots(&self) -> &TrustBundleSet {
        &self.roots
    }

    /// `spiffe://<trust domain><path>`.
    ///
    /// # Panics
    /// If `path` is not a valid SPIFFE ID path.
    pub fn id(&self, path: &str) -> SpiffeId {
        SpiffeId::from_path(self.trust_domain(), path).expect("a valid SPIFFE ID path")
    }

    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    ///
    /// # Panics
    /// If the namespace or service account is not a valid path segment.
    pub fn istio_id(&self, namespace: &str, service_account: &str) -> SpiffeId {
        SpiffeId::from_istio(self.trust_domain(), namespace, service_account)
            .expect("a valid namespace and service account")
    }

    /// An SVID for `id`, valid from now for one hour.
    ///
    /// # Panics
    /// If `id` is outside the trust domain.
    pub fn svid(&self, id: &SpiffeId) -> X509Svid {
        self.svid_for(id, Duration::from_secs(3600))
    }

    /// An SVID for `id`, valid from now for `ttl`.
    ///
    /// # Panics
    /// If `id` is outside the trust domain or `ttl` is zero.
    pub fn svid_for(&self, id: &SpiffeId, ttl: Duration) -> X509Svid {
        self.ca
            .issue(id, ttl)
            .expect("an SVID for the test identity")
    }

    /// A chain for `id` that expired an hour ago (valid for the hour before).
    pub fn expired(&self, id: &SpiffeId) -> Chain {
        let now = SystemTime::now();
        self.valid_between(
            id,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
    }

    /// A chain for `id` that becomes valid in an hour (for an hour).
    pub fn not_yet_valid(&self, id: &SpiffeId) -> Chain {
        let now = SystemTime::now();
        self.valid_between(
            id,
            now + Duration::from_secs(3600),
            now + Duration::from_secs(7200),
        )
    }

    /// A chain for `id` valid between the two instants (to the second).
    ///
    /// # Panics
    /// If a bound lies outside what X.509 can express.
    pub fn valid_between(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Chain {
        self.ca
            .issue_with_validity(id, not_before, not_after)
            .expect("a chain with the given validity")
    }

    /// A leaf shaped by `leaf`, signed by this PKI's CA; nothing is checked, so it may break
    /// any X.509-SVID rule (a leaf for another trust domain included).
    pub fn leaf(&self, leaf: &TestLeaf) -> Chain {
        self.ca
            .sign_params(&leaf.params())
            .expect("a leaf with the given shape")
    }

    /// A data-plane client configuration ([`crate::tls::client_config`], the default provider)
    /// presenting a fresh SVID for `id` and accepting servers that satisfy `expected`.
    pub fn client_config(&self, id: &SpiffeId, expected: IdentityPolicy) -> rustls::ClientConfig {
        crate::tls::client_config(
            crate::provider::default(),
            &self.svid(id),
            &self.roots,
            expected,
        )
        .expect("a data-plane client configuration")
    }

    /// A data-plane server configuration ([`crate::tls::server_config`], the default provider)
    /// presenting a fresh SVID for `id` and accepting clients of this trust domain.
    pub fn server_config(&self, id: &SpiffeId) -> rustls::ServerConfig {
        let clients = IdentityPolicy::SameTrustDomain(self.trust_domain().clone());
        crate::tls::server_config(
            crate::provider::default(),
            &self.svid(id),
            &self.roots,
            clients,
        )
        .expect("a data-plane server configuration")
    }
}

/// Issues through the test CA (with its `max_ttl`) and returns the root, as the CA itself
/// does.
#[cfg(feature = "manager")]
impl crate::manager::CertificateSource for TestPki {
    type Error = crate::ca::CaError;
    fn fetch(
        &self,
        id: &SpiffeId,
    ) -> impl Future<Output = Result<crate::x509::FetchedSvid, Self::Error>> + Send {
        crate::manager::CertificateSource::fetch(&self.ca, id)
    }
}

/// Runs a TLS handshake between `client` and `server` in memory, then carries whatever the
/// two sides still have to say (session tickets, alerts) until both are quiet, and returns
/// both connections. The client connects to `0.0.0.0` (the data plane checks no server
/// name). The error is the first one either side reports.
pub fn handshake(
    client: &Arc<rustls::ClientConfig>,
    server: &Arc<rustls::ServerConfig>,
) -> Result<(rustls::ClientConnection, rustls::ServerConnection), rustls::Error> {
    let name = ServerName::try_from("0.0.0.0").expect("an IP address is a server name");
    let mut c = rustls::ClientConnection::new(client.clone(), name)?;
    let mut s = rustls::ServerConnection::new(server.clone())?;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        c.write_tls(&mut buf).expect("writing to memory");
        let client_spoke = !buf.is_empty();
        s.read_tls(&mut buf.as_slice())
            .expect("reading from memory");
        s.process_new_packets()?;
        buf.clear();
        s.write_tls(&mut buf).expect("writing to memory");
        let server_spoke = !buf.is_empty();
        c.read_tls(&mut buf.as_slice())
            .expect("reading from memory");
        c.process_new_packets()?;
        if !client_spoke && !server_spoke {
            return Ok((c, s));
        }
    }
}

/// The shape of a leaf for [`TestPki::leaf`]. The default is an SVID-like leaf without any
/// SAN: set [`uris`](Self::uris) to give it identities.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TestLeaf {
    /// URI SANs, as written. Default: none.
    pub uris: Vec<String>,
    /// DNS SANs. Default: none.
    pub dns_names: Vec<String>,
    /// Subject common name. Default: none (empty subject).
    pub common_name: Option<String>,
    /// `basicConstraints cA=true`. Default: `false`.
    pub is_ca: bool,
    /// The `digitalSignature` key usage. Default: `true`.
    pub digital_signature: bool,
    /// The `keyEncipherment` key usage. Default: `true`.
    pub key_encipherment: bool,
    /// The `keyCertSign` key usage. Default: `false`. With no key usage at all the extension
    /// is left out.
    pub key_cert_sign: bool,
    /// The `serverAuth` extended key usage. Default: `true`.
    pub server_auth: bool,
    /// The `clientAuth` extended key usage. Default: `true`. With neither the extension is
    /// left out.
    pub client_auth: bool,
    /// Start of validity. Default: a minute ago.
    pub not_before: Option<SystemTime>,
    /// End of validity. Default: an hour from now.
    pub not_after: Option<SystemTime>,
}

impl Default for TestLeaf {
    fn default() -> Self {
        Self {
            uris: Vec::new(),
            dns_names: Vec::new(),
            common_name: None,
            is_ca: false,
            digital_signature: true,
            key_encipherment: true,
            key_cert_sign: false,
            server_auth: true,
            client_auth: true,
            not_before: None,
            not_after: None,
        }
    }
}

impl TestLeaf {
    fn params(&self) -> CertificateParams {
        let ia5 = |s: &String| Ia5String::try_from(s.clone()).expect("an IA5 string");
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        if let Some(cn) = &self.common_name {
            p.distinguished_name.push(DnType::CommonName, cn.as_str());
        }
        p.subject_alt_names = self.uris.iter().map(|u| SanType::URI(ia5(u))).collect();
        p.subject_alt_names
            .extend(self.dns_names.iter().map(|d| SanType::DnsName(ia5(d))));
        p.is_ca = if self.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        let usages = [
            (self.digital_signature, KeyUsagePurpose::DigitalSignature),
            (self.key_encipherment, KeyUsagePurpose::KeyEncipherment),
            (self.key_cert_sign, KeyUsagePurpose::KeyCertSign),
        ];
        p.key_usages = usages.into_iter().filter(|u| u.0).map(|u| u.1).collect();
        let ekus = [
            (self.server_auth, ExtendedKeyUsagePurpose::ServerAuth),
            (self.client_auth, ExtendedKeyUsagePurpose::ClientAuth),
        ];
        p.extended_key_usages = ekus.into_iter().filter(|e| e.0).map(|e| e.1).collect();
        let now = SystemTime::now();
        p.not_before = self
            .not_before
            .unwrap_or(now - Duration::from_secs(60))
            .into();
        p.not_after = self
            .not_after
            .unwrap_or(now + Duration::from_secs(3600))
            .into();
        p
    }
}
