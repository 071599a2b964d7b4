//! Delta ADS server: versioned resources per type URL, pushed to every subscriber.
//!
//! The owner publishes [`ResourceChange`]s per type URL on an [`AdsServer`] and serves it,
//! either on connections it accepted ([`AdsServer::serve_with_incoming`],
//! [`AdsServer::serve_unix`]) or as one service ([`AdsServer::service`]) in its own
//! `tonic::transport::Server`; [`ServerEvent`]s tell it what each stream does.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::UnixListenerStream;

use crate::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;

mod change;
mod config;
mod event;
mod io;
mod resources;
mod stream;
mod subscription;
#[cfg(test)]
mod tests;

pub use change::ResourceChange;
pub use config::{ServeError, ServerConfig};
use event::Counters;
pub use event::{ServerEvent, ServerStats};
pub use io::AcceptedIo;
use resources::{Resources, apply_changes};
pub use stream::{AdsService, DeltaResponseStream};

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
        self.shared.counters.stats()
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
