//! An xDS server and client on loopback exchanging one workload.
//!
//! The server publishes a pod built as a domain type; the client syncs it into a store
//! over gRPC, the program looks the pod up by its IP, prints it, and exits.
//!
//! ```sh
//! cargo run -p meshwire-xds-workload --example loopback
//! ```

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use meshwire_xds_workload::ads::client::{AdsClient, ClientConfig, NodeInfo, StoreHandler};
use meshwire_xds_workload::ads::server::{AdsServer, ResourceChange, ServerConfig};
use meshwire_xds_workload::resource::ADDRESS_TYPE_URL;
use meshwire_xds_workload::tonic::transport::Endpoint;
use meshwire_xds_workload::workload::TunnelProtocol;
use meshwire_xds_workload::{Address, NetworkAddress, Workload, WorkloadStore};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    // The control plane: one HBONE pod, published as an `istio.workload.Address`.
    let mut pod = Workload::new("cluster1//Pod/shop/web-0", "web-0", "shop");
    pod.addresses = vec!["10.0.0.7".parse()?];
    pod.protocol = TunnelProtocol::Hbone;
    pod.service_account = "web".into();
    pod.node = "node-a".into();
    let server = AdsServer::new(ServerConfig::default());
    server.publish(
        ADDRESS_TYPE_URL,
        [ResourceChange::address(&Address::Workload(Arc::new(pod)))],
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let serving = {
        let server = server.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = server_stopped.await;
            };
            server
                .serve_with_incoming(TcpListenerStream::new(listener), shutdown)
                .await
        })
    };
    println!("xDS server on {addr}");

    // The node proxy: sync into a store.
    let channel = Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
    let store = Arc::new(WorkloadStore::new());
    let mut config = ClientConfig::default();
    config.node = NodeInfo::proxy("127.0.0.1".parse()?, "proxy-0", "mesh-system", "node-a");
    let client = AdsClient::new(config, channel, StoreHandler::new(store.clone()))?;
    let mut synced = client.synced();
    let (stop_client, client_stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(client.run(async {
        let _ = client_stopped.await;
    }));
    if !tokio::time::timeout(Duration::from_secs(10), synced.wait()).await? {
        return Err("the client stopped before it synced".into());
    }

    let found = store
        .workload_by_address(&NetworkAddress::new("", "10.0.0.7".parse()?))
        .ok_or("10.0.0.7 is not in the store")?;
    println!(
        "synced {} workload(s); 10.0.0.7 is {} ({}, {:?}) on {}",
        store.workload_count(),
        found.uid,
        found.identity(),
        found.protocol,
        found.node
    );

    let _ = stop_client.send(());
    running.await?;
    let _ = stop_server.send(());
    serving.await??;
    Ok(())
}
