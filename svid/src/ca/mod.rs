//! A small certificate authority that issues X.509-SVIDs: [`CertificateAuthority`] generates
//! or loads a root (optionally an intermediate), signs PKCS#10 CSRs after verifying their
//! self-signature, and issues ECDSA P-256 SVIDs and control-plane serving certificates.

#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!(
    "the `ca` feature of meshwire-svid needs a crypto provider: enable `ring` or `aws-lc-rs`"
);

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::bundle::TrustBundle;
use crate::id::{SpiffeId, TrustDomain};
use crate::x509::{SvidError, X509Svid, cert_to_pem, certs_from_pem, pem_encode};

/// Settings of a [`CertificateAuthority`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CaConfig {
    /// Longest lifetime of an issued leaf; longer requests are cut to this. Default: 24 hours.
    /// (Any lifetime also ends at 9999-12-31T23:59:59Z, the last time X.509 can express.)
    pub max_ttl: Duration,
    /// How long before the moment of issue a leaf becomes valid, to tolerate clock skew
    /// between peers. Default: 60 seconds.
    pub backdate: Duration,
    /// Lifetime of a generated root or intermediate. Default: 10 years.
    pub ca_ttl: Duration,
    /// Trust domain assumed by [`CertificateAuthority::from_pem`] when neither the signing
    /// certificate nor the root carries a SPIFFE URI SAN. Default: `cluster.local`.
    pub trust_domain: TrustDomain,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            max_ttl: Duration::from_secs(24 * 3600),
            backdate: Duration::from_secs(60),
            ca_ttl: Duration::from_secs(10 * 365 * 24 * 3600),
            trust_domain: TrustDomain("cluster.local".to_owned()),
        }
    }
}

/// Why the CA refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The CSR is not PEM `CERTIFICATE REQUEST`.
    #[error("CSR is not a PEM certificate request: {0}")]
    CsrPem(String),
    /// The CSR is not valid PKCS#10.
    #[error("CSR is not valid PKCS#10: {0}")]
    CsrParse(String),
    /// The CSR's self-signature does not verify.
    #[error("CSR signature does not verify")]
    CsrSignature,
    /// The CSR's key type is not supported.
    #[error("CSR public key is not supported: {0}")]
    CsrKey(String),
    /// The CSR asks for URI SANs other than exactly the approved identity.
    #[error("CSR requests {requested:?} but the approved identity is {approved}")]
    IdentityMismatch {
        /// URI SANs found in the CSR.
        requested: Vec<String>,
        /// The identity the caller was approved for.
        approved: SpiffeId,
    },
    /// The identity is outside this CA's trust domain.
    #[error("identity {id} is outside the CA's trust domain {ca}")]
    ForeignTrustDomain {
        /// The identity.
        id: SpiffeId,
        /// The CA's trust domain.
        ca: TrustDomain,
    },
    /// The identity names a trust domain rather than a workload.
    #[error("identity {0} has an empty path")]
    EmptyPath(SpiffeId),
    /// A TTL of zero was requested.
    #[error("requested TTL is zero")]
    ZeroTtl,
    /// A validity bound lies outside what a certificate can carry (before 1970 or after
    /// 9999-12-31T23:59:59Z), or the backdate reaches before 1970.
    #[error("certificate validity bound is out of range")]
    ValidityOutOfRange,
    /// The CA material is unusable.
    #[error("CA certificate or key: {0}")]
    BadCaMaterial(String),
    /// The CA certificate is not a CA.
    #[error("signing certificate is not a CA")]
    NotACa,
    /// The CA key does not match the signing certificate.
    #[error("CA private key does not match the signing certificate")]
    KeyMismatch,
    /// The chain does not end in a self-signed root.
    #[error("CA certificate chain does not end in a self-signed root")]
    NoRoot,
    /// The issued certificate is not a valid SVID (a bug if it happens).
    #[error("issued certificate is not a valid SVID: {0}")]
    Svid(#[from] SvidError),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(String),
}

fn gen_err(e: rcgen::Error) -> CaError {
    CaError::Generate(e.to_string())
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    // Positive and without leading zero bytes, so the DER INTEGER keeps all 16 bytes.
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

/// The last second an X.509 time can express: 9999-12-31T23:59:59Z.
const MAX_CERT_TIME: Duration = Duration::from_secs(253_402_300_799);

/// The latest instant a certificate validity can name.
fn max_cert_time() -> SystemTime {
    // 253 402 300 799 s after the epoch fits every platform's SystemTime.
    SystemTime::UNIX_EPOCH
        .checked_add(MAX_CERT_TIME)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// `now - backdate`, refused if it reaches before the epoch.
fn backdated(now: SystemTime, backdate: Duration) -> Result<SystemTime, CaError> {
    now.checked_sub(backdate)
        .filter(|t| *t >= SystemTime::UNIX_EPOCH)
        .ok_or(CaError::ValidityOutOfRange)
}

/// `now + ttl`, cut to the latest time a certificate can carry.
fn capped_end(now: SystemTime, ttl: Duration) -> SystemTime {
    now.checked_add(ttl)
        .map_or_else(max_cert_time, |t| t.min(max_cert_time()))
}

/// Converts a validity bound for rcgen, refusing times a certificate cannot carry (rather
/// than letting the date conversion panic). Sub-second parts are dropped.
fn cert_time(t: SystemTime) -> Result<time::OffsetDateTime, CaError> {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| CaError::ValidityOutOfRange)?;
    if since > MAX_CERT_TIME {
        return Err(CaError::ValidityOutOfRange);
    }
    let secs = i64::try_from(since.as_secs()).map_err(|_| CaError::ValidityOutOfRange)?;
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| CaError::ValidityOutOfRange)
}

fn uri_san(id: &SpiffeId) -> Result<SanType, CaError> {
    Ia5String::try_from(id.to_string())
        .map(SanType::URI)
        .map_err(|e| CaError::Generate(e.to_string()))
}

/// A certificate authority for one trust domain: a signing key and certificate (a root, or an
/// intermediate under one), issuing ECDSA P-256 X.509-SVIDs.
///
/// Issued leaves carry exactly one URI SAN (the approved SPIFFE ID, never SANs copied from a
/// CSR), an empty subject, a random 126-bit serial, `digitalSignature` + `keyEncipherment`,
/// `serverAuth` + `clientAuth`, `cA=false`, a lifetime capped at [`CaConfig::max_ttl`] and a
/// start backdated by [`CaConfig::backdate`].
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate, then intermediates above it, then the root (last). When the
    /// signing certificate is the root, this has one element.
    chain: Vec<CertificateDer<'static>>,
    bundle: TrustBundle,
    config: CaConfig,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("chain_len", &self.chain.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn ca_params(
    td: &TrustDomain,
    common_name: &str,
    config: &CaConfig,
) -> Result<CertificateParams, CaError> {
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, td.as_str());
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![uri_san(&td.id())?];
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params.not_before = cert_time(backdated(now, config.backdate)?)?;
    params.not_after = cert_time(capped_end(now, config.ca_ttl))?;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

impl CertificateAuthority {
    /// Generates a self-signed ECDSA P-256 root for `trust_domain`. The root carries the URI
    /// SAN `spiffe://<trust domain>`.
    pub fn generate_root(trust_domain: &TrustDomain, config: CaConfig) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = ca_params(trust_domain, &format!("{trust_domain} root CA"), &config)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.use_authority_key_identifier_extension = false;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let chain = vec![cert.der().clone()];
        Ok(Self {
            bundle: make_bundle(trust_domain, &chain)?,
            trust_domain: trust_domain.clone(),
            issuer: Issuer::new(params, key),
            chain,
            config,
        })
    }

    /// Generates an intermediate CA signed by this one (path length 0), with the same trust
    /// domain and `config`.
    pub fn generate_intermediate(&self, config: CaConfig) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let td = &self.trust_domain;
        let mut params = ca_params(td, &format!("{td} intermediate CA"), &config)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(Self {
            bundle: self.bundle.clone(),
            trust_domain: td.clone(),
            issuer: Issuer::new(params, key),
            chain,
            config,
        })
    }

    /// Loads a CA from PEM: the signing certificate first, then any intermediates, ending with
    /// the self-signed root (a lone root is fine); and the signing certificate's PKCS#8 key.
    ///
    /// The trust domain comes from a `spiffe://` URI SAN of the signing certificate or the
    /// root, else from [`CaConfig::trust_domain`].
    pub fn from_pem(
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        config: CaConfig,
    ) -> Result<Self, CaError> {
        let chain =
            certs_from_pem(cert_chain_pem).map_err(|e| CaError::BadCaMaterial(e.to_string()))?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| CaError::BadCaMaterial(format!("private key: {e}")))?;
        let key = KeyPair::try_from(&key_der)
            .map_err(|e| CaError::BadCaMaterial(format!("private key: {e}")))?;
        let (Some(signing), Some(root)) = (chain.first(), chain.last()) else {
            return Err(CaError::BadCaMaterial("no certificate in chain".into()));
        };
        let parse = |der: &[u8]| -> Result<(bool, bool, Vec<u8>, Option<TrustDomain>), CaError> {
            let (_, cert) = X509Certificate::from_der(der)
                .map_err(|e| CaError::BadCaMaterial(e.to_string()))?;
            let td = cert
                .subject_alternative_name()
                .ok()
                .flatten()
                .and_then(|san| {
                    san.value.general_names.iter().find_map(|n| match n {
                        GeneralName::URI(u) => {
                            SpiffeId::new(u).ok().map(|id| id.trust_domain().clone())
                        }
                        _ => None,
                    })
                });
            Ok((
                cert.is_ca(),
                cert.subject() == cert.issuer(),
                cert.public_key().subject_public_key.data.to_vec(),
                td,
            ))
        };
        let (signing_is_ca, _, signing_pk, signing_td) = parse(signing)?;
        let (_, root_self_signed, _, root_td) = parse(root)?;
        if !signing_is_ca {
            return Err(CaError::NotACa);
        }
        if !root_self_signed {
            return Err(CaError::NoRoot);
        }
        if key.der_bytes() != signing_pk.as_slice() {
            return Err(CaError::KeyMismatch);
        }
        let trust_domain = signing_td
            .or(root_td)
            .unwrap_or_else(|| config.trust_domain.clone());
        let issuer = Issuer::from_ca_cert_der(signing, key).map_err(gen_err)?;
        Ok(Self {
            bundle: make_bundle(&trust_domain, &chain)?,
            trust_domain,
            issuer,
            chain,
            config,
        })
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The settings.
    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// The root certificate.
    pub fn root(&self) -> &CertificateDer<'static> {
        // The chain always holds at least the signing certificate.
        &self.chain[self.chain.len() - 1]
    }

    /// The root certificate as PEM (for writing the root file peers trust).
    pub fn root_pem(&self) -> String {
        cert_to_pem(self.root())
    }

    /// The trust bundle (this CA's root) for its trust domain.
    pub fn bundle(&self) -> TrustBundle {
        self.bundle.clone()
    }

    /// The signing chain as PEM: signing certificate, intermediates, root.
    pub fn cert_chain_pem(&self) -> String {
        self.chain.iter().map(|c| cert_to_pem(c)).collect()
    }

    /// The signing key as PKCS#8 PEM, to persist a generated CA. Handle with care.
    pub fn private_key_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.issuer.key().serialize_der())
    }

    /// Certificates sent after a leaf: the signing certificate and intermediates, not the root.
    fn intermediates(&self) -> &[CertificateDer<'static>] {
        self.chain.split_last().map(|(_, rest)| rest).unwrap_or(&[])
    }

    fn check_identity(&self, id: &SpiffeId) -> Result<(), CaError> {
        if id.trust_domain() != &self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                id: id.clone(),
                ca: self.trust_domain.clone(),
            });
        }
        if id.path().is_empty() {
            return Err(CaError::EmptyPath(id.clone()));
        }
        Ok(())
    }

    fn validity(&self, ttl: Duration) -> Result<(SystemTime, SystemTime), CaError> {
        if ttl.is_zero() {
            return Err(CaError::ZeroTtl);
        }
        let now = SystemTime::now();
        Ok((
            backdated(now, self.config.backdate)?,
            capped_end(now, ttl.min(self.config.max_ttl)),
        ))
    }

    fn leaf_params(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(id)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(random_serial());
        params.not_before = cert_time(not_before)?;
        params.not_after = cert_time(not_after)?;
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    /// Signs a PEM PKCS#10 CSR for `approved`, after verifying the CSR's self-signature.
    ///
    /// The leaf carries `approved` as its only SAN, whatever the CSR asked for; a CSR that
    /// requests URI SANs other than exactly `approved` is refused. Returns PEM certificates:
    /// leaf, intermediates, root.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        approved: &SpiffeId,
        ttl: Duration,
    ) -> Result<Vec<String>, CaError> {
        let csr_der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| CaError::CsrPem(e.to_string()))?;
        let requested = verify_csr(&csr_der)?;
        if !requested.uris.is_empty() && requested.uris != [approved.to_string()] {
            return Err(CaError::IdentityMismatch {
                requested: requested.uris,
                approved: approved.clone(),
            });
        }
        self.check_identity(approved)?;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&requested.spki)
            .map_err(|e| CaError::CsrKey(e.to_string()))?;
        let (nb, na) = self.validity(ttl)?;
        let params = self.leaf_params(approved, nb, na)?;
        let leaf = params
            .signed_by(&public_key, &self.issuer)
            .map_err(gen_err)?;
        let mut out = vec![cert_to_pem(leaf.der())];
        out.extend(self.chain.iter().map(|c| cert_to_pem(c)));
        Ok(out)
    }

    /// Generates a P-256 key and a leaf for `id` locally, returning a ready SVID whose chain
    /// holds the leaf and intermediates (not the root).
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<X509Svid, CaError> {
        self.check_identity(id)?;
        let (nb, na) = self.validity(ttl)?;
        let (chain, key) = self.issue_with_validity(id, nb, na)?;
        Ok(X509Svid::from_der(chain, key)?)
    }

    /// Issues a leaf for `id` with an explicit validity window, without checking that the
    /// window is current; meant for tests that need expired or future certificates. Returns
    /// the chain (leaf and intermediates) and the PKCS#8 key, or
    /// [`CaError::ValidityOutOfRange`] for bounds before 1970 or after 9999.
    pub fn issue_with_validity(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let params = self.leaf_params(id, not_before, not_after)?;
        self.sign_params(&params)
    }

    /// Issues a serving certificate with DNS and IP SANs (no SPIFFE ID), for example for a
    /// gRPC control-plane endpoint. Returns the chain (leaf and intermediates) and the key.
    pub fn issue_server_cert(
        &self,
        dns_names: &[&str],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let (nb, na) = self.validity(ttl)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(first) = dns_names.first() {
            dn.push(DnType::CommonName, *first);
        }
        params.distinguished_name = dn;
        for name in dns_names {
            let s = Ia5String::try_from(name.to_string())
                .map_err(|e| CaError::Generate(e.to_string()))?;
            params.subject_alt_names.push(SanType::DnsName(s));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        params.not_before = cert_time(nb)?;
        params.not_after = cert_time(na)?;
        params.use_authority_key_identifier_extension = true;
        self.sign_params(&params)
    }

    /// Signs arbitrary parameters with a fresh P-256 key (the test PKI crafts odd leaves with
    /// this).
    pub(crate) fn sign_params(
        &self,
        params: &CertificateParams,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let leaf = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.intermediates().iter().cloned());
        let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Ok((chain, key_der))
    }
}

fn make_bundle(
    td: &TrustDomain,
    chain: &[CertificateDer<'static>],
) -> Result<TrustBundle, CaError> {
    let root = chain.last().ok_or(CaError::NoRoot)?;
    TrustBundle::new(td.clone(), vec![root.clone()])
        .map_err(|e| CaError::BadCaMaterial(e.to_string()))
}

/// What a verified CSR asks for.
#[derive(Debug)]
pub(crate) struct CsrRequest {
    /// URI SANs requested.
    pub(crate) uris: Vec<String>,
    /// DER SubjectPublicKeyInfo.
    pub(crate) spki: Vec<u8>,
}

/// Parses a DER CSR and verifies its self-signature.
pub(crate) fn verify_csr(der: &[u8]) -> Result<CsrRequest, CaError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CaError::CsrParse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CaError::CsrParse("trailing data after CSR".into()));
    }
    csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
    let mut uris = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let GeneralName::URI(u) = name {
                        uris.push((*u).to_owned());
                    }
                }
            }
        }
    }
    Ok(CsrRequest {
        uris,
        spki: csr.certification_request_info.subject_pki.raw.to_vec(),
    })
}

/// Issues locally with the CA's [`max_ttl`](CaConfig::max_ttl).
#[cfg(feature = "manager")]
impl crate::manager::CertificateSource for CertificateAuthority {
    type Error = CaError;
    fn fetch(
        &self,
        id: &SpiffeId,
    ) -> impl Future<Output = Result<crate::x509::FetchedSvid, Self::Error>> + Send {
        let result = self
            .issue(id, self.config().max_ttl)
            .map(|svid| crate::x509::FetchedSvid::new(svid, vec![self.root().clone()]));
        std::future::ready(result)
    }
}
