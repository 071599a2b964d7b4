//! Verifiers weaker than the defaults. Nothing here validates a certificate chain; use only in
//! tests or for diagnostics.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::handshake_signatures;

/// Accepts any server certificate whose leaf carries a SPIFFE ID, **without** validating
/// the chain, the validity window or the identity. Handshake signatures are still checked,
/// so the peer must hold the leaf's key.
#[derive(Debug)]
pub struct AcceptAnySpiffeServer {
    provider: Arc<CryptoProvider>,
}

impl AcceptAnySpiffeServer {
    /// A verifier that trusts every server.
    pub fn new(provider: Arc<CryptoProvider>) -> Arc<Self> {
        Arc::new(Self { provider })
    }
}

impl ServerCertVerifier for AcceptAnySpiffeServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        crate::tls::peer_spiffe_id(std::slice::from_ref(end_entity)).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!(provider);
}
