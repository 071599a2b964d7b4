//! Delta ADS (incremental aggregated discovery) over gRPC: a [`client`] (feature `client`)
//! that syncs resources into a [`WorkloadStore`](crate::WorkloadStore) or any handler, and
//! a [`server`] (feature `server`) that pushes versioned resources to every subscriber.
//!
//! Neither does TLS: the server serves connections the caller accepted (TLS or not), and
//! the client uses a tonic `Channel` the caller built (with its own connector if needed).
//!
//! # Example
//!
//! A server publishes one workload; a client on a loopback connection syncs it into a
//! store.
//!
//! ```
//! # #[cfg(all(feature = "client", feature = "server"))]
//! # mod both {
//! use std::sync::Arc;
//! use meshwire_xds_workload::ads::client::{AdsClient, ClientConfig, NodeInfo, StoreHandler};
//! use meshwire_xds_workload::ads::server::{AdsServer, ResourceChange, ServerConfig};
//! use meshwire_xds_workload::resource::ADDRESS_TYPE_URL;
//! use meshwire_xds_workload::workload::TunnelProtocol;
//! use meshwire_xds_workload::{Address, NetworkAddress, Workload, WorkloadStore};
//!
//! pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Server side: publish a workload.
//!     let server = AdsServer::new(ServerConfig::default());
//!     let mut web = Workload::new("cluster1//Pod/default/web-0", "web-0", "default");
//!     web.addresses = vec!["10.0.0.7".parse()?];
//!     web.protocol = TunnelProtocol::Hbone;
//!     web.node = "node-a".into();
//!     let web = Address::Workload(Arc::new(web));
//!     server.publish(ADDRESS_TYPE_URL, [ResourceChange::address(&web)]);
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//!     let addr = listener.local_addr()?;
//!     let serving = server.clone();
//!     tokio::spawn(async move {
//!         let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
//!         serving.serve_with_incoming(incoming, std::future::pending()).await
//!     });
//!
//!     // Client side: sync into a store.
//!     let channel = meshwire_xds_workload::tonic::transport::Endpoint::from_shared(format!(
//!         "http://{addr}"
//!     ))?
//!     .connect_lazy();
//!     let store = Arc::new(WorkloadStore::new());
//!     let mut config = ClientConfig::default();
//!     config.node = NodeInfo::proxy("10.0.0.1".parse()?, "proxy-x", "mesh-system", "node-a");
//!     let client = AdsClient::new(config, channel, StoreHandler::new(store.clone()))?;
//!     let mut synced = client.synced();
//!     let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//!     let running = tokio::spawn(client.run(async {
//!         let _ = stopped.await;
//!     }));
//!     assert!(synced.wait().await);
//!
//!     let workload = store
//!         .workload_by_address(&NetworkAddress::new("", "10.0.0.7".parse()?))
//!         .ok_or("not synced")?;
//!     assert_eq!(Address::Workload(workload), web);
//!     let _ = stop.send(());
//!     running.await?;
//!     Ok(())
//! }
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #     #[cfg(all(feature = "client", feature = "server"))]
//! #     both::main().await?;
//! #     Ok(())
//! # }
//! ```

#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
