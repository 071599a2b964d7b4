//! Delta ADS client: subscribes, applies responses through a handler, ACKs or NACKs each
//! one, and reconnects with the versions it holds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::error::ClientConfigError;
use crate::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Resource,
};
use crate::pb::google::rpc;
use crate::resource::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, decode_address, decode_authorization,
};
use crate::store::{StoreBatch, WorkloadStore};

/// Status code sent in `error_detail` of a NACK: left unset (0), matching the
/// workload-xDS wire contract; a server recognises a NACK by the presence of
/// `error_detail`, and its message lists `<name>: <reason>` per rejected resource.
const NACK_CODE: i32 = 0;

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

    fn to_proto(&self) -> Node {
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

/// Configuration of an [`AdsClient`].
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
    /// First reconnect delay after a failure; doubled per failure. Default: 10 ms.
    pub initial_backoff: Duration,
    /// Largest reconnect delay. Default: 15 s.
    pub max_backoff: Duration,
    /// Largest response accepted. Default: 200 MiB.
    pub max_decoding_message_size: usize,
    /// Capacity of the [`ClientEvent`] broadcast. Default: 256.
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

impl ClientConfig {
    /// Sets [`ClientConfig::node`].
    pub fn node(&mut self, node: NodeInfo) -> &mut Self {
        self.node = node;
        self
    }

    /// Sets [`ClientConfig::type_urls`].
    pub fn type_urls(
        &mut self,
        type_urls: impl IntoIterator<Item = impl Into<String>>,
    ) -> &mut Self {
        self.type_urls = type_urls.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`ClientConfig::token`].
    pub fn token(&mut self, token: Option<TokenSource>) -> &mut Self {
        self.token = token;
        self
    }

    /// Sets [`ClientConfig::cluster_id`].
    pub fn cluster_id(&mut self, cluster_id: Option<String>) -> &mut Self {
        self.cluster_id = cluster_id;
        self
    }

    /// Adds a header to [`ClientConfig::headers`].
    pub fn header(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets [`ClientConfig::initial_backoff`] and [`ClientConfig::max_backoff`].
    pub fn backoff(&mut self, initial: Duration, max: Duration) -> &mut Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Sets [`ClientConfig::max_decoding_message_size`].
    pub fn max_decoding_message_size(&mut self, limit: usize) -> &mut Self {
        self.max_decoding_message_size = limit;
        self
    }

    /// Sets [`ClientConfig::event_capacity`].
    pub fn event_capacity(&mut self, capacity: usize) -> &mut Self {
        self.event_capacity = capacity;
        self
    }
}

/// One response, as given to a [`DeltaHandler`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct DeltaUpdate<'a> {
    /// Type URL of the response; payloads are decoded as this type.
    pub type_url: &'a str,
    /// Added or updated resources.
    pub resources: &'a [Resource],
    /// Names of removed resources.
    pub removed: &'a [String],
}

/// A resource the handler could not apply; it is reported in the NACK.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejection {
    /// Resource name.
    pub name: String,
    /// Why.
    pub reason: String,
}

impl Rejection {
    /// A rejection of `name` for `reason`.
    pub fn new(name: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self {
            name: name.into(),
            reason: reason.to_string(),
        }
    }
}

/// Applies the responses a client receives.
pub trait DeltaHandler: Send + 'static {
    /// Applies one response and returns the resources it rejected (empty to ACK). The
    /// accepted resources must be applied even when others are rejected.
    fn apply(&mut self, update: DeltaUpdate<'_>) -> Vec<Rejection>;
}

impl<F> DeltaHandler for F
where
    F: FnMut(DeltaUpdate<'_>) -> Vec<Rejection> + Send + 'static,
{
    fn apply(&mut self, update: DeltaUpdate<'_>) -> Vec<Rejection> {
        self(update)
    }
}

/// A [`DeltaHandler`] that decodes Address and Authorization resources into a
/// [`WorkloadStore`]; each response is applied as one [`StoreBatch`]. Other type URLs are
/// accepted and ignored.
#[derive(Debug, Clone)]
pub struct StoreHandler {
    store: Arc<WorkloadStore>,
}

impl StoreHandler {
    /// A handler that applies into `store`.
    pub fn new(store: Arc<WorkloadStore>) -> Self {
        Self { store }
    }

    /// The store.
    pub fn store(&self) -> &Arc<WorkloadStore> {
        &self.store
    }
}

impl DeltaHandler for StoreHandler {
    fn apply(&mut self, update: DeltaUpdate<'_>) -> Vec<Rejection> {
        let mut rejections = Vec::new();
        let mut batch = StoreBatch::with_capacity(update.resources.len() + update.removed.len());
        match update.type_url {
            ADDRESS_TYPE_URL => {
                for name in update.removed {
                    batch.remove_address(name.clone());
                }
                for resource in update.resources {
                    match decode_address(resource) {
                        Ok(address) => {
                            batch.upsert_address(resource.name.clone(), address);
                        }
                        Err(e) => rejections.push(Rejection::new(&resource.name, e)),
                    }
                }
            }
            AUTHORIZATION_TYPE_URL => {
                for name in update.removed {
                    batch.remove_policy(name.clone());
                }
                for resource in update.resources {
                    match decode_authorization(resource) {
                        Ok(policy) => {
                            batch.upsert_policy(resource.name.clone(), policy);
                        }
                        Err(e) => rejections.push(Rejection::new(&resource.name, e)),
                    }
                }
            }
            other => {
                tracing::debug!(type_url = other, "ignoring resources of an unknown type");
            }
        }
        self.store.apply(batch);
        rejections
    }
}

/// Something that happened in an [`AdsClient`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A stream was established.
    Connected,
    /// A response was applied and acknowledged (with a NACK if anything was rejected).
    Applied {
        /// Type URL.
        type_url: String,
        /// Nonce of the response.
        nonce: String,
        /// Resources received.
        resources: usize,
        /// Removals received.
        removed: usize,
        /// Rejected resources (sent as a NACK).
        rejected: Vec<Rejection>,
    },
    /// The stream ended; the client reconnects after `retry_in`.
    Disconnected {
        /// Why the stream ended.
        reason: String,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
}

/// Becomes true once the first response of every subscribed type has been applied.
///
/// A response counts as applied even when some of its resources were rejected (and
/// NACKed): the accepted ones are in the store, so one bad resource does not keep the
/// proxy from becoming ready. Callers that want readiness only after a clean ACK can
/// watch [`ClientEvent::Applied`] and its `rejected` list instead. The signal never goes
/// back to false.
#[derive(Debug, Clone)]
pub struct SyncedSignal(watch::Receiver<bool>);

impl SyncedSignal {
    /// Whether the client is synced.
    pub fn is_synced(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the client is synced. Returns `false` if the client stopped first.
    pub async fn wait(&mut self) -> bool {
        self.0.wait_for(|synced| *synced).await.is_ok()
    }
}

/// How a stream ended.
enum StreamEnd {
    /// The call could not be established.
    Establish(Status),
    /// The server ended the stream with a status.
    Status(Status),
    /// The stream ended without a status.
    Closed,
}

/// A Delta ADS client over a caller-supplied tonic [`Channel`] (which carries the TLS, if
/// any, and the address).
///
/// On every stream it sends one wildcard subscription per configured type URL, carrying
/// the node identity and, after a reconnect, every retained resource version as
/// `initial_resource_versions`. Each response goes through the [`DeltaHandler`]; the
/// client then ACKs it, or NACKs it with `error_detail` listing `<name>: <reason>` for
/// every rejected resource. Rejected resources are not retained, so a reconnect asks for
/// them again.
///
/// Reconnect delays: after a failure to establish the stream, or a stream ended by an
/// unexpected status, the delay doubles from [`ClientConfig::initial_backoff`] up to
/// [`ClientConfig::max_backoff`]; after a normal server-side close (status `UNKNOWN`,
/// `CANCELLED`, `DEADLINE_EXCEEDED`, or `UNAVAILABLE` for a closing transport or GOAWAY)
/// or a clean end, it is `initial_backoff`. A stream that received a response resets the
/// back-off.
pub struct AdsClient<H> {
    config: ClientConfig,
    channel: Channel,
    handler: H,
    headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    retained: HashMap<String, HashMap<String, String>>,
    synced_types: HashSet<String>,
    synced: watch::Sender<bool>,
    events: broadcast::Sender<ClientEvent>,
}

impl<H> std::fmt::Debug for AdsClient<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsClient")
            .field("config", &self.config)
            .field("channel", &self.channel)
            .field(
                "retained",
                &self
                    .retained
                    .iter()
                    .map(|(t, m)| (t.as_str(), m.len()))
                    .collect::<Vec<_>>(),
            )
            .field("synced", &*self.synced.borrow())
            .finish_non_exhaustive()
    }
}

impl<H: DeltaHandler> AdsClient<H> {
    /// A client; nothing happens until [`AdsClient::run`].
    pub fn new(
        config: ClientConfig,
        channel: Channel,
        handler: H,
    ) -> Result<Self, ClientConfigError> {
        if config.type_urls.is_empty() {
            return Err(ClientConfigError::NoTypeUrls);
        }
        let mut headers = Vec::new();
        let cluster = config
            .cluster_id
            .as_ref()
            .map(|id| ("clusterid".to_owned(), id.clone()));
        for (name, value) in config.headers.iter().cloned().chain(cluster) {
            let key = AsciiMetadataKey::from_bytes(name.as_bytes())
                .map_err(|_| ClientConfigError::InvalidHeaderName(name.clone()))?;
            let value = AsciiMetadataValue::try_from(value.as_str())
                .map_err(|_| ClientConfigError::InvalidHeaderValue(name.clone()))?;
            headers.push((key, value));
        }
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        Ok(Self {
            config,
            channel,
            handler,
            headers,
            retained: HashMap::new(),
            synced_types: HashSet::new(),
            synced: watch::Sender::new(false),
            events,
        })
    }

    /// A signal that becomes true once the first response of each type was applied.
    pub fn synced(&self) -> SyncedSignal {
        SyncedSignal(self.synced.subscribe())
    }

    /// A receiver of [`ClientEvent`]s.
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.events.subscribe()
    }

    /// Runs streams (reconnecting as needed) until `shutdown` completes. Returns the
    /// handler.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> H {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = self.config.initial_backoff;
        loop {
            let (end, progressed) = tokio::select! {
                result = self.run_stream() => result,
                () = &mut shutdown => return self.handler,
            };
            if progressed {
                backoff = self.config.initial_backoff;
            }
            let (reason, delay) = match end {
                StreamEnd::Establish(status) => {
                    let delay = backoff;
                    backoff = backoff.saturating_mul(2).min(self.config.max_backoff);
                    (format!("could not establish the stream: {status}"), delay)
                }
                StreamEnd::Status(status) if is_normal_close(&status) => {
                    backoff = self.config.initial_backoff;
                    (format!("stream closed: {status}"), backoff)
                }
                StreamEnd::Status(status) => {
                    let delay = backoff;
                    backoff = backoff.saturating_mul(2).min(self.config.max_backoff);
                    (format!("stream failed: {status}"), delay)
                }
                StreamEnd::Closed => {
                    backoff = self.config.initial_backoff;
                    ("stream ended".to_owned(), backoff)
                }
            };
            tracing::info!(%reason, retry_in = ?delay, "delta ADS stream ended");
            let _ = self.events.send(ClientEvent::Disconnected {
                reason,
                retry_in: delay,
            });
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut shutdown => return self.handler,
            }
        }
    }

    async fn metadata(&self) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (key, value) in &self.headers {
            map.insert(key.clone(), value.clone());
        }
        let token = match &self.config.token {
            None => None,
            Some(TokenSource::Static(token)) => Some(token.clone()),
            Some(TokenSource::File(path)) => match tokio::fs::read_to_string(path).await {
                Ok(token) => Some(token.trim().to_owned()),
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "no bearer token");
                    None
                }
            },
        };
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            match AsciiMetadataValue::try_from(format!("Bearer {token}")) {
                Ok(value) => {
                    map.insert("authorization", value);
                }
                Err(_) => tracing::warn!("bearer token is not a valid header value; not sent"),
            }
        }
        map
    }

    /// Runs one stream; returns how it ended and whether any response arrived.
    async fn run_stream(&mut self) -> (StreamEnd, bool) {
        let (tx, rx) = mpsc::channel(self.config.type_urls.len() + 8);
        let node = self.config.node.to_proto();
        for type_url in &self.config.type_urls {
            let request = DeltaDiscoveryRequest {
                node: Some(node.clone()),
                type_url: type_url.clone(),
                initial_resource_versions: self.retained.get(type_url).cloned().unwrap_or_default(),
                ..Default::default()
            };
            // The channel has room for every initial request.
            if tx.try_send(request).is_err() {
                return (StreamEnd::Closed, false);
            }
        }
        let mut request = Request::new(ReceiverStream::new(rx));
        *request.metadata_mut() = self.metadata().await;
        let mut grpc = AggregatedDiscoveryServiceClient::new(self.channel.clone())
            .max_decoding_message_size(self.config.max_decoding_message_size);
        let mut inbound = match grpc.delta_aggregated_resources(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return (StreamEnd::Establish(status), false),
        };
        tracing::debug!(node = %self.config.node.id, "delta ADS stream established");
        let _ = self.events.send(ClientEvent::Connected);
        let mut progressed = false;
        loop {
            match inbound.message().await {
                Ok(Some(response)) => {
                    progressed = true;
                    let ack = self.on_response(response);
                    if tx.send(ack).await.is_err() {
                        return (StreamEnd::Closed, progressed);
                    }
                }
                Ok(None) => return (StreamEnd::Closed, progressed),
                Err(status) => return (StreamEnd::Status(status), progressed),
            }
        }
    }

    fn on_response(&mut self, response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let rejected = self.handler.apply(DeltaUpdate {
            type_url: &response.type_url,
            resources: &response.resources,
            removed: &response.removed_resources,
        });
        // Versions are kept only for the types this client subscribes to (they are sent
        // back on reconnect); a server pushing other types cannot grow this map.
        if self.config.type_urls.contains(&response.type_url) {
            let rejected_names: HashSet<&str> = rejected.iter().map(|r| r.name.as_str()).collect();
            let retained = self.retained.entry(response.type_url.clone()).or_default();
            for name in &response.removed_resources {
                retained.remove(name);
            }
            for resource in &response.resources {
                if !rejected_names.contains(resource.name.as_str()) {
                    retained.insert(resource.name.clone(), resource.version.clone());
                }
            }
        }

        if self.config.type_urls.contains(&response.type_url)
            && self.synced_types.insert(response.type_url.clone())
            && self
                .config
                .type_urls
                .iter()
                .all(|t| self.synced_types.contains(t))
        {
            tracing::info!(node = %self.config.node.id, "delta ADS synced");
            self.synced.send_replace(true);
        }

        let error_detail = if rejected.is_empty() {
            tracing::debug!(type_url = %response.type_url, nonce = %response.nonce,
                resources = response.resources.len(), removed = response.removed_resources.len(),
                "delta ADS response applied");
            None
        } else {
            let message = rejected
                .iter()
                .map(|r| format!("{}: {}", r.name, r.reason))
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(type_url = %response.type_url, nonce = %response.nonce, %message,
                "delta ADS resources rejected");
            Some(rpc::Status {
                code: NACK_CODE,
                message,
                details: Vec::new(),
            })
        };
        let _ = self.events.send(ClientEvent::Applied {
            type_url: response.type_url.clone(),
            nonce: response.nonce.clone(),
            resources: response.resources.len(),
            removed: response.removed_resources.len(),
            rejected,
        });
        DeltaDiscoveryRequest {
            type_url: response.type_url,
            response_nonce: response.nonce,
            error_detail,
            ..Default::default()
        }
    }
}

/// Whether `status` is a normal server-initiated close, after which the client reconnects
/// at once.
fn is_normal_close(status: &Status) -> bool {
    match status.code() {
        Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
        Code::Unavailable => {
            let message = status.message();
            message.contains("transport is closing") || message.contains("received prior goaway")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_node_identity() {
        let node = NodeInfo::proxy("10.0.0.9".parse().unwrap(), "zt-1", "istio-system", "n1")
            .with_metadata("CLUSTER_ID", "c1")
            .to_proto();
        assert_eq!(
            node.id,
            "ztunnel~10.0.0.9~zt-1.istio-system~istio-system.svc.cluster.local"
        );
        let fields = node.metadata.unwrap().fields;
        let get = |k: &str| match fields.get(k).and_then(|v| v.kind.clone()) {
            Some(prost_types::value::Kind::StringValue(s)) => s,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(get("NAME"), "zt-1");
        assert_eq!(get("NAMESPACE"), "istio-system");
        assert_eq!(get("INSTANCE_IPS"), "10.0.0.9");
        assert_eq!(get("NODE_NAME"), "n1");
        assert_eq!(get("CLUSTER_ID"), "c1");
        assert!(node.cluster.is_empty() && node.build_version.is_empty());
    }

    #[test]
    fn normal_closes() {
        assert!(is_normal_close(&Status::unknown("x")));
        assert!(is_normal_close(&Status::cancelled("x")));
        assert!(is_normal_close(&Status::deadline_exceeded("x")));
        assert!(is_normal_close(&Status::unavailable(
            "transport is closing"
        )));
        assert!(is_normal_close(&Status::unavailable(
            "the connection received prior goaway: code: NO_ERROR"
        )));
        assert!(!is_normal_close(&Status::unavailable("connection refused")));
        assert!(!is_normal_close(&Status::internal("x")));
        assert!(!is_normal_close(&Status::permission_denied("x")));
    }

    #[tokio::test]
    async fn versions_are_retained_only_for_subscribed_types() {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let mut client = AdsClient::new(ClientConfig::default(), channel, |_: DeltaUpdate<'_>| {
            Vec::new()
        })
        .unwrap();
        let resource = |name: &str| Resource {
            name: name.to_owned(),
            version: "v1".to_owned(),
            ..Default::default()
        };
        for (type_url, name) in [(ADDRESS_TYPE_URL, "a"), ("type.example/Other", "b")] {
            let ack = client.on_response(DeltaDiscoveryResponse {
                type_url: type_url.to_owned(),
                nonce: "n".to_owned(),
                resources: vec![resource(name)],
                ..Default::default()
            });
            // Every response is acknowledged, known type or not.
            assert_eq!(ack.type_url, type_url);
            assert!(ack.error_detail.is_none());
        }
        assert_eq!(client.retained.len(), 1);
        assert_eq!(client.retained[ADDRESS_TYPE_URL]["a"], "v1");
    }

    #[tokio::test]
    async fn invalid_headers_are_rejected() {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let mut config = ClientConfig::default();
        config.header("bad header", "v");
        let err =
            AdsClient::new(config, channel.clone(), |_: DeltaUpdate<'_>| Vec::new()).unwrap_err();
        assert_eq!(
            err,
            ClientConfigError::InvalidHeaderName("bad header".into())
        );
        let mut config = ClientConfig::default();
        config.cluster_id(Some("bad\nvalue".into()));
        let err =
            AdsClient::new(config, channel.clone(), |_: DeltaUpdate<'_>| Vec::new()).unwrap_err();
        assert_eq!(
            err,
            ClientConfigError::InvalidHeaderValue("clusterid".into())
        );
        let mut config = ClientConfig::default();
        config.type_urls(Vec::<String>::new());
        let err = AdsClient::new(config, channel, |_: DeltaUpdate<'_>| Vec::new()).unwrap_err();
        assert_eq!(err, ClientConfigError::NoTypeUrls);
    }
}
