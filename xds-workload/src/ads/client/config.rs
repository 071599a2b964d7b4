//! Configuration of an [`AdsClient`](super::AdsClient): the node identity it announces,
//! its headers and its back-off.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::pb::envoy::service::discovery::v3::Node;
use crate::resource::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

/// The node identity a client announces: `Node.id` and `Node.metadata`.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct NodeInfo {
    /// `Node.id`.
    pub id: String,
    /// `Node.metadata` entries.
    pub metadata: BTreeMap<String, prost_types::Value>,
}

impl NodeInfo {
    /// A node with this id and no metadata.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            metadata: BTreeMap::new(),
        }
    }

    /// The identity of a node proxy, as a workload-xDS server expects it:
    /// id `ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local` and metadata
    /// `NAME`, `NAMESPACE`, `INSTANCE_IPS` and `NODE_NAME`.
    pub fn proxy(ip: IpAddr, pod_name: &str, pod_namespace: &str, node_name: &str) -> Self {
        Self::new(format!(
            "ztunnel~{ip}~{pod_name}.{pod_namespace}~{pod_namespace}.svc.cluster.local"
        ))
        .with_metadata("NAME", pod_name)
        .with_metadata("NAMESPACE", pod_namespace)
        .with_metadata("INSTANCE_IPS", ip.to_string())
        .with_metadata("NODE_NAME", node_name)
    }

    /// Adds a string metadata entry.
    pub fn with_metadata(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.with_metadata_value(
            key,
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(value.into())),
            },
        )
    }

    /// Adds a metadata entry of any value type.
    pub fn with_metadata_value(
        mut self,
        key: impl Into<String>,
        value: prost_types::Value,
    ) -> Self {
        self.metadata.insert(key.into(), value);
        self
    }

    pub(super) fn to_proto(&self) -> Node {
        Node {
            id: self.id.clone(),
            metadata: Some(prost_types::Struct {
                fields: self.metadata.clone(),
            }),
            ..Default::default()
        }
    }
}

/// Where the bearer token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenSource {
    /// A fixed token.
    Static(String),
    /// A file, read again for every stream; the header is left out while it cannot be read.
    File(PathBuf),
}

/// Configuration of an [`AdsClient`](super::AdsClient).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Node identity. Default: empty id, no metadata.
    pub node: NodeInfo,
    /// Type URLs subscribed (wildcard) on every stream, in this order. Default: Address,
    /// then Authorization.
    pub type_urls: Vec<String>,
    /// Bearer token for the `authorization` header. Default: none.
    pub token: Option<TokenSource>,
    /// Value of the `clusterid` header. Default: none.
    pub cluster_id: Option<String>,
    /// More headers sent on every stream. Default: none.
    pub headers: Vec<(String, String)>,
    /// First step of the reconnect back-off; the step doubles per failure. Each delay is
    /// its step plus a random amount up to the step (jitter), so clients that lost the
    /// same server do not come back at the same instant. Default: 10 ms.
    pub initial_backoff: Duration,
    /// Largest back-off step; with jitter a delay is at most twice this. Default: 15 s.
    pub max_backoff: Duration,
    /// Largest response accepted. Default: 200 MiB.
    pub max_decoding_message_size: usize,
    /// Capacity of the [`ClientEvent`](super::ClientEvent) broadcast. Default: 256.
    pub event_capacity: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            node: NodeInfo::default(),
            type_urls: vec![
                ADDRESS_TYPE_URL.to_owned(),
                AUTHORIZATION_TYPE_URL.to_owned(),
            ],
            token: None,
            cluster_id: None,
            headers: Vec::new(),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(15),
            max_decoding_message_size: 200 << 20,
            event_capacity: 256,
        }
    }
}

/// A client configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientConfigError {
    /// A header name is not valid gRPC metadata.
    #[error("invalid header name {0:?}")]
    InvalidHeaderName(String),
    /// A header value is not valid gRPC metadata.
    #[error("invalid value for header {0:?}")]
    InvalidHeaderValue(String),
    /// No type URL is configured, so there is nothing to subscribe to.
    #[error("no type URL to subscribe to")]
    NoTypeUrls,
}
