//! A small cluster of real network namespaces running the example `agent` and `proxy`,
//! shared by the `demo` binary and the end-to-end tests.
//!
//! [`Cluster::start`] builds two nodes with the [`testbed`] crate, writes a workloads file
//! (one enrolled namespace, `shop`, and one that is not, `legacy`), and starts one agent and
//! one proxy inside each node's namespace, the way a node agent and a node proxy run on a real
//! node. Every pod runs an echo server on [`ECHO_PORT`]; [`Cluster::flow`] connects from one
//! pod to another, sends a payload, reads the echo and reports what the proxies saw.
//!
//! With [`Source::Kubernetes`] the same cluster lives in a real Kubernetes API server
//! instead of the workloads file: Namespaces (enrolled by label, `kubectl label namespace`),
//! Pods, the deny-intruder `AuthorizationPolicy`, agents in Kubernetes mode told about each
//! pod sandbox by a CNI ADD, and proxies authenticated by pod-bound tokens.
//!
//! Everything is torn down when the [`Cluster`] is dropped: processes are stopped, the
//! namespaces (and with them every rule the agent installed) are deleted and the state
//! directory is removed.

pub mod bench;
mod capture;
mod cleanup;
mod cluster;
mod echo;
mod flow;
mod identity;
mod kube;
pub mod launch;
mod metrics;
mod options;
mod probe;
mod processes;
mod role;
mod table;

pub use capture::{Capture, contains};
pub use cleanup::remove_own_state_dirs;
pub use cluster::{Binaries, Cluster, ClusterOptions, Source};
pub use flow::Flow;
pub use identity::{PresentedCert, log_time};
pub use metrics::Metrics;
pub use processes::stop;
pub use role::Role;
pub use table::table;

/// The port every pod's echo server listens on.
pub const ECHO_PORT: u16 = 8080;
/// The namespace label that enrolls a namespace.
pub const LABEL: &str = "io.cilium/mtls-enabled";
/// The namespace label whose value `strict` turns on strict mutual TLS.
pub const MTLS_MODE_LABEL: &str = "io.cilium/mtls-mode";
/// The trust domain of the cluster.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The enrolled namespace.
pub const ENROLLED_NS: &str = "shop";
/// The namespace that is not enrolled.
pub const PLAIN_NS: &str = "legacy";
