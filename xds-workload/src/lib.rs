//! Workload xDS: the schema a node proxy learns its workloads, services and L4 policies
//! from, a store to look them up in, authorization evaluation, and a Delta ADS client and
//! server to move them.
//!
//! # What is here
//!
//! * [`pb`]: generated protobuf types for `istio.workload` (`Address`, `Workload`,
//!   `Service`, …), `istio.security` (`Authorization`), `google.rpc.Status`, and the
//!   `envoy.service.discovery.v3` subset Delta ADS needs, with tonic client and server
//!   stubs. Unknown fields sent by newer peers are skipped.
//! * Checked domain types ([`Workload`], [`Service`], [`Address`],
//!   [`AuthorizationPolicy`]), built from the generated ones at one [`TryFrom`]
//!   boundary that fails per resource with [`AddressError`] or [`AuthorizationError`]
//!   and fills in the defaults (trust domain [`DEFAULT_TRUST_DOMAIN`], service account
//!   [`DEFAULT_SERVICE_ACCOUNT`], cluster [`DEFAULT_CLUSTER_ID`], capacity 1).
//! * [`WorkloadStore`]: resources by xDS name, with lookups by workload uid, by
//!   (network, IP), by service VIP, by (namespace, hostname), by node and by service
//!   endpoint, plus the authorization policies that apply to a workload, and a listing of
//!   everything it holds ([`WorkloadStore::snapshot`]).
//! * [`WorkloadStore::resolve_upstream`]: where an outbound connection goes (a service
//!   VIP's endpoint, taken in turn among the healthy ones, with the service port mapped to
//!   the endpoint's target port; or the workload at the address), as an [`Upstream`];
//!   [`WorkloadStore::resolve_service_host`]: the service and port a host-name HBONE
//!   authority names on the receiving endpoint.
//! * [`evaluate`] / [`WorkloadStore::authorize`]: L4 authorization (deny first, then
//!   allow; dry-run policies only reported).
//! * [`AdsServer`]: a Delta ADS server with per-subscriber state, usable as a tonic service
//!   in the caller's own server or through [`AdsServer::serve_with_incoming`] /
//!   [`AdsServer::serve_unix`].
//! * [`AdsClient`]: a Delta ADS client over a caller-supplied tonic `Channel`, applying
//!   into a [`WorkloadStore`] (through [`StoreHandler`]) or any [`DeltaHandler`].
//!
//! # What is not here
//!
//! No TLS: the caller brings TLS (an accepted TLS stream for the server, a `Channel` with
//! its own connector for the client). No environment or file configuration other than an
//! optional token file the caller names. No ZDS, no data plane.
//!
//! # Example
//!
//! A server publishes one workload; a client on a loopback connection syncs it into a
//! store.
//!
//! ```
//! use std::sync::Arc;
//! use meshwire_xds_workload::pb::istio::workload as pb;
//! use meshwire_xds_workload::{
//!     ADDRESS_TYPE_URL, AdsClient, AdsServer, ClientConfig, NetworkAddress, NodeInfo,
//!     ResourceChange, ServerConfig, StoreHandler, WorkloadStore,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Server side: publish a workload.
//! let server = AdsServer::new(ServerConfig::default());
//! server.publish(
//!     ADDRESS_TYPE_URL,
//!     [ResourceChange::workload(pb::Workload {
//!         uid: "cluster1//Pod/default/web-0".into(),
//!         name: "web-0".into(),
//!         namespace: "default".into(),
//!         addresses: vec![vec![10, 0, 0, 7].into()],
//!         tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
//!         node: "node-a".into(),
//!         ..Default::default()
//!     })],
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let serving = server.clone();
//! tokio::spawn(async move {
//!     let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
//!     serving.serve_with_incoming(incoming, std::future::pending()).await
//! });
//!
//! // Client side: sync into a store.
//! let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
//! let store = Arc::new(WorkloadStore::new());
//! let mut config = ClientConfig::default();
//! config.node(NodeInfo::proxy("10.0.0.1".parse()?, "proxy-x", "mesh-system", "node-a"));
//! let client = AdsClient::new(config, channel, StoreHandler::new(store.clone()))?;
//! let mut synced = client.synced();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn(client.run(async { let _ = stopped.await; }));
//! assert!(synced.wait().await);
//!
//! let workload = store
//!     .workload_by_address(&NetworkAddress::new("", "10.0.0.7".parse()?))
//!     .expect("synced");
//! assert_eq!(workload.name, "web-0");
//! assert_eq!(workload.trust_domain, "cluster.local"); // the default
//! assert_eq!(workload.service_account, "default"); // the default
//! let _ = stop.send(());
//! running.await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! None.
#![forbid(unsafe_code)]

mod authorization;
mod client;
mod error;
mod resource;
mod server;
mod store;
mod upstream;
mod workload;

/// Generated protobuf and gRPC types, one module per protobuf package.
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    missing_debug_implementations,
    clippy::all,
    clippy::use_self,
    clippy::or_fun_call
)]
#[rustfmt::skip]
pub mod pb {
    /// `envoy.*`
    pub mod envoy {
        /// `envoy.service.*`
        pub mod service {
            /// `envoy.service.discovery.*`
            pub mod discovery {
                /// `envoy.service.discovery.v3`: Delta ADS messages and service.
                pub mod v3 {
                    include!("generated/envoy.service.discovery.v3.rs");
                }
            }
        }
    }
    /// `google.*`
    pub mod google {
        /// `google.rpc`: the gRPC status message.
        pub mod rpc {
            include!("generated/google.rpc.rs");
        }
    }
    /// `istio.*`
    pub mod istio {
        /// `istio.workload`: workloads and services.
        pub mod workload {
            include!("generated/istio.workload.rs");
        }
        /// `istio.security`: L4 authorization policies.
        pub mod security {
            include!("generated/istio.security.rs");
        }
    }
}

pub use authorization::{
    AuthorizationPolicy, AuthorizationResult, ConnectionInfo, Decision, DenyReason, DryRunMatch,
    PolicyAction, PolicyClause, PolicyMatch, PolicyRule, PolicyScope, ServiceAccountMatch,
    StringMatch, evaluate,
};
pub use client::{
    AdsClient, ClientConfig, ClientEvent, DeltaHandler, DeltaUpdate, NodeInfo, Rejection,
    StoreHandler, SyncedSignal, TokenSource,
};
pub use error::{AddressError, AuthorizationError, ClientConfigError, ResourceError, ServeError};
pub use resource::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, address_from_bytes, authorization_from_bytes,
    decode_address, decode_authorization,
};
pub use server::{
    AcceptedIo, AdsServer, AdsService, DeltaResponseStream, ResourceChange, ServerConfig,
    ServerEvent, ServerStats,
};
pub use store::{StoreBatch, StoreSnapshot, WorkloadStore};
pub use upstream::{ServiceHostTarget, Upstream};
pub use workload::{
    Address, AppProtocol, ApplicationTunnel, ApplicationTunnelProtocol, DEFAULT_CLUSTER_ID,
    DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN, GatewayAddress, GatewayDestination,
    HealthPolicy, HealthStatus, Identity, IdentityParseError, IpFamilies, LoadBalancing,
    LoadBalancingMode, LoadBalancingScope, Locality, NamespacedHostname, NetworkAddress,
    NetworkMode, Port, Service, ServiceVip, TunnelProtocol, Visibility, WeightedWaypoint, Workload,
    WorkloadType,
};
