//! The certificate service client: makes a key and CSR, calls `CreateCertificate`, and checks
//! the answer.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::PrivateKeyDer;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::Channel;

use crate::id::SpiffeId;
use crate::service::pb::IstioCertificateRequest;
use crate::service::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::service::{CLUSTER_ID_HEADER, IMPERSONATED_IDENTITY_KEY};
use crate::x509::{FetchedSvid, SvidError, X509Svid, certs_from_pem, pem_encode};

/// Where the bearer token sent in the `authorization` header comes from.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Token {
    /// Send no `authorization` header.
    #[default]
    None,
    /// A fixed token.
    Static(String),
    /// A file read before every request (projected service-account tokens rotate).
    File(PathBuf),
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Static(_) => f.write_str("Static(<redacted>)"),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// Settings of a [`CaClient`].
///
/// [`Debug`](fmt::Debug) shows the names of the extra headers but not their values, which
/// may be credentials.
#[derive(Clone)]
#[non_exhaustive]
pub struct CaClientConfig {
    /// Value of the `clusterid` header. Default: `Kubernetes`.
    pub cluster_id: String,
    /// Bearer token source. Default: none.
    pub token: Token,
    /// Requested lifetime (`validity_duration`). Default: 24 hours.
    pub ttl: Duration,
    /// Send `ImpersonatedIdentity` metadata: the caller (a node proxy) asks on behalf of the
    /// workload whose identity it requests. Default: `false`.
    pub impersonate: bool,
    /// Extra request headers (lower-case names). Default: none.
    pub extra_headers: Vec<(String, String)>,
    /// Deadline of one request. Default: 10 seconds.
    pub timeout: Duration,
}

impl Default for CaClientConfig {
    fn default() -> Self {
        Self {
            cluster_id: "Kubernetes".to_owned(),
            token: Token::None,
            ttl: Duration::from_secs(24 * 3600),
            impersonate: false,
            extra_headers: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for CaClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.extra_headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("CaClientConfig")
            .field("cluster_id", &self.cluster_id)
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .field("impersonate", &self.impersonate)
            .field("extra_headers", &header_names)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why fetching a certificate failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaClientError {
    /// The call failed or the server refused.
    #[error("certificate service: {0}")]
    Status(Box<tonic::Status>),
    /// The key or CSR could not be made.
    #[error("making the CSR: {0}")]
    Csr(String),
    /// The token file could not be read.
    #[error("reading the token: {0}")]
    Token(#[source] std::io::Error),
    /// A header name or value is not valid.
    #[error("invalid header {0:?}")]
    Header(String),
    /// The server returned no certificate.
    #[error("chain returned from CA is empty")]
    EmptyChain,
    /// The returned chain is not a valid X.509-SVID for our key.
    #[error("returned certificate: {0}")]
    BadChain(#[from] SvidError),
    /// The returned leaf carries another identity than requested.
    #[error("returned certificate is for {got}, not the requested {expected}")]
    WrongIdentity {
        /// What was asked for.
        expected: SpiffeId,
        /// What the leaf carries.
        got: SpiffeId,
    },
}

impl From<tonic::Status> for CaClientError {
    fn from(s: tonic::Status) -> Self {
        Self::Status(Box::new(s))
    }
}

/// A key and CSR for one identity, as sent to the CA.
pub struct CsrAndKey {
    /// The PEM `CERTIFICATE REQUEST`: empty subject, one (critical) URI SAN.
    pub csr_pem: String,
    /// The PKCS#8 key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for CsrAndKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrAndKey")
            .field("csr_pem", &self.csr_pem)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Makes a fresh ECDSA P-256 key and a CSR with an empty subject and `id` as its only
/// (critical) URI SAN, signed with ECDSA-SHA256.
pub fn make_csr(id: &SpiffeId) -> Result<CsrAndKey, CaClientError> {
    let err = |e: rcgen::Error| CaClientError::Csr(e.to_string());
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = Ia5String::try_from(id.to_string()).map_err(|e| CaClientError::Csr(e.to_string()))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params.serialize_request(&key).map_err(err)?;
    let csr_pem = pem_encode("CERTIFICATE REQUEST", csr.der());
    Ok(CsrAndKey {
        csr_pem,
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    })
}

/// Turns a `CreateCertificate` answer into an SVID for `key`, checking that the leaf carries
/// exactly `expected`.
///
/// `cert_chain[0]` is the leaf, the middle elements are intermediates, the last element holds
/// the root(s). A single-element answer is accepted (with a warning) and yields no roots.
pub fn svid_from_response(
    expected: &SpiffeId,
    cert_chain: &[String],
    key: PrivateKeyDer<'static>,
) -> Result<FetchedSvid, CaClientError> {
    let (last, rest) = cert_chain.split_last().ok_or(CaClientError::EmptyChain)?;
    let (chain_pems, roots) = if rest.is_empty() {
        tracing::warn!(identity = %expected, "CA returned a single certificate and no root");
        (std::slice::from_ref(last), Vec::new())
    } else {
        (rest, certs_from_pem(last.as_bytes())?)
    };
    let mut chain = Vec::new();
    for pem in chain_pems {
        chain.extend(certs_from_pem(pem.as_bytes())?);
    }
    if chain.is_empty() {
        return Err(CaClientError::EmptyChain);
    }
    let svid = X509Svid::from_der(chain, key)?;
    if svid.spiffe_id() != expected {
        return Err(CaClientError::WrongIdentity {
            expected: expected.clone(),
            got: svid.spiffe_id().clone(),
        });
    }
    Ok(FetchedSvid { svid, roots })
}

/// Client of `istio.v1.auth.IstioCertificateService`.
///
/// Every [`fetch`](CaClient::fetch) makes a fresh P-256 key and CSR, sends it with the
/// `authorization: Bearer <token>` and `clusterid` headers (and `ImpersonatedIdentity`
/// metadata when configured), and checks that the returned leaf carries exactly the
/// requested identity.
#[derive(Debug, Clone)]
pub struct CaClient {
    inner: IstioCertificateServiceClient<Channel>,
    config: CaClientConfig,
}

impl CaClient {
    /// A client over `channel` (see [`tls::channel`](crate::tls::channel)).
    pub fn new(channel: Channel, config: CaClientConfig) -> Self {
        Self {
            inner: IstioCertificateServiceClient::new(channel),
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &CaClientConfig {
        &self.config
    }

    async fn token(&self) -> Result<Option<String>, CaClientError> {
        match &self.config.token {
            Token::None => Ok(None),
            Token::Static(t) => Ok(Some(t.clone())),
            Token::File(path) => {
                let path = path.clone();
                let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(&path))
                    .await
                    .map_err(|e| CaClientError::Token(std::io::Error::other(e)))?
                    .map_err(CaClientError::Token)?;
                Ok(Some(read.trim().to_owned()))
            }
        }
    }

    /// Requests a certificate for `id`.
    pub async fn fetch(&self, id: &SpiffeId) -> Result<FetchedSvid, CaClientError> {
        let csr = make_csr(id)?;
        let metadata = self.config.impersonate.then(|| prost_types::Struct {
            fields: [(
                IMPERSONATED_IDENTITY_KEY.to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(id.to_string())),
                },
            )]
            .into_iter()
            .collect(),
        });
        let body = IstioCertificateRequest {
            csr: csr.csr_pem,
            validity_duration: i64::try_from(self.config.ttl.as_secs()).unwrap_or(i64::MAX),
            metadata,
        };
        let mut request = tonic::Request::new(body);
        request.set_timeout(self.config.timeout);
        let md = request.metadata_mut();
        if let Some(token) = self.token().await? {
            let v = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| CaClientError::Header("authorization".into()))?;
            md.insert("authorization", v);
        }
        let v = MetadataValue::try_from(self.config.cluster_id.as_str())
            .map_err(|_| CaClientError::Header(CLUSTER_ID_HEADER.into()))?;
        md.insert(CLUSTER_ID_HEADER, v);
        for (name, value) in &self.config.extra_headers {
            let key = MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| CaClientError::Header(name.clone()))?;
            let value = MetadataValue::try_from(value.as_str())
                .map_err(|_| CaClientError::Header(name.clone()))?;
            md.insert(key, value);
        }
        let response = self.inner.clone().create_certificate(request).await?;
        svid_from_response(id, &response.into_inner().cert_chain, csr.key)
    }
}

#[cfg(feature = "manager")]
impl crate::manager::CertificateSource for CaClient {
    type Error = CaClientError;
    fn fetch(
        &self,
        id: &SpiffeId,
    ) -> impl Future<Output = Result<FetchedSvid, Self::Error>> + Send {
        let this = self.clone();
        let id = id.clone();
        async move { Self::fetch(&this, &id).await }
    }
}
