//! Workload xDS: the schema a node proxy learns its workloads, services and L4 policies
//! from, checked domain types, a store to look them up in, authorization evaluation, and
//! a Delta ADS client and server to move them.
//!
//! # Modules
//!
//! * [`pb`]: generated protobuf types for `istio.workload` (`Address`, `Workload`,
//!   `Service`, …), `istio.security` (`Authorization`), `google.rpc.Status`, and the
//!   `envoy.service.discovery.v3` subset Delta ADS needs, with transport-agnostic tonic
//!   stubs.
//! * [`workload`]: checked domain types ([`Workload`], [`Service`], [`Address`],
//!   [`Identity`], [`Port`](workload::Port), …) built from the generated ones at one
//!   [`TryFrom`] boundary that fails per resource with an
//!   [`AddressError`](workload::AddressError), and converted back with [`From`].
//! * [`authorization`]: L4 policies ([`AuthorizationPolicy`](authorization::AuthorizationPolicy))
//!   and their evaluation ([`evaluate`](authorization::evaluate): deny first, then allow;
//!   dry-run policies only reported).
//! * [`store`]: the [`WorkloadStore`], with lookups by workload uid, by (network, IP), by
//!   service VIP, by (namespace, hostname), by node and by service endpoint; the policies
//!   that apply to a workload; and where an outbound connection goes
//!   ([`Upstream`](store::Upstream)).
//! * [`resource`]: the two type URLs and the decoding of received resources.
//! * `ads` (features `client` and `server`): the Delta ADS client (`ads::client`), which
//!   applies into a [`WorkloadStore`] or any handler, and server (`ads::server`), which
//!   pushes versioned resources to every subscriber.
//!
//! The root holds only the types nearly every user touches; the rest is reached through
//! its module. [`tonic`], [`prost`] and [`prost_types`] are re-exported because their types
//! appear in this crate's public signatures.
//!
//! # What is not here
//!
//! No TLS: the caller brings TLS (an accepted TLS stream for the server, a `Channel` with
//! its own connector for the client). No environment or file configuration other than an
//! optional token file the caller names. No ZDS, no data plane.
//!
//! # Example
//!
//! A control plane describes a workload with the domain types and encodes it; a node proxy
//! decodes it at the checked boundary, stores it and authorizes a connection to it. (The
//! `ads` module has an example that moves resources over gRPC.)
//!
//! ```
//! use std::sync::Arc;
//! use meshwire_xds_workload::authorization::ConnectionInfo;
//! use meshwire_xds_workload::pb::istio::workload as pb;
//! use meshwire_xds_workload::prost::Message;
//! use meshwire_xds_workload::workload::TunnelProtocol;
//! use meshwire_xds_workload::{Address, Identity, NetworkAddress, Workload, WorkloadStore, resource};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Control plane: a domain type to the wire.
//! let mut web = Workload::new("cluster1//Pod/shop/web-0", "web-0", "shop");
//! web.addresses = vec!["10.0.0.7".parse()?];
//! web.protocol = TunnelProtocol::Hbone;
//! web.node = "node-a".into();
//! let address = Address::Workload(Arc::new(web));
//! let bytes = pb::Address::from(&address).encode_to_vec();
//!
//! // Node proxy: the wire to a checked domain type, into the store.
//! let received = resource::address_from_bytes(&bytes)?;
//! assert_eq!(received, address);
//! let store = WorkloadStore::new();
//! store.insert_address(received.name(), received);
//!
//! let workload = store
//!     .workload_by_address(&NetworkAddress::new("", "10.0.0.7".parse()?))
//!     .ok_or("not found")?;
//! assert_eq!(workload.identity(), Identity::new("cluster.local", "shop", "default"));
//! // No policy applies to it, so any connection is allowed.
//! let conn = ConnectionInfo::new("10.0.0.9".parse()?, "10.0.0.7:8080".parse()?, None);
//! assert!(store.authorize(&conn, &workload).decision.is_allowed());
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! * `client` (default): the Delta ADS client, `ads::client`. Turns on tonic's `channel`.
//! * `server` (default): the Delta ADS server, `ads::server`. Turns on tonic's `server`
//!   and `router`.
//! * `svid`: conversions between [`Identity`] and `meshwire_svid::SpiffeId` (both ways,
//!   with [`TryFrom`]), through the core of `meshwire-svid` only.
//!
//! Without `client` and `server`, the schema, the domain types, the store and
//! authorization build on their own.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "client", feature = "server"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "client", feature = "server"))))]
pub mod ads;
pub mod authorization;
pub mod pb;
pub mod resource;
pub mod store;
pub mod workload;

pub use prost;
pub use prost_types;
pub use tonic;

pub use store::WorkloadStore;
pub use workload::{Address, Identity, NetworkAddress, Service, Workload};

#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "client", feature = "server"))]
pub struct ReadmeDoctests;
