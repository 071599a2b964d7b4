//! The Istio certificate service (`istio.v1.auth.IstioCertificateService`): server, client
//! and TLS plumbing.

pub(crate) mod client;
pub(crate) mod server;
pub(crate) mod tls;

/// The request header carrying the cluster ID.
pub const CLUSTER_ID_HEADER: &str = "clusterid";

/// The metadata key a node proxy sets to ask on behalf of a workload.
pub const IMPERSONATED_IDENTITY_KEY: &str = "ImpersonatedIdentity";
