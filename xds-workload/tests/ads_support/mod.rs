//! Harness of the loopback ADS tests: a server on 127.0.0.1, clients syncing into their
//! own stores, and waits bounded in time.
#![allow(dead_code)]

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Channel, Endpoint};

use meshwire_xds_workload::ads::client::{
    AdsClient, ClientConfig, ClientEvent, NodeInfo, StoreHandler, SyncedSignal,
};
use meshwire_xds_workload::ads::server::{AdsServer, ResourceChange};
use meshwire_xds_workload::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshwire_xds_workload::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use meshwire_xds_workload::resource::ADDRESS_TYPE_URL;
use meshwire_xds_workload::{NetworkAddress, WorkloadStore};

pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A server listening on 127.0.0.1.
pub(crate) struct RunningServer {
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningServer {
    pub(crate) async fn start(server: &AdsServer) -> Self {
        Self::start_on(server, "127.0.0.1:0".parse().unwrap()).await
    }

    pub(crate) async fn start_on(server: &AdsServer, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = server.clone();
        let task = tokio::spawn(async move {
            server
                .serve_with_incoming(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub(crate) async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server shuts down")
            .unwrap();
    }
}

pub(crate) fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

/// A client syncing into its own store.
pub(crate) struct RunningClient {
    pub(crate) store: Arc<WorkloadStore>,
    pub(crate) synced: SyncedSignal,
    pub(crate) events: broadcast::Receiver<ClientEvent>,
    stop: Option<oneshot::Sender<()>>,
    pub(crate) task: JoinHandle<StoreHandler>,
}

impl RunningClient {
    pub(crate) fn start(addr: SocketAddr, node: &str) -> Self {
        let mut config = ClientConfig::default();
        config.node = NodeInfo::new(node);
        Self::start_with(channel(addr), config)
    }

    pub(crate) fn start_with(channel: Channel, config: ClientConfig) -> Self {
        let store = Arc::new(WorkloadStore::new());
        let client = AdsClient::new(config, channel, StoreHandler::new(store.clone())).unwrap();
        let synced = client.synced();
        let events = client.events();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(client.run(async {
            let _ = stopped.await;
        }));
        Self {
            store,
            synced,
            events,
            stop: Some(stop),
            task,
        }
    }

    /// A client of the server at `addr`, as node `node`, once it has synced.
    pub(crate) async fn synced(addr: SocketAddr, node: &str) -> Self {
        let mut client = Self::start(addr, node);
        client.wait_synced().await;
        client
    }

    pub(crate) async fn wait_synced(&mut self) {
        assert!(
            tokio::time::timeout(WAIT, self.synced.wait())
                .await
                .expect("client syncs in time")
        );
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("client stops")
            .unwrap();
    }
}

/// Waits until `cond` holds for `store`.
pub(crate) async fn wait_store(
    store: &WorkloadStore,
    what: &str,
    cond: impl Fn(&WorkloadStore) -> bool,
) {
    let mut changes = store.subscribe();
    let result = tokio::time::timeout(WAIT, async {
        loop {
            if cond(store) {
                return;
            }
            changes.changed().await.unwrap();
        }
    })
    .await;
    assert!(result.is_ok(), "timed out waiting for: {what}");
}

/// Waits for the first event accepted by `pick`.
pub(crate) async fn wait_event<E: Clone, T>(
    events: &mut broadcast::Receiver<E>,
    pick: impl Fn(&E) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(&e) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event channel closed: {e}"),
            }
        }
    })
    .await
    .expect("event arrives in time")
}

pub(crate) fn ip(i: usize) -> NetworkAddress {
    NetworkAddress::new("", IpAddr::V4(crate::common::workload_ip(i)))
}

pub(crate) fn publish_workloads(server: &AdsServer, range: std::ops::Range<usize>) {
    server.publish(
        ADDRESS_TYPE_URL,
        range.map(|i| ResourceChange::workload(crate::common::workload(i))),
    );
}

/// Publishes the test workloads `range` on `server` and starts it on loopback.
pub(crate) async fn serve_workloads(
    server: &AdsServer,
    range: std::ops::Range<usize>,
) -> RunningServer {
    publish_workloads(server, range);
    RunningServer::start(server).await
}

/// A delta ADS stream to the server at `addr` without our client: `initial` is queued
/// before the call starts; further requests go into the returned sender.
pub(crate) async fn raw_stream(
    addr: SocketAddr,
    initial: impl IntoIterator<Item = DeltaDiscoveryRequest>,
) -> (
    mpsc::Sender<DeltaDiscoveryRequest>,
    tonic::Streaming<DeltaDiscoveryResponse>,
) {
    let mut grpc = AggregatedDiscoveryServiceClient::new(channel(addr));
    let (tx, rx) = mpsc::channel(8);
    for request in initial {
        tx.send(request).await.unwrap();
    }
    let inbound = grpc
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, inbound)
}

pub(crate) async fn settle<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("in time")
}
