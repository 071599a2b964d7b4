//! Delta ADS client: subscribes, applies responses through a [`DeltaHandler`], ACKs or
//! NACKs each one, and reconnects with the versions it holds.
//!
//! The caller brings a tonic [`Channel`] (which carries the address and any TLS) and a
//! handler: a [`StoreHandler`] to sync into a [`WorkloadStore`](crate::WorkloadStore), or
//! any closure over [`DeltaUpdate`]s.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use crate::pb::google::rpc;

mod backoff;
mod config;
mod event;
mod handler;
#[cfg(test)]
mod tests;

use backoff::Backoff;
pub use config::{ClientConfig, ClientConfigError, NodeInfo, TokenSource};
pub use event::{ClientEvent, SyncedSignal};
pub use handler::{DeltaHandler, DeltaUpdate, Rejection, StoreHandler};

/// Status code sent in `error_detail` of a NACK: left unset (0), matching the
/// workload-xDS wire contract; a server recognises a NACK by the presence of
/// `error_detail`, and its message lists `<name>: <reason>` per rejected resource.
const NACK_CODE: i32 = 0;

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
/// unexpected status, the back-off step doubles from [`ClientConfig::initial_backoff`] up
/// to [`ClientConfig::max_backoff`]; after a normal server-side close (status `UNKNOWN`,
/// `CANCELLED`, `DEADLINE_EXCEEDED`, or `UNAVAILABLE` for a closing transport or GOAWAY)
/// or a clean end, it is `initial_backoff` again. Each delay is its step plus a random
/// amount up to the step (jitter). A stream that received a response resets the back-off.
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
        let mut backoff = Backoff::new(self.config.initial_backoff, self.config.max_backoff);
        loop {
            let (end, progressed) = tokio::select! {
                result = self.run_stream() => result,
                () = &mut shutdown => return self.handler,
            };
            if progressed {
                backoff.reset();
            }
            let (reason, delay) = match end {
                StreamEnd::Establish(status) => (
                    format!("could not establish the stream: {status}"),
                    backoff.after_failure(),
                ),
                StreamEnd::Status(status) if is_normal_close(&status) => (
                    format!("stream closed: {status}"),
                    backoff.after_normal_close(),
                ),
                StreamEnd::Status(status) => {
                    (format!("stream failed: {status}"), backoff.after_failure())
                }
                StreamEnd::Closed => ("stream ended".to_owned(), backoff.after_normal_close()),
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
