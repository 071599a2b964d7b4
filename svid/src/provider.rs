//! Crypto providers for the TLS configurations of this crate.
//!
//! Library code never installs or reads the process-wide default provider: every function
//! that builds a rustls configuration takes an `Arc<CryptoProvider>` from the caller. The
//! functions here build providers restricted to what the HBONE data plane uses: TLS 1.3
//! cipher suites with AES-GCM only (`TLS13_AES_256_GCM_SHA384`, `TLS13_AES_128_GCM_SHA256`),
//! the provider's default key-exchange groups and signature algorithms.

#[cfg(any(feature = "ring", feature = "aws-lc-rs"))]
use std::sync::Arc;

use rustls::CipherSuite;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::PrivateKeyDer;

use crate::x509::SvidError;

/// The TLS 1.3 suites allowed on the data plane, in preference order.
pub const ALLOWED_SUITES: [CipherSuite; 2] = [
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_AES_128_GCM_SHA256,
];

/// Keeps only the TLS 1.3 AES-GCM cipher suites of `provider`, in [`ALLOWED_SUITES`] order.
pub fn restrict_to_data_plane_suites(mut provider: CryptoProvider) -> CryptoProvider {
    let mut suites = Vec::with_capacity(ALLOWED_SUITES.len());
    for want in ALLOWED_SUITES {
        if let Some(s) = provider.cipher_suites.iter().find(|s| s.suite() == want) {
            suites.push(*s);
        }
    }
    provider.cipher_suites = suites;
    provider
}

/// The *ring* provider with TLS 1.3 AES-GCM suites only.
#[cfg(feature = "ring")]
pub fn ring() -> Arc<CryptoProvider> {
    Arc::new(restrict_to_data_plane_suites(
        rustls::crypto::ring::default_provider(),
    ))
}

/// The *aws-lc-rs* provider with TLS 1.3 AES-GCM suites only.
#[cfg(feature = "aws-lc-rs")]
pub fn aws_lc_rs() -> Arc<CryptoProvider> {
    Arc::new(restrict_to_data_plane_suites(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
}

/// The provider preferred by the enabled features: *ring* when the `ring` feature is on,
/// otherwise *aws-lc-rs*.
#[cfg(any(feature = "ring", feature = "aws-lc-rs"))]
pub fn default() -> Arc<CryptoProvider> {
    #[cfg(feature = "ring")]
    {
        ring()
    }
    #[cfg(not(feature = "ring"))]
    {
        aws_lc_rs()
    }
}

/// The built-in provider's key loader: *ring*'s when the `ring` feature is on, else
/// *aws-lc-rs*'s, else none.
fn builtin_key_provider() -> Option<&'static dyn rustls::crypto::KeyProvider> {
    #[cfg(feature = "ring")]
    {
        Some(rustls::crypto::ring::default_provider().key_provider)
    }
    #[cfg(all(feature = "aws-lc-rs", not(feature = "ring")))]
    {
        Some(rustls::crypto::aws_lc_rs::default_provider().key_provider)
    }
    #[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
    {
        None
    }
}

/// The DER SubjectPublicKeyInfo of `key`, as the built-in provider derives it; `None` when
/// no provider is built in or it cannot tell.
pub(crate) fn public_key_of(key: &PrivateKeyDer<'_>) -> Result<Option<Vec<u8>>, SvidError> {
    let Some(keys) = builtin_key_provider() else {
        return Ok(None);
    };
    let signing = keys
        .load_private_key(key.clone_key())
        .map_err(|e| SvidError::BadPrivateKey(e.to_string()))?;
    Ok(signing.public_key().map(|spki| spki.as_ref().to_vec()))
}

#[cfg(all(test, any(feature = "ring", feature = "aws-lc-rs")))]
mod tests {
    use super::*;

    #[test]
    fn only_tls13_aes_gcm() {
        let p = default();
        let suites: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites, ALLOWED_SUITES.to_vec());
        assert!(p.cipher_suites.iter().all(|s| s.tls13().is_some()));
    }
}
