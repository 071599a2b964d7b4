//! ZDS: how a node agent hands each pod's network namespace to the node proxy.
//!
//! The agent (an istio-cni or Cilium style node agent) listens on a Unix
//! `SOCK_SEQPACKET` socket, by default `/var/run/ztunnel/ztunnel.sock`. The proxy (a
//! ztunnel style node proxy) connects and announces itself; the agent then sends a
//! *snapshot* of every enrolled pod on the node, one `AddWorkload` (carrying the pod's
//! netns fd as `SCM_RIGHTS`) or `KeepWorkload` per pod, ended by `SnapshotSent`, and
//! afterwards adds and deletes as pods come and go. The proxy answers every request with
//! exactly one ack or NACK. This crate speaks both roles, byte-compatibly with the
//! upstream implementations (messages of `package istio.workload.zds`).
//!
//! # Layout
//!
//! The root holds the two types both roles use, [`Workload`] (a pod as ZDS names it) and
//! [`Update`] (what the proxy application applies), and [`DEFAULT_SOCKET_PATH`]. The rest
//! is grouped by layer:
//!
//! - [`wire`]: the generated protobuf types ([`wire::pb`]) and the checked codec
//!   ([`wire::Hello`], [`wire::Request`], [`wire::Response`]) that applies the receive
//!   rules: at most [`wire::MAX_MESSAGE_SIZE`] bytes, exactly one fd with an add and none
//!   otherwise, a payload present, `workload_info` present on an add.
//! - [`session`]: the state machines, without I/O: [`session::ProxySession`] (hello,
//!   snapshot bookkeeping, reconciliation of stale workloads, one answer per request,
//!   protocol errors) and [`session::AgentSession`] (sequencing and lock-step checks for
//!   the agent). Both can be driven by tests and fuzzers with plain byte slices.
//! - [`transport`]: [`transport::Connection`], one message per datagram, fds received as
//!   close-on-exec [`OwnedFd`](std::os::fd::OwnedFd)s, truncation detected, stray fds
//!   closed.
//! - [`netns`]: [`netns::verify_netns`] and [`netns::NetnsId`] for the received
//!   descriptors.
//! - [`client`]: [`client::Client`] for the proxy (connect with back-off and jitter, apply
//!   through a [`client::Handler`], reconnect after any error and reconcile against the
//!   fresh snapshot, [`client::ClientEvent`]s, readiness).
//! - [`server`]: [`server::Server`] for the agent (socket setup, snapshot per connection
//!   from its workload cache, adds to the newest connection, deletes to all, ack timeouts,
//!   NACKs returned to the caller).
//!
//! Settings ([`client::ClientConfig`], [`server::ServerConfig`]) are `#[non_exhaustive]`
//! structs with public fields: start from `Default` and set the fields that differ.
//!
//! What it does not do: open listeners in a namespace, install redirection rules, or
//! know anything about xDS. Those belong to the proxy and agent built on top.
//!
//! # Example
//!
//! An agent and a proxy in one process. The agent hands the proxy its own network
//! namespace; the proxy's handler sees it, and the agent's `add` returns once the proxy
//! acknowledged it. The `handoff` example does the same over a socket pair and explains
//! each step: `cargo run -p meshwire-zds --example handoff`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::os::fd::OwnedFd;
//! use meshwire_zds::client::{Client, ClientConfig};
//! use meshwire_zds::netns::NetnsId;
//! use meshwire_zds::server::{Server, ServerConfig};
//! use meshwire_zds::{Update, Workload};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("zds.sock");
//!
//! // Agent side.
//! let mut config = ServerConfig::default();
//! config.path = path.clone();
//! let server = Server::bind(config).await?;
//!
//! // Proxy side: report every add on a channel.
//! let (added, mut added_rx) = tokio::sync::mpsc::unbounded_channel();
//! let mut config = ClientConfig::default();
//! config.path = path;
//! let client = Client::new(config, move |update| {
//!     let added = added.clone();
//!     async move {
//!         if let Update::Add { workload, netns } = update {
//!             // A real proxy would keep `netns` and open its listeners inside.
//!             let id = NetnsId::of(&netns)?;
//!             let _ = added.send((workload.uid, id));
//!         }
//!         Ok::<(), std::io::Error>(())
//!     }
//! });
//! let mut ready = client.readiness();
//! let proxy = tokio::spawn(client.run());
//! ready.wait_for(|ready| *ready).await?;
//!
//! let netns: OwnedFd = std::fs::File::open("/proc/self/ns/net")?.into();
//! let expected = NetnsId::of(&netns)?;
//! server
//!     .add(Workload::new("6f1c0d7e", "web-0", "shop", "web"), netns)
//!     .await?;
//! assert_eq!(added_rx.recv().await, Some(("6f1c0d7e".to_owned(), expected)));
//!
//! server.del("6f1c0d7e").await?;
//! proxy.abort();
//! # Ok(())
//! # }
//! ```
//!
//! # Wire facts
//!
//! | item | value |
//! |---|---|
//! | socket | `AF_UNIX`, `SOCK_SEQPACKET`; agent listens, proxy connects |
//! | framing | one protobuf message per datagram, no length prefix, at most 1024 bytes |
//! | hello | `ZdsHello{version: V1}` = `08 01` |
//! | positive ack | `WorkloadResponse{ack{error: ""}}` = `0A 00` |
//! | `SnapshotSent` | `1A 00` |
//! | `DelWorkload{uid: "abc"}` | `12 05 12 03 61 62 63` (the uid is field 2) |
//! | `KeepWorkload{uid: "abc"}` | `2A 05 0A 03 61 62 63` (the oneof tag is 5) |
//! | NACK texts | `failure to read message : …`, `failure to process message : …`, `failure to start proxy : …` |
//!
//! # Cargo features
//!
//! None.
#![forbid(unsafe_code)]

mod workload;

pub mod client;
pub mod netns;
pub mod server;
pub mod session;
pub mod transport;
pub mod wire;

pub use workload::{Update, Workload};

/// Default path of the ZDS socket, where upstream agents listen and proxies connect.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/ztunnel/ztunnel.sock";

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
