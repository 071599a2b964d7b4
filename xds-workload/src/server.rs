//! Delta ADS server: versioned resources per type URL, pushed to every subscriber.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use prost::{Message, Name};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::error::ServeError;
use crate::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use crate::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use crate::pb::istio::{security, workload};

/// Configuration of an [`AdsServer`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Largest request message accepted. Default: 64 MiB (a reconnecting client lists every
    /// resource it holds in its first request).
    pub max_decoding_message_size: usize,
    /// Capacity of the [`ServerEvent`] broadcast; slow receivers lose the oldest events.
    /// Default: 1024.
    pub event_capacity: usize,
    /// Nonces remembered per stream and type while waiting for an ACK. Default: 16.
    pub outstanding_nonces: usize,
    /// Distinct type URLs one stream may subscribe to; a stream that asks for more is
    /// ended with `RESOURCE_EXHAUSTED`, so a client cannot make the server hold
    /// unbounded per-stream state. Default: 16.
    pub max_type_urls_per_stream: usize,
    /// HTTP/2 keep-alive PING interval used by the `serve_*` functions. Default: 30 s.
    pub http2_keepalive_interval: Option<Duration>,
    /// HTTP/2 keep-alive PING timeout used by the `serve_*` functions. Default: 10 s.
    pub http2_keepalive_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_decoding_message_size: 64 << 20,
            event_capacity: 1024,
            outstanding_nonces: 16,
            max_type_urls_per_stream: 16,
            http2_keepalive_interval: Some(Duration::from_secs(30)),
            http2_keepalive_timeout: Some(Duration::from_secs(10)),
        }
    }
}

impl ServerConfig {
    /// Sets [`ServerConfig::max_decoding_message_size`].
    pub fn max_decoding_message_size(&mut self, limit: usize) -> &mut Self {
        self.max_decoding_message_size = limit;
        self
    }

    /// Sets [`ServerConfig::event_capacity`].
    pub fn event_capacity(&mut self, capacity: usize) -> &mut Self {
        self.event_capacity = capacity;
        self
    }

    /// Sets [`ServerConfig::outstanding_nonces`].
    pub fn outstanding_nonces(&mut self, n: usize) -> &mut Self {
        self.outstanding_nonces = n;
        self
    }

    /// Sets [`ServerConfig::max_type_urls_per_stream`].
    pub fn max_type_urls_per_stream(&mut self, n: usize) -> &mut Self {
        self.max_type_urls_per_stream = n;
        self
    }

    /// Sets [`ServerConfig::http2_keepalive_interval`] and
    /// [`ServerConfig::http2_keepalive_timeout`].
    pub fn http2_keepalive(
        &mut self,
        interval: Option<Duration>,
        timeout: Option<Duration>,
    ) -> &mut Self {
        self.http2_keepalive_interval = interval;
        self.http2_keepalive_timeout = timeout;
        self
    }
}

/// A change to the resources of one type URL.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ResourceChange {
    /// Insert or replace a resource.
    Upsert {
        /// Resource name.
        name: String,
        /// Payload.
        resource: prost_types::Any,
    },
    /// Remove a resource.
    Remove {
        /// Resource name.
        name: String,
    },
}

impl ResourceChange {
    /// Inserts or replaces `name` with `message`.
    pub fn upsert<M: Message + Name>(name: impl Into<String>, message: &M) -> Self {
        Self::Upsert {
            name: name.into(),
            resource: prost_types::Any {
                type_url: M::type_url(),
                value: message.encode_to_vec(),
            },
        }
    }

    /// Inserts or replaces `name` with an already encoded payload.
    pub fn upsert_any(name: impl Into<String>, resource: prost_types::Any) -> Self {
        Self::Upsert {
            name: name.into(),
            resource,
        }
    }

    /// Removes `name`.
    pub fn remove(name: impl Into<String>) -> Self {
        Self::Remove { name: name.into() }
    }

    /// A workload as an `Address` resource named by its uid (for [`crate::ADDRESS_TYPE_URL`]).
    pub fn workload(w: workload::Workload) -> Self {
        let name = w.uid.clone();
        Self::upsert(
            name,
            &workload::Address {
                r#type: Some(workload::address::Type::Workload(w)),
            },
        )
    }

    /// A service as an `Address` resource named `namespace/hostname` (for
    /// [`crate::ADDRESS_TYPE_URL`]).
    pub fn service(s: workload::Service) -> Self {
        let name = format!("{}/{}", s.namespace, s.hostname);
        Self::upsert(
            name,
            &workload::Address {
                r#type: Some(workload::address::Type::Service(s)),
            },
        )
    }

    /// A policy named `namespace/name` (for [`crate::AUTHORIZATION_TYPE_URL`]).
    pub fn authorization(a: &security::Authorization) -> Self {
        Self::upsert(format!("{}/{}", a.namespace, a.name), a)
    }
}

/// Something that happened on a stream, for the server's owner.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A stream identified its node.
    Connected {
        /// Stream id (unique within this server).
        stream: u64,
        /// `Node.id` of the client.
        node_id: String,
    },
    /// A response was sent.
    Sent {
        /// Stream id.
        stream: u64,
        /// `Node.id` of the client ("" if it never sent one).
        node_id: String,
        /// Type URL.
        type_url: String,
        /// Nonce of the response.
        nonce: String,
        /// Resources added or updated.
        resources: usize,
        /// Resources removed.
        removed: usize,
    },
    /// A response was accepted.
    Ack {
        /// Stream id.
        stream: u64,
        /// `Node.id` of the client.
        node_id: String,
        /// Type URL.
        type_url: String,
        /// Nonce of the accepted response.
        nonce: String,
    },
    /// A response was rejected (in whole or in part). The server does not resend the
    /// rejected versions; a later change of a resource is pushed as usual.
    Nack {
        /// Stream id.
        stream: u64,
        /// `Node.id` of the client.
        node_id: String,
        /// Type URL.
        type_url: String,
        /// Nonce of the rejected response.
        nonce: String,
        /// `error_detail.code` sent by the client.
        code: i32,
        /// `error_detail.message` sent by the client.
        message: String,
    },
    /// A stream ended.
    Disconnected {
        /// Stream id.
        stream: u64,
        /// `Node.id` of the client.
        node_id: String,
    },
}

/// Counters of an [`AdsServer`] since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ServerStats {
    /// Streams currently open.
    pub active_streams: u64,
    /// Responses sent.
    pub responses: u64,
    /// Resources sent (added or updated), summed over responses.
    pub resources: u64,
    /// Removals sent, summed over responses.
    pub removals: u64,
    /// ACKs received.
    pub acks: u64,
    /// NACKs received.
    pub nacks: u64,
}

#[derive(Debug, Default)]
struct Counters {
    active_streams: AtomicU64,
    responses: AtomicU64,
    resources: AtomicU64,
    removals: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
}

#[derive(Debug, Clone)]
struct Entry {
    version: String,
    resource: prost_types::Any,
}

/// The resources of one type URL plus a change log that lets each subscriber catch up from
/// the sequence number it last saw.
#[derive(Debug, Default)]
struct TypeState {
    /// Sequence number of the last change of this type.
    seq: u64,
    resources: HashMap<String, Entry>,
    /// Sequence number of the latest change of each name (upsert or removal) to the name.
    log: BTreeMap<u64, String>,
    /// Name to its key in `log`.
    last_change: HashMap<String, u64>,
    /// Entries of `log` that are removals.
    tombstones: usize,
    /// Removals up to this sequence number were dropped from the log: a subscriber that
    /// last saw an older number must compare its whole state.
    floor: u64,
}

impl TypeState {
    fn record(&mut self, name: &str, seq: u64, was_present: bool, removal: bool) {
        if let Some(old) = self.last_change.insert(name.to_owned(), seq) {
            self.log.remove(&old);
            if !was_present {
                self.tombstones = self.tombstones.saturating_sub(1);
            }
        }
        self.log.insert(seq, name.to_owned());
        if removal {
            self.tombstones += 1;
        }
        self.seq = seq;
    }

    fn compact(&mut self) {
        if self.tombstones <= self.resources.len().max(1024) {
            return;
        }
        let resources = &self.resources;
        let last_change = &mut self.last_change;
        self.log.retain(|_, name| {
            let keep = resources.contains_key(name);
            if !keep {
                last_change.remove(name);
            }
            keep
        });
        self.tombstones = 0;
        self.floor = self.seq;
    }
}

#[derive(Debug, Default)]
struct Resources {
    seq: u64,
    types: HashMap<String, TypeState>,
}

fn version_of(resource: &prost_types::Any) -> String {
    let mut hasher = DefaultHasher::new();
    resource.type_url.hash(&mut hasher);
    resource.value.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn apply_changes(
    resources: &mut Resources,
    type_url: &str,
    changes: impl IntoIterator<Item = ResourceChange>,
) -> usize {
    let mut effective = 0;
    let mut seq = resources.seq;
    let ts = resources.types.entry(type_url.to_owned()).or_default();
    for change in changes {
        match change {
            ResourceChange::Upsert { name, resource } => {
                let version = version_of(&resource);
                let was_present = match ts.resources.get(&name) {
                    Some(e) if e.version == version => continue,
                    Some(_) => true,
                    None => false,
                };
                seq += 1;
                ts.record(&name, seq, was_present, false);
                ts.resources.insert(name, Entry { version, resource });
            }
            ResourceChange::Remove { name } => {
                if ts.resources.remove(&name).is_none() {
                    continue;
                }
                seq += 1;
                ts.record(&name, seq, true, true);
            }
        }
        effective += 1;
    }
    ts.compact();
    resources.seq = seq;
    effective
}

#[derive(Debug)]
struct Shared {
    config: ServerConfig,
    resources: RwLock<Resources>,
    changes: watch::Sender<u64>,
    kick: watch::Sender<u64>,
    closed: watch::Sender<bool>,
    events: broadcast::Sender<ServerEvent>,
    counters: Counters,
    next_stream: AtomicU64,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Resources> {
        self.resources
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Resources> {
        self.resources
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, event: ServerEvent) {
        // No receiver is fine: events are informational.
        let _ = self.events.send(event);
    }
}

/// A Delta ADS (incremental aggregated discovery) server.
///
/// The owner publishes resources per type URL with [`AdsServer::publish`]; every change is
/// pushed to every subscribed stream. Each stream keeps its own view of what its client
/// holds (name to version), so streams never share or split events: a stream that falls
/// behind receives the accumulated difference in one response.
///
/// * Versions are derived from the encoded resource, so republishing identical content is
///   a no-op, and a client that reconnects (to this or a restarted server) with
///   `initial_resource_versions` receives only what differs, plus removals of names the
///   server no longer has.
/// * The first response for each subscribed type is sent even when there is nothing in
///   it, and holds the full snapshot.
/// * Subscriptions may be wildcard (empty first subscribe list, or `*`) or by name.
/// * ACKs and NACKs are matched by nonce. A NACK is reported as [`ServerEvent::Nack`] and
///   counted; the rejected versions are not resent.
///
/// [`AdsServer::service`] returns a tonic service to add to the caller's own router
/// (beside other services on one TLS port, for instance); [`AdsServer::serve_with_incoming`]
/// and [`AdsServer::serve_unix`] are conveniences. This crate does no TLS itself.
#[derive(Debug, Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
}

impl Default for AdsServer {
    fn default() -> Self {
        Self::new(ServerConfig::default())
    }
}

impl AdsServer {
    /// A server without resources.
    pub fn new(config: ServerConfig) -> Self {
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        Self {
            shared: Arc::new(Shared {
                config,
                resources: RwLock::new(Resources::default()),
                changes: watch::Sender::new(0),
                kick: watch::Sender::new(0),
                closed: watch::Sender::new(false),
                events,
                counters: Counters::default(),
                next_stream: AtomicU64::new(1),
            }),
        }
    }

    /// Applies `changes` to the resources of `type_url` atomically: subscribers see all of
    /// them in one response. Returns the number of changes that had an effect (identical
    /// upserts and removals of absent names have none).
    pub fn publish(
        &self,
        type_url: &str,
        changes: impl IntoIterator<Item = ResourceChange>,
    ) -> usize {
        let effective = apply_changes(&mut self.shared.write(), type_url, changes);
        if effective > 0 {
            self.shared.changes.send_modify(|g| *g += 1);
        }
        effective
    }

    /// Replaces the whole resource set of `type_url` atomically: upserts every given
    /// resource and removes every other name. Returns the number of effective changes.
    pub fn replace(
        &self,
        type_url: &str,
        resources: impl IntoIterator<Item = (String, prost_types::Any)>,
    ) -> usize {
        let upserts: HashMap<String, prost_types::Any> = resources.into_iter().collect();
        let effective = {
            let mut guard = self.shared.write();
            let removals: Vec<ResourceChange> = guard
                .types
                .get(type_url)
                .map(|ts| {
                    ts.resources
                        .keys()
                        .filter(|name| !upserts.contains_key(name.as_str()))
                        .map(ResourceChange::remove)
                        .collect()
                })
                .unwrap_or_default();
            let changes = removals.into_iter().chain(
                upserts
                    .into_iter()
                    .map(|(name, resource)| ResourceChange::Upsert { name, resource }),
            );
            apply_changes(&mut guard, type_url, changes)
        };
        if effective > 0 {
            self.shared.changes.send_modify(|g| *g += 1);
        }
        effective
    }

    /// Names and versions of the current resources of `type_url`, sorted by name.
    pub fn versions(&self, type_url: &str) -> Vec<(String, String)> {
        let mut list: Vec<_> = self
            .shared
            .read()
            .types
            .get(type_url)
            .map(|ts| {
                ts.resources
                    .iter()
                    .map(|(n, e)| (n.clone(), e.version.clone()))
                    .collect()
            })
            .unwrap_or_default();
        list.sort();
        list
    }

    /// A receiver of [`ServerEvent`]s (NACKs among them).
    pub fn events(&self) -> broadcast::Receiver<ServerEvent> {
        self.shared.events.subscribe()
    }

    /// Counters since the server was created.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        ServerStats {
            active_streams: c.active_streams.load(Ordering::Relaxed),
            responses: c.responses.load(Ordering::Relaxed),
            resources: c.resources.load(Ordering::Relaxed),
            removals: c.removals.load(Ordering::Relaxed),
            acks: c.acks.load(Ordering::Relaxed),
            nacks: c.nacks.load(Ordering::Relaxed),
        }
    }

    /// Ends every open stream with status `UNAVAILABLE`; clients reconnect. Streams opened
    /// afterwards are not affected.
    pub fn disconnect_all(&self) {
        self.shared.kick.send_modify(|g| *g += 1);
    }

    /// Closes the server for good: ends every open stream with status `UNAVAILABLE` and
    /// refuses new ones. The `serve_*` functions call this when their shutdown signal
    /// completes; a caller serving [`AdsServer::service`] in its own server should call it
    /// when shutting down, since open streams otherwise keep a graceful shutdown waiting.
    pub fn close(&self) {
        self.shared.closed.send_replace(true);
    }

    /// Whether [`AdsServer::close`] was called.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// The tonic service, to add to a caller-built `tonic::transport::Server`.
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<AdsService> {
        AggregatedDiscoveryServiceServer::new(AdsService {
            shared: self.shared.clone(),
        })
        .max_decoding_message_size(self.shared.config.max_decoding_message_size)
    }

    fn builder(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(self.shared.config.http2_keepalive_interval)
            .http2_keepalive_timeout(self.shared.config.http2_keepalive_timeout)
    }

    /// Serves gRPC on already-accepted connections (plain TCP, or TLS streams the caller
    /// accepted) until `shutdown` completes; then [closes](AdsServer::close) the server and
    /// drains the connections.
    pub async fn serve_with_incoming<S, IO, E>(
        &self,
        incoming: S,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError>
    where
        S: Stream<Item = Result<IO, E>>,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let server = self.clone();
        let signal = async move {
            shutdown.await;
            server.close();
        };
        self.builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(incoming.map(|io| io.map(AcceptedIo)), signal)
            .await?;
        Ok(())
    }

    /// Serves gRPC on a unix socket listener until `shutdown` completes.
    pub async fn serve_unix(
        &self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        self.serve_with_incoming(UnixListenerStream::new(listener), shutdown)
            .await
    }
}

/// Wraps an already-accepted connection of any kind (a TLS stream, a TCP or unix stream)
/// so that tonic's server can serve it: tonic wants its `Connected` trait, which this
/// implements with no connection info.
///
/// [`AdsServer::serve_with_incoming`] wraps connections itself; this is for callers that
/// build their own `tonic::transport::Server` (for instance with [`AdsServer::service`]
/// next to other services) and serve a stream of TLS connections they accepted.
#[derive(Debug)]
pub struct AcceptedIo<IO>(pub IO);

impl<IO> tonic::transport::server::Connected for AcceptedIo<IO> {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl<IO: AsyncRead + Unpin> AsyncRead for AcceptedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AcceptedIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The tonic service behind [`AdsServer::service`].
#[derive(Debug, Clone)]
pub struct AdsService {
    shared: Arc<Shared>,
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

/// Completes when the stream must end: on [`AdsServer::disconnect_all`] or once the server
/// is closed.
async fn stop_requested(kick: &mut watch::Receiver<u64>, closed: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = kick.changed() => {}
        _ = closed.wait_for(|c| *c) => {}
    }
}

/// One client's subscription to one type URL on one stream.
#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    names: HashSet<String>,
    /// What the client holds: name to version.
    known: HashMap<String, String>,
    /// Sequence number of the type state this subscription has caught up with.
    last_seq: u64,
    /// No response sent yet: the next one is a full snapshot, sent even if empty.
    initial: bool,
    /// Names (re)subscribed by name: their state is sent whatever the client holds.
    forced: HashSet<String>,
    /// Nonces sent and not yet acknowledged, oldest first.
    outstanding: VecDeque<String>,
}

impl Subscription {
    fn interested(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    fn pending(&self, ts: Option<&TypeState>) -> bool {
        self.initial || !self.forced.is_empty() || ts.is_some_and(|t| t.seq > self.last_seq)
    }

    /// Decides what to send for `name`.
    fn consider(
        &mut self,
        name: &str,
        ts: Option<&TypeState>,
        forced: bool,
        out: &mut Vec<Resource>,
        removed: &mut Vec<String>,
    ) {
        let entry = ts.and_then(|t| t.resources.get(name));
        match entry {
            Some(entry) if self.interested(name) => {
                if forced || self.known.get(name) != Some(&entry.version) {
                    self.known.insert(name.to_owned(), entry.version.clone());
                    out.push(Resource {
                        version: entry.version.clone(),
                        resource: Some(entry.resource.clone()),
                        name: name.to_owned(),
                        ..Default::default()
                    });
                }
            }
            Some(_) => {}
            None => {
                if self.known.remove(name).is_some() || forced {
                    removed.push(name.to_owned());
                }
            }
        }
    }

    /// Builds the resources and removals this subscription has not been sent yet.
    fn build(&mut self, ts: Option<&TypeState>) -> (Vec<Resource>, Vec<String>) {
        let mut out = Vec::new();
        let mut removed = Vec::new();
        let full = self.initial || ts.is_some_and(|t| self.last_seq < t.floor);
        if full {
            if let Some(t) = ts {
                for name in t.resources.keys() {
                    self.consider(name, ts, false, &mut out, &mut removed);
                }
            }
            let gone: Vec<String> = self
                .known
                .keys()
                .filter(|n| !ts.is_some_and(|t| t.resources.contains_key(*n)))
                .cloned()
                .collect();
            for name in gone {
                self.consider(&name, ts, false, &mut out, &mut removed);
            }
        } else if let Some(t) = ts {
            for name in t.log.range(self.last_seq + 1..).map(|(_, n)| n) {
                self.consider(name, ts, false, &mut out, &mut removed);
            }
        }
        if !self.forced.is_empty() {
            let sent: HashSet<String> = out
                .iter()
                .map(|r| r.name.clone())
                .chain(removed.iter().cloned())
                .collect();
            for name in std::mem::take(&mut self.forced) {
                if !sent.contains(&name) {
                    self.consider(&name, ts, true, &mut out, &mut removed);
                }
            }
        }
        self.last_seq = ts.map_or(0, |t| t.seq);
        self.initial = false;
        (out, removed)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn any(value: &[u8]) -> prost_types::Any {
        prost_types::Any {
            type_url: "t".into(),
            value: value.to_vec(),
        }
    }

    fn upserts(names: impl IntoIterator<Item = String>, value: &[u8]) -> Vec<ResourceChange> {
        names
            .into_iter()
            .map(|n| ResourceChange::upsert_any(n, any(value)))
            .collect()
    }

    fn names(out: &[Resource]) -> Vec<String> {
        let mut v: Vec<_> = out.iter().map(|r| r.name.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn versions_follow_content() {
        let mut state = Resources::default();
        assert_eq!(
            apply_changes(&mut state, "t", upserts(["a".to_owned()], b"1")),
            1
        );
        assert_eq!(
            apply_changes(&mut state, "t", upserts(["a".to_owned()], b"1")),
            0
        );
        let v1 = state.types["t"].resources["a"].version.clone();
        assert_eq!(
            apply_changes(&mut state, "t", upserts(["a".to_owned()], b"2")),
            1
        );
        assert_ne!(state.types["t"].resources["a"].version, v1);
        assert_eq!(
            apply_changes(&mut state, "t", [ResourceChange::remove("zz")]),
            0
        );
    }

    #[test]
    fn subscriber_catches_up_incrementally() {
        let mut state = Resources::default();
        apply_changes(
            &mut state,
            "t",
            upserts((0..3).map(|i| format!("r{i}")), b"x"),
        );
        let mut sub = Subscription {
            wildcard: true,
            initial: true,
            ..Default::default()
        };
        let (out, removed) = sub.build(state.types.get("t"));
        assert_eq!(names(&out), ["r0", "r1", "r2"]);
        assert!(removed.is_empty());
        assert!(!sub.pending(state.types.get("t")));

        apply_changes(
            &mut state,
            "t",
            [
                ResourceChange::remove("r0"),
                ResourceChange::upsert_any("r1", any(b"y")),
                ResourceChange::upsert_any("r9", any(b"x")),
            ],
        );
        assert!(sub.pending(state.types.get("t")));
        let (out, removed) = sub.build(state.types.get("t"));
        assert_eq!(names(&out), ["r1", "r9"]);
        assert_eq!(removed, ["r0"]);
        // An add and remove of the same name while the subscriber was behind sends nothing.
        apply_changes(&mut state, "t", upserts(["tmp".to_owned()], b"x"));
        apply_changes(&mut state, "t", [ResourceChange::remove("tmp")]);
        let (out, removed) = sub.build(state.types.get("t"));
        assert!(out.is_empty() && removed.is_empty());
    }

    #[test]
    fn initial_versions_skip_what_the_client_has() {
        let mut state = Resources::default();
        apply_changes(
            &mut state,
            "t",
            upserts((0..4).map(|i| format!("r{i}")), b"x"),
        );
        let ts = state.types.get("t");
        let version = ts.map(|t| t.resources["r0"].version.clone()).unwrap();
        let mut known = HashMap::new();
        known.insert("r0".to_owned(), version.clone());
        known.insert("r1".to_owned(), version.clone());
        known.insert("r2".to_owned(), "stale".to_owned());
        known.insert("gone".to_owned(), version);
        let mut sub = Subscription {
            wildcard: true,
            initial: true,
            known,
            ..Default::default()
        };
        let (out, removed) = sub.build(ts);
        assert_eq!(names(&out), ["r2", "r3"]);
        assert_eq!(removed, ["gone"]);
    }

    #[test]
    fn compaction_forces_a_full_comparison() {
        let mut state = Resources::default();
        apply_changes(
            &mut state,
            "t",
            upserts((0..3).map(|i| format!("keep{i}")), b"x"),
        );
        let mut sub = Subscription {
            wildcard: true,
            initial: true,
            ..Default::default()
        };
        sub.build(state.types.get("t"));
        // The subscriber learns 2000 temporary resources, then falls behind while they
        // are all removed: more tombstones than the log keeps.
        apply_changes(
            &mut state,
            "t",
            upserts((0..2000).map(|i| format!("tmp{i}")), b"x"),
        );
        let (out, _) = sub.build(state.types.get("t"));
        assert_eq!(out.len(), 2000);
        apply_changes(
            &mut state,
            "t",
            (0..2000).map(|i| ResourceChange::remove(format!("tmp{i}"))),
        );
        let ts = &state.types["t"];
        assert_eq!(ts.tombstones, 0, "compacted");
        assert!(ts.floor > sub.last_seq);
        assert_eq!(ts.log.len(), 3);
        let (out, removed) = sub.build(state.types.get("t"));
        assert!(out.is_empty());
        assert_eq!(removed.len(), 2000);
        assert_eq!(sub.known.len(), 3);
    }

    #[test]
    fn named_subscription_filters() {
        let mut state = Resources::default();
        apply_changes(
            &mut state,
            "t",
            upserts(["a".to_owned(), "b".to_owned()], b"x"),
        );
        let mut sub = Subscription {
            initial: true,
            ..Default::default()
        };
        sub.names.insert("a".into());
        let (out, _) = sub.build(state.types.get("t"));
        assert_eq!(names(&out), ["a"]);
        apply_changes(&mut state, "t", upserts(["b".to_owned()], b"y"));
        assert!(sub.pending(state.types.get("t")));
        let (out, removed) = sub.build(state.types.get("t"));
        assert!(out.is_empty() && removed.is_empty());
    }
}
