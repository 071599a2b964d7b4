//! The Istio certificate service (`istio.v1.auth.IstioCertificateService/CreateCertificate`):
//! the gRPC [`server`] backed by a [`CertificateAuthority`](crate::ca::CertificateAuthority)
//! and an authorizer, the gRPC [`client`] that makes a key and CSR and checks the answer, and
//! the generated protobuf code ([`pb`]).
//!
//! Run the server over TLS with [`crate::tls::incoming`] (or [`server::serve_tls`]); connect the
//! client with [`crate::tls::channel`].

pub mod client;
pub mod pb;
pub mod server;

/// The request header carrying the cluster ID.
pub const CLUSTER_ID_HEADER: &str = "clusterid";

/// The metadata key a node proxy sets to ask on behalf of a workload.
pub const IMPERSONATED_IDENTITY_KEY: &str = "ImpersonatedIdentity";
