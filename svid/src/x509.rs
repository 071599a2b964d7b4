//! X.509-SVIDs: certificate chains whose leaf carries one SPIFFE ID, with their private key;
//! the SVID a certificate source hands out ([`FetchedSvid`]); and the PEM encoder of the
//! crate ([`pem_encode`]).

use std::fmt;
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::id::{SpiffeId, SpiffeIdError};

/// Why a certificate chain or key is not a usable X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The chain has no certificate.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// PEM input could not be decoded.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// No private key was found in the key PEM.
    #[error("no private key found in PEM")]
    NoPrivateKey,
    /// A certificate is not valid DER X.509.
    #[error("certificate {index} of the chain is not valid X.509: {reason}")]
    BadCertificate {
        /// Position in the chain (0 = leaf).
        index: usize,
        /// Parser message.
        reason: String,
    },
    /// The leaf carries no URI SAN.
    #[error("leaf certificate has no URI SAN")]
    NoUriSan,
    /// The leaf carries more than one URI SAN.
    #[error("leaf certificate has {0} URI SANs; an X.509-SVID has exactly one")]
    MultipleUriSans(usize),
    /// The leaf's URI SAN is not a valid SPIFFE ID.
    #[error("leaf URI SAN {uri:?} is not a SPIFFE ID: {source}")]
    InvalidSpiffeId {
        /// The URI as found in the certificate.
        uri: String,
        /// The rule it broke.
        source: SpiffeIdError,
    },
    /// The leaf's SPIFFE ID has an empty path (it names a trust domain, not a workload).
    #[error("leaf SPIFFE ID {0} has an empty path")]
    TrustDomainIdAsLeaf(SpiffeId),
    /// No URI SAN of the peer's leaf is a valid SPIFFE ID.
    #[error("no URI SAN of the certificate is a valid SPIFFE ID")]
    NoSpiffeId,
    /// The leaf is a CA certificate.
    #[error("leaf certificate is a CA (basicConstraints cA=true)")]
    LeafIsCa,
    /// The leaf has no key usage extension or lacks `digitalSignature`.
    #[error("leaf certificate lacks the digitalSignature key usage")]
    MissingDigitalSignature,
    /// The leaf may sign certificates or CRLs.
    #[error("leaf certificate has the keyCertSign or cRLSign key usage")]
    LeafCanSign,
    /// An intermediate is not a CA.
    #[error("intermediate certificate {0} is not a CA")]
    IntermediateNotCa(usize),
    /// The leaf's validity window is empty or reversed.
    #[error("leaf certificate validity is empty (notAfter is not after notBefore)")]
    EmptyValidity,
    /// The leaf has expired.
    #[error("leaf certificate expired")]
    Expired,
    /// The leaf is not valid yet.
    #[error("leaf certificate is not valid yet")]
    NotYetValid,
    /// The private key could not be read.
    #[error("unsupported or invalid private key: {0}")]
    BadPrivateKey(String),
    /// The private key does not belong to the leaf's public key.
    #[error("private key does not match the leaf certificate")]
    KeyMismatch,
}

/// What the SVID rules need to know about a leaf certificate.
#[derive(Debug, Clone)]
pub(crate) struct LeafInfo {
    pub(crate) spiffe_id: SpiffeId,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    /// The DER SubjectPublicKeyInfo.
    pub(crate) public_key: Vec<u8>,
}

pub(crate) fn parse_cert(der: &[u8], index: usize) -> Result<X509Certificate<'_>, SvidError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(SvidError::BadCertificate {
            index,
            reason: "trailing data after certificate".into(),
        }),
        Err(e) => Err(SvidError::BadCertificate {
            index,
            reason: e.to_string(),
        }),
    }
}

fn bad(index: usize, e: impl fmt::Display) -> SvidError {
    SvidError::BadCertificate {
        index,
        reason: e.to_string(),
    }
}

fn unix_to_system(ts: i64) -> SystemTime {
    if ts >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(ts.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH
            .checked_sub(Duration::from_secs(ts.unsigned_abs()))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// All URI SANs of a parsed certificate.
pub(crate) fn uri_sans<'a>(
    cert: &'a X509Certificate<'_>,
    index: usize,
) -> Result<Vec<&'a str>, SvidError> {
    let san = cert.subject_alternative_name().map_err(|e| bad(index, e))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Applies the X.509-SVID leaf rules: exactly one URI SAN that is a SPIFFE ID with a
/// non-empty path, not a CA, digitalSignature set and no certificate/CRL signing, and a
/// non-empty validity window.
pub(crate) fn inspect_leaf(der: &[u8]) -> Result<LeafInfo, SvidError> {
    let cert = parse_cert(der, 0)?;
    let uris = uri_sans(&cert, 0)?;
    let uri = match uris.as_slice() {
        [] => return Err(SvidError::NoUriSan),
        [one] => *one,
        more => return Err(SvidError::MultipleUriSans(more.len())),
    };
    let spiffe_id = SpiffeId::new(uri).map_err(|source| SvidError::InvalidSpiffeId {
        uri: uri.to_owned(),
        source,
    })?;
    if spiffe_id.path().is_empty() {
        return Err(SvidError::TrustDomainIdAsLeaf(spiffe_id));
    }
    let bc = cert.basic_constraints().map_err(|e| bad(0, e))?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::LeafIsCa);
    }
    let ku = cert.key_usage().map_err(|e| bad(0, e))?;
    let Some(ku) = ku else {
        return Err(SvidError::MissingDigitalSignature);
    };
    if !ku.value.digital_signature() {
        return Err(SvidError::MissingDigitalSignature);
    }
    if ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err(SvidError::LeafCanSign);
    }
    let validity = cert.validity();
    let not_before = unix_to_system(validity.not_before.timestamp());
    let not_after = unix_to_system(validity.not_after.timestamp());
    if not_after <= not_before {
        return Err(SvidError::EmptyValidity);
    }
    Ok(LeafInfo {
        spiffe_id,
        not_before,
        not_after,
        public_key: cert.public_key().raw.to_vec(),
    })
}

/// Parses every `CERTIFICATE` block of a PEM document.
pub(crate) fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, SvidError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SvidError::Pem(e.to_string()))
}

/// Encodes a DER certificate as PEM.
pub(crate) fn cert_to_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

/// Encodes DER bytes as one PEM block with `label` (`CERTIFICATE`, `PRIVATE KEY`,
/// `CERTIFICATE REQUEST` …): base64 in lines of 64 characters, each line ending in `\n`.
///
/// ```
/// let pem = meshwire_svid::x509::pem_encode("CERTIFICATE", b"\x30\x03\x02\x01\x01");
/// assert_eq!(pem, "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n");
/// ```
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let idx = |shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
        b64.push(idx(18));
        b64.push(idx(12));
        b64.push(if chunk.len() > 1 { idx(6) } else { '=' });
        b64.push(if chunk.len() > 2 { idx(0) } else { '=' });
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    let bytes = b64.as_bytes();
    for line in bytes.chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// An X.509-SVID: a leaf certificate carrying exactly one SPIFFE ID, its intermediates, and
/// the private key of the leaf.
///
/// Construction checks the X.509-SVID rules: exactly one URI SAN, which is a SPIFFE ID with a
/// non-empty path; the leaf is not a CA, has the `digitalSignature` key usage and neither
/// `keyCertSign` nor `cRLSign`; every intermediate is a CA; the private key matches the leaf;
/// and the leaf is inside its validity window now. The chain is **not** verified against any
/// root here: that is the peer's job.
///
/// [`Debug`](fmt::Debug) never prints the key.
#[derive(Clone)]
pub struct X509Svid {
    spiffe_id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: std::sync::Arc<PrivateKeyDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl X509Svid {
    /// Builds an SVID from a PEM chain (leaf first, then intermediates; a trailing self-signed
    /// root is dropped) and a PEM private key (PKCS#8).
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, SvidError> {
        let chain = certs_from_pem(chain_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => SvidError::NoPrivateKey,
            e => SvidError::Pem(e.to_string()),
        })?;
        Self::from_der(chain, key)
    }

    /// Builds an SVID from DER certificates (leaf first, then intermediates; a trailing
    /// self-signed root is dropped) and the leaf's private key, checking validity at the
    /// current system time.
    ///
    /// The key is checked against the leaf with the built-in provider (`ring` or `aws-lc-rs`
    /// feature); in a build with neither, rustls makes the same check when a configuration
    /// is built from the SVID.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, SvidError> {
        Self::from_der_at(chain, key, SystemTime::now())
    }

    /// Like [`X509Svid::from_der`], checking the validity window at `now`.
    pub fn from_der_at(
        mut chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        now: SystemTime,
    ) -> Result<Self, SvidError> {
        let leaf = chain.first().ok_or(SvidError::EmptyChain)?;
        let info = inspect_leaf(leaf)?;
        // Intermediates must be CAs; a self-signed last element is a root and is not sent.
        let mut drop_last = false;
        let n = chain.len();
        for (index, der) in chain.iter().enumerate().skip(1) {
            let cert = parse_cert(der, index)?;
            if !cert.is_ca() {
                return Err(SvidError::IntermediateNotCa(index));
            }
            if index == n - 1 && n > 1 && cert.subject() == cert.issuer() {
                drop_last = true;
            }
        }
        if drop_last {
            chain.pop();
        }
        // Without a built-in provider the check is left to rustls, which refuses a key that
        // does not match when a configuration is built.
        if let Some(spki) = crate::provider::public_key_of(&key)?
            && spki != info.public_key
        {
            return Err(SvidError::KeyMismatch);
        }
        if now > info.not_after {
            return Err(SvidError::Expired);
        }
        if now < info.not_before {
            return Err(SvidError::NotYetValid);
        }
        Ok(Self {
            spiffe_id: info.spiffe_id,
            chain,
            key: std::sync::Arc::new(key),
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// The SPIFFE ID carried by the leaf.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The chain: leaf first, then intermediates; never the root.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // from_der_at refuses an empty chain and never removes the leaf.
        &self.chain[0]
    }

    /// A copy of the private key.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// The chain as PEM (leaf first).
    pub fn cert_chain_pem(&self) -> String {
        self.chain.iter().map(|c| cert_to_pem(c)).collect()
    }

    /// Start of the leaf's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When to fetch a replacement: half-way through the validity window.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }

    /// Whether `now` is inside the leaf's validity window.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("chain_len", &self.chain.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// An SVID obtained from a certificate source (a CA, the certificate service, SPIRE …), with
/// the roots the source returned beside it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FetchedSvid {
    /// The SVID (leaf, intermediates, private key).
    pub svid: X509Svid,
    /// The roots the source returned (several are allowed). Empty when it returned none.
    pub roots: Vec<CertificateDer<'static>>,
}

impl FetchedSvid {
    /// Wraps an SVID and its roots.
    pub fn new(svid: X509Svid, roots: Vec<CertificateDer<'static>>) -> Self {
        Self { svid, roots }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_encoding_decodes_for_every_padding() {
        for len in 0..70 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let pem = pem_encode("CERTIFICATE", &data);
            assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
            let back = certs_from_pem(pem.as_bytes()).unwrap_or_default();
            if len == 0 {
                assert!(back.is_empty() || back[0].is_empty());
            } else {
                assert_eq!(back[0].as_ref(), data.as_slice(), "len {len}");
            }
        }
    }
}
