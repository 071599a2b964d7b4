//! SPIFFE identities, X.509-SVIDs, rustls verifiers, a small CA and the Istio certificate
//! service: the identity layer of a sidecar-less mTLS mesh.
//!
//! # Layout
//!
//! The types every user touches are at the root: [`SpiffeId`] and [`TrustDomain`] (parsed
//! strictly by the SPIFFE ID standard; errors name the rule broken), [`X509Svid`] (leaf +
//! intermediates + key, checked against the X.509-SVID rules, with expiry and half-life
//! refresh instant), and [`TrustBundle`] / [`TrustBundleSet`] (roots per trust domain), with
//! their error types. Everything else is reached through its module:
//!
//! | module | what | feature |
//! |---|---|---|
//! | [`id`] | SPIFFE IDs, trust domains, the Istio view `ns/<ns>/sa/<sa>` | core |
//! | [`bundle`] | trust bundles | core |
//! | [`x509`] | X.509-SVIDs, [`FetchedSvid`](x509::FetchedSvid), the PEM encoder | core |
//! | [`verify`] | rustls verifiers that check the chain, then an [`IdentityPolicy`]; weaker ones in [`verify::dangerous`] | core |
//! | [`tls`] | data-plane and control-plane rustls configurations, [`tls::peer_spiffe_id`]; the control-plane accept loop and channel | core; `service` |
//! | [`provider`] | crypto providers restricted to the data-plane suites | core |
//! | `ca` | the certificate authority | `ca` |
//! | `service` | the Istio certificate service: gRPC `client`, `server`, generated `pb` | `service` |
//! | `manager` | one certificate per identity, refreshed at half-life; a rustls resolver fed by it | `manager` |
//! | `spiffe` | conversions with the `spiffe` crate | `spiffe` |
//! | `spire` | SPIRE as the CA: a certificate source over the agent's Delegated Identity API, a registrar over the server's Entry API | `spire` |
//! | `test_util` | a throw-away test PKI | `test-util` |
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
//! # #[cfg(feature = "ca")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use meshwire_svid::ca::{CaConfig, CertificateAuthority};
//! use meshwire_svid::{IdentityPolicy, SpiffeId, TrustBundleSet, TrustDomain, provider, tls};
//!
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
//! let client = tls::client_config(
//!     provider::default(),
//!     &client_svid,
//!     &roots,
//!     IdentityPolicy::exact([server_id.clone()]),
//! )?;
//! // ... and the server any client of its own trust domain.
//! let server = tls::server_config(
//!     provider::default(),
//!     &server_svid,
//!     &roots,
//!     IdentityPolicy::SameTrustDomain(td.clone()),
//! )?;
//! assert_eq!(client.alpn_protocols, vec![tls::ALPN_H2.to_vec()]);
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
//! let seen_by_client = tls::peer_spiffe_id(c.peer_certificates().unwrap_or_default())?;
//! let seen_by_server = tls::peer_spiffe_id(s.peer_certificates().unwrap_or_default())?;
//! assert_eq!(seen_by_client, server_id);
//! assert_eq!(seen_by_server, client_id);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "ca"))]
//! # fn main() {}
//! ```
//!
//! # Feature flags
//!
//! The core (IDs, SVIDs, bundles, verifiers, rustls configurations) needs only rustls,
//! rustls-webpki, rustls-pki-types, x509-parser and thiserror. Everything heavier is a
//! feature; the default is `ring`, `ca`, `service` and `manager`.
//!
//! - `ring` (default): the *ring* provider for rustls and webpki (`provider::ring()`), and
//!   for rcgen and x509-parser when `ca` is on.
//! - `aws-lc-rs`: the *aws-lc-rs* provider (`provider::aws_lc_rs()`), for all of them.
//!   Additive: both may be on, and every TLS function takes the provider as an argument. With
//!   `default-features = false` and only `aws-lc-rs`, no ring is compiled anywhere.
//! - `ca` (default): the `ca` module (rcgen). Needs `ring` or `aws-lc-rs`.
//! - `service` (default): the `service` module (tonic, prost) and the tokio accept loop and
//!   channel of [`tls`]. Implies `ca`.
//! - `manager` (default): the `manager` module (tokio, backon).
//! - `spiffe`: conversions with the `spiffe` crate (`spiffe` module).
//! - `spire`: SPIRE as the certificate source and a registrar of its entries (`spire`
//!   module; spire-api, tonic). Implies `manager` and `spiffe`.
//! - `test-util`: a test PKI (`test_util` module) for other crates' tests. Implies `ca`.
//!
//! With no provider feature the core still builds; pass any `CryptoProvider` of your own
//! (an [`X509Svid`]'s key is then checked against its leaf by rustls when a configuration is
//! built).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bundle;
#[cfg(feature = "ca")]
#[cfg_attr(docsrs, doc(cfg(feature = "ca")))]
pub mod ca;
pub mod id;
#[cfg(feature = "manager")]
#[cfg_attr(docsrs, doc(cfg(feature = "manager")))]
pub mod manager;
pub mod provider;
#[cfg(feature = "service")]
#[cfg_attr(docsrs, doc(cfg(feature = "service")))]
pub mod service;
#[cfg(feature = "spiffe")]
#[cfg_attr(docsrs, doc(cfg(feature = "spiffe")))]
pub mod spiffe;
#[cfg(feature = "spire")]
#[cfg_attr(docsrs, doc(cfg(feature = "spire")))]
pub mod spire;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod test_util;
pub mod tls;
#[cfg(any(feature = "service", feature = "spire"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "service", feature = "spire"))))]
pub mod uds;
pub mod verify;
pub mod x509;

pub use bundle::{BundleError, SharedTrustBundles, TrustBundle, TrustBundleSet};
pub use id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use verify::IdentityPolicy;
pub use x509::{SvidError, X509Svid};

/// Re-exports of the rustls crates whose types appear in this API.
pub use rustls;
pub use rustls_pki_types as pki_types;

#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "ca", feature = "manager"))]
pub struct ReadmeDoctests;
