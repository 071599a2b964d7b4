//! SPIFFE identities, X.509-SVIDs, rustls verifiers, a small CA and the Istio certificate
//! service: the identity layer of a sidecar-less mTLS mesh.
//!
//! # What is here
//!
//! - **Identities**: [`SpiffeId`] and [`TrustDomain`], parsed strictly by the SPIFFE ID
//!   standard (errors name the rule broken), with an Istio view
//!   (`spiffe://<td>/ns/<namespace>/sa/<service account>`, [`SpiffeId::istio`]).
//! - **Material**: [`TrustBundle`] / [`TrustBundleSet`] (roots per trust domain) and
//!   [`X509Svid`] (leaf + intermediates + key, checked against the X.509-SVID rules, with
//!   expiry and half-life refresh instant).
//! - **TLS**: [`SpiffeServerVerifier`] and [`SpiffeClientVerifier`] (webpki chain validation
//!   against the bundle of the peer's trust domain, then an [`IdentityPolicy`]), and
//!   [`client_config`] / [`server_config`] for the HBONE data plane: TLS 1.3 only, AES-GCM
//!   suites, ALPN `h2`, no SNI, no resumption. [`peer_spiffe_id`] reads the identity of an
//!   established connection. Weaker verifiers live in [`dangerous`].
//! - **CA**: [`CertificateAuthority`] generates or loads a root (optionally an
//!   intermediate), signs PKCS#10 CSRs after verifying their self-signature, and issues
//!   ECDSA P-256 SVIDs that carry only the approved identity.
//! - **Certificate service** (`istio.v1.auth.IstioCertificateService/CreateCertificate`):
//!   [`CertificateService`] (tonic server; an [`Authorizer`] decides per request, seeing the
//!   caller's bearer token, client-certificate identity and `ImpersonatedIdentity`),
//!   [`serve_tls`] / [`tls_incoming`] to run it over rustls, [`CaClient`] (key + CSR +
//!   headers, checks the returned identity) and [`tls_channel`] for the control-plane
//!   channel. Generated protobuf code is in [`pb`].
//! - **Certificate manager**: [`CertificateManager`] keeps one certificate per identity for
//!   all [`CertificateHandle`]s, refreshes at half-life, runs at most N fetches with
//!   [`Priority`] (on-demand, prefetch, rotation), and retries with jittered exponential
//!   back-off while the old certificate keeps serving. Any [`CertificateSource`] works.
//!
//! What it does **not** do: open data-plane sockets, read the environment or files it was
//! not given, install a process-wide crypto provider, or talk to Kubernetes.
//!
//! # Example
//!
//! A CA issues two workload SVIDs; the client and server configurations built from them
//! authenticate each other by SPIFFE ID.
//!
//! ```
//! use std::time::Duration;
//! use meshwire_svid::{
//!     CaConfig, CertificateAuthority, IdentityPolicy, SpiffeId, TrustBundleSet, TrustDomain,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let td: TrustDomain = "cluster.local".parse()?;
//! let ca = CertificateAuthority::generate_root(&td, CaConfig::default())?;
//!
//! let client_id = SpiffeId::from_istio(&td, "default", "sleep")?;
//! let server_id: SpiffeId = "spiffe://cluster.local/ns/default/sa/httpbin".parse()?;
//! assert_eq!(server_id.istio().map(|i| i.service_account()), Some("httpbin"));
//!
//! let client_svid = ca.issue(&client_id, Duration::from_secs(3600))?;
//! let server_svid = ca.issue(&server_id, Duration::from_secs(3600))?;
//! let roots = TrustBundleSet::from(ca.bundle());
//!
//! // The client accepts exactly the identity it expects for this hop ...
//! let client = meshwire_svid::client_config(
//!     meshwire_svid::provider::default(),
//!     &client_svid,
//!     &roots,
//!     IdentityPolicy::exact([server_id.clone()]),
//! )?;
//! // ... and the server any client of its own trust domain.
//! let server = meshwire_svid::server_config(
//!     meshwire_svid::provider::default(),
//!     &server_svid,
//!     &roots,
//!     IdentityPolicy::SameTrustDomain(td.clone()),
//! )?;
//! assert_eq!(client.alpn_protocols, vec![b"h2".to_vec()]);
//! assert!(!client.enable_sni);
//!
//! // Drive a handshake in memory.
//! let name = meshwire_svid::pki_types::ServerName::try_from("0.0.0.0")?;
//! let mut c = meshwire_svid::rustls::ClientConnection::new(client.into(), name)?;
//! let mut s = meshwire_svid::rustls::ServerConnection::new(server.into())?;
//! while c.is_handshaking() || s.is_handshaking() {
//!     let mut buf = Vec::new();
//!     c.write_tls(&mut buf)?;
//!     s.read_tls(&mut buf.as_slice())?;
//!     s.process_new_packets()?;
//!     buf.clear();
//!     s.write_tls(&mut buf)?;
//!     c.read_tls(&mut buf.as_slice())?;
//!     c.process_new_packets()?;
//! }
//! let seen_by_client = meshwire_svid::peer_spiffe_id(c.peer_certificates().unwrap_or_default())?;
//! let seen_by_server = meshwire_svid::peer_spiffe_id(s.peer_certificates().unwrap_or_default())?;
//! assert_eq!(seen_by_client, server_id);
//! assert_eq!(seen_by_server, client_id);
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! - `ring` (default): rustls, webpki and tokio-rustls with the *ring* provider;
//!   [`provider::ring`].
//! - `aws-lc-rs`: additionally the *aws-lc-rs* provider; `provider::aws_lc_rs()`. Additive:
//!   both may be on, and every TLS function takes the provider as an argument.
//!
//! With neither feature the library still builds (without the `provider` constructors);
//! pass any `CryptoProvider` of your own.
//!
//! The CA and CSR code uses rcgen and x509-parser with *ring* regardless of the provider.
#![forbid(unsafe_code)]

mod bundle;
mod ca;
mod id;
mod manager;
pub mod pb;
pub mod provider;
mod service;
mod svid;
mod tls;
mod verifier;

#[cfg(test)]
mod tests;

pub use bundle::{BundleError, TrustBundle, TrustBundleSet};
pub use ca::{CaConfig, CaError, CertificateAuthority};
pub use id::{
    IstioIdentity, MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, SpiffeId, SpiffeIdError, TrustDomain,
};
pub use manager::{
    CertificateHandle, CertificateManager, CertificateSource, CertificateState, FetchError,
    ManagerConfig, ManagerError, Priority,
};
pub use service::client::{
    CaClient, CaClientConfig, CaClientError, CsrAndKey, FetchedSvid, Token, make_csr,
    svid_from_response,
};
pub use service::server::{
    AuthorizationRequest, Authorizer, CertificateService, CertificateServiceConfig, Denial,
};
pub use service::tls::{
    ControlPlaneTlsError, PeerInfo, TlsConnection, TlsIncoming, TlsIncomingConfig,
    control_plane_client_config, control_plane_server_config, serve_tls, tls_channel, tls_incoming,
    tls_incoming_with,
};
pub use service::{CLUSTER_ID_HEADER, IMPERSONATED_IDENTITY_KEY};
pub use svid::{SvidError, X509Svid, peer_spiffe_id};
pub use tls::{
    ALPN_H2, TlsConfigError, client_config, client_config_with_verifier, server_config,
    server_config_with_verifier,
};
pub use verifier::{
    IdentityPolicy, PeerVerifyError, SpiffeClientVerifier, SpiffeServerVerifier,
    SpiffeVerifierBuilder, VerifierBuilderError, dangerous,
};

/// Re-exports of the rustls crates whose types appear in this API.
pub use rustls;
pub use rustls_pki_types as pki_types;
