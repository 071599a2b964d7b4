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
//! # Layers
//!
//! - **Messages**: the generated protobuf types in [`pb`], and the checked codec
//!   ([`Hello`], [`Request`], [`Response`]) that applies the receive rules: at most
//!   [`MAX_MESSAGE_SIZE`] bytes, exactly one fd with an add and none otherwise, a payload
//!   present, `workload_info` present on an add.
//! - **Sessions** without I/O: [`ProxySession`] (hello, snapshot bookkeeping,
//!   reconciliation of stale workloads, one answer per request, protocol errors) and
//!   [`AgentSession`] (sequencing and lock-step checks for the agent). Both can be
//!   driven by tests and fuzzers with plain byte slices.
//! - **Transport**: [`Connection`], one message per datagram, fds received as
//!   close-on-exec [`OwnedFd`](std::os::fd::OwnedFd)s, truncation detected, stray fds
//!   closed; [`verify_netns`] and [`NetnsId`] for the descriptors.
//! - **Roles**: [`Client`] for the proxy (connect with back-off, apply through a
//!   [`Handler`], reconnect, readiness) and [`Server`] for the agent (socket setup,
//!   snapshot per connection from its workload cache, adds to the newest connection,
//!   deletes to all, ack timeouts, NACKs returned to the caller).
//!
//! What it does not do: open listeners in a namespace, install redirection rules, or
//! know anything about xDS. Those belong to the proxy and agent built on top.
//!
//! # Example
//!
//! An agent and a proxy in one process. The agent hands the proxy its own network
//! namespace; the proxy's handler sees it, and the agent's `add` returns once the proxy
//! acknowledged it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::os::fd::OwnedFd;
//! use meshwire_zds::{Client, ClientConfig, Server, ServerConfig, Update, Workload};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("zds.sock");
//!
//! // Agent side.
//! let server = Server::bind(ServerConfig::default().path(&path).clone()).await?;
//!
//! // Proxy side: report every add on a channel.
//! let (added, mut added_rx) = tokio::sync::mpsc::unbounded_channel();
//! let client = Client::new(ClientConfig::default().path(&path).clone(), move |update| {
//!     let added = added.clone();
//!     async move {
//!         if let Update::Add { workload, netns } = update {
//!             // A real proxy would keep `netns` and open its listeners inside.
//!             let id = meshwire_zds::NetnsId::of(&netns)?;
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
//! let expected = meshwire_zds::NetnsId::of(&netns)?;
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

mod client;
mod codec;
mod error;
mod netns;
mod server;
mod session;
mod transport;
mod types;

/// The generated `istio.workload.zds` protobuf messages, exactly as on the wire.
///
/// Most code wants the checked types ([`Request`], [`Response`], [`Hello`]) instead.
#[allow(missing_docs, clippy::all, unreachable_pub, unused_qualifications)]
#[rustfmt::skip]
pub mod pb {
    include!("generated/istio.workload.zds.rs");
}

pub use client::{Client, ClientConfig, DEFAULT_SOCKET_PATH, Handler};
pub use codec::{
    EncodeError, Hello, MAX_MESSAGE_SIZE, ProtocolError, ReadError, Request, RequestError, Response,
};
pub use error::{BindError, ClientError, ZdsError};
pub use netns::{NetnsError, NetnsId, verify_netns};
pub use server::{ConnectionId, PeerUids, Server, ServerConfig, ServerEvent};
pub use session::{AgentPhase, AgentSession, CloseReason, ProxyAction, ProxySession, SessionError};
pub use transport::{Connection, Datagram, RecvError, SendError};
pub use types::{Update, Workload};
