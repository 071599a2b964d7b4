//! The tonic service and the task that runs each Delta ADS stream.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Shared;
use super::event::ServerEvent;
use super::subscription::Subscription;
use crate::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use crate::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

/// The tonic service behind [`AdsServer::service`](super::AdsServer::service).
#[derive(Debug, Clone)]
pub struct AdsService {
    pub(super) shared: Arc<Shared>,
}

/// How long a stream ended by the server waits to hand its final status to tonic.
const END_STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Response stream of one Delta ADS call.
pub type DeltaResponseStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type DeltaAggregatedResourcesStream = DeltaResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        if *self.shared.closed.borrow() {
            return Err(Status::unavailable("server is shutting down"));
        }
        let (tx, rx) = mpsc::channel(2);
        let id = self.shared.next_stream.fetch_add(1, Ordering::Relaxed);
        let stream = StreamState::new(self.shared.clone(), id);
        tokio::spawn(stream.run(request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Completes when the stream must end: on [`AdsServer::disconnect_all`](super::AdsServer::disconnect_all) or once the server
/// is closed.
async fn stop_requested(kick: &mut watch::Receiver<u64>, closed: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = kick.changed() => {}
        _ = closed.wait_for(|c| *c) => {}
    }
}

#[derive(Debug)]
struct StreamState {
    shared: Arc<Shared>,
    id: u64,
    node_id: String,
    /// In the order the client subscribed.
    subs: Vec<(String, Subscription)>,
    next_nonce: u64,
}

impl StreamState {
    fn new(shared: Arc<Shared>, id: u64) -> Self {
        Self {
            shared,
            id,
            node_id: String::new(),
            subs: Vec::new(),
            next_nonce: 0,
        }
    }

    async fn run(
        mut self,
        mut requests: Streaming<DeltaDiscoveryRequest>,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) {
        let shared = self.shared.clone();
        shared
            .counters
            .active_streams
            .fetch_add(1, Ordering::Relaxed);
        let mut changes = shared.changes.subscribe();
        let mut kick = shared.kick.subscribe();
        let mut closed = shared.closed.subscribe();
        loop {
            changes.borrow_and_update();
            // With responses pending, wait for room to send the next one; otherwise wait
            // for the resources to change.
            let pending = self.pending();
            tokio::select! {
                biased;
                () = stop_requested(&mut kick, &mut closed) => {
                    let _ = tx.try_send(Err(Status::unavailable("server closed the stream")));
                    break;
                }
                request = requests.next() => {
                    if !self.on_request(request, &tx).await {
                        break;
                    }
                }
                permit = tx.reserve(), if pending => {
                    let Ok(permit) = permit else { break };
                    if let Some(response) = self.next_response() {
                        permit.send(Ok(response));
                    }
                }
                changed = changes.changed(), if !pending => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = tx.closed(), if !pending => break,
            }
        }
        shared
            .counters
            .active_streams
            .fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(stream = self.id, node = %self.node_id, "delta ADS stream ended");
        shared.emit(ServerEvent::Disconnected {
            stream: self.id,
            node_id: self.node_id,
        });
    }

    /// Handles one inbound item; returns whether the stream goes on.
    async fn on_request(
        &mut self,
        request: Option<Result<DeltaDiscoveryRequest, Status>>,
        tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> bool {
        match request {
            Some(Ok(request)) => match self.handle(request) {
                Ok(()) => true,
                Err(status) => {
                    tracing::warn!(stream = self.id, node = %self.node_id, %status, "ending delta ADS stream");
                    // Bounded: a client that reads nothing more must not hold the task.
                    let _ = tokio::time::timeout(END_STATUS_TIMEOUT, tx.send(Err(status))).await;
                    false
                }
            },
            Some(Err(status)) => {
                tracing::debug!(stream = self.id, node = %self.node_id, %status, "delta ADS request stream failed");
                false
            }
            None => false,
        }
    }

    fn pending(&self) -> bool {
        let resources = self.shared.read();
        self.subs
            .iter()
            .any(|(type_url, sub)| sub.pending(resources.types.get(type_url)))
    }

    fn next_response(&mut self) -> Option<DeltaDiscoveryResponse> {
        let shared = self.shared.clone();
        let resources = shared.read();
        let (type_url, sub) = self
            .subs
            .iter_mut()
            .find(|(type_url, sub)| sub.pending(resources.types.get(type_url)))?;
        let initial = sub.initial;
        let ts = resources.types.get(type_url.as_str());
        let (out, removed) = sub.build(ts);
        if out.is_empty() && removed.is_empty() && !initial {
            return None;
        }
        self.next_nonce += 1;
        let nonce = format!("{}-{}", self.id, self.next_nonce);
        sub.outstanding.push_back(nonce.clone());
        while sub.outstanding.len() > shared.config.outstanding_nonces.max(1) {
            sub.outstanding.pop_front();
        }
        let counters = &shared.counters;
        counters.responses.fetch_add(1, Ordering::Relaxed);
        counters
            .resources
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        counters
            .removals
            .fetch_add(removed.len() as u64, Ordering::Relaxed);
        tracing::debug!(
            stream = self.id, node = %self.node_id, type_url = %type_url, %nonce,
            resources = out.len(), removed = removed.len(), "sending delta ADS response"
        );
        shared.emit(ServerEvent::Sent {
            stream: self.id,
            node_id: self.node_id.clone(),
            type_url: type_url.clone(),
            nonce: nonce.clone(),
            resources: out.len(),
            removed: removed.len(),
        });
        Some(DeltaDiscoveryResponse {
            system_version_info: ts.map_or(0, |t| t.seq).to_string(),
            resources: out,
            type_url: type_url.clone(),
            nonce,
            removed_resources: removed,
        })
    }

    fn handle(&mut self, request: DeltaDiscoveryRequest) -> Result<(), Status> {
        if self.node_id.is_empty()
            && let Some(node) = &request.node
            && !node.id.is_empty()
        {
            self.node_id = node.id.clone();
            tracing::debug!(stream = self.id, node = %self.node_id, "delta ADS client connected");
            self.shared.emit(ServerEvent::Connected {
                stream: self.id,
                node_id: self.node_id.clone(),
            });
        }
        if request.type_url.is_empty() {
            tracing::warn!(stream = self.id, node = %self.node_id, "delta ADS request without type URL ignored");
            return Ok(());
        }
        let index = match self.subs.iter().position(|(t, _)| *t == request.type_url) {
            Some(i) => i,
            None => {
                if self.subs.len() >= self.shared.config.max_type_urls_per_stream {
                    return Err(Status::resource_exhausted(format!(
                        "more than {} type URLs on one stream",
                        self.shared.config.max_type_urls_per_stream
                    )));
                }
                // First request for this type: legacy wildcard when it names nothing.
                let sub = Subscription {
                    wildcard: request.resource_names_subscribe.is_empty(),
                    known: request.initial_resource_versions.clone(),
                    initial: true,
                    ..Default::default()
                };
                self.subs.push((request.type_url.clone(), sub));
                self.subs.len() - 1
            }
        };
        let Some((type_url, sub)) = self.subs.get_mut(index) else {
            return Ok(());
        };
        if !request.response_nonce.is_empty() {
            match sub
                .outstanding
                .iter()
                .position(|n| *n == request.response_nonce)
            {
                Some(i) => {
                    sub.outstanding.drain(..=i);
                    if let Some(error) = &request.error_detail {
                        self.shared.counters.nacks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            stream = self.id, node = %self.node_id, type_url = %type_url,
                            nonce = %request.response_nonce, error = %error.message,
                            "delta ADS response rejected"
                        );
                        self.shared.emit(ServerEvent::Nack {
                            stream: self.id,
                            node_id: self.node_id.clone(),
                            type_url: type_url.clone(),
                            nonce: request.response_nonce.clone(),
                            code: error.code,
                            message: error.message.clone(),
                        });
                    } else {
                        self.shared.counters.acks.fetch_add(1, Ordering::Relaxed);
                        self.shared.emit(ServerEvent::Ack {
                            stream: self.id,
                            node_id: self.node_id.clone(),
                            type_url: type_url.clone(),
                            nonce: request.response_nonce.clone(),
                        });
                    }
                }
                None => {
                    tracing::debug!(
                        stream = self.id, node = %self.node_id, type_url = %type_url,
                        nonce = %request.response_nonce, "ACK/NACK for an unknown or superseded nonce ignored"
                    );
                }
            }
        }
        let first = sub.initial;
        for name in request.resource_names_subscribe {
            if name == "*" {
                sub.wildcard = true;
            } else {
                if !(first && sub.known.contains_key(&name)) {
                    sub.forced.insert(name.clone());
                }
                sub.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(&name);
                sub.forced.remove(&name);
                sub.known.remove(&name);
            }
        }
        Ok(())
    }
}
