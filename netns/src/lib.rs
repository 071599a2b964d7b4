//! Network namespaces, proxy sockets and in-pod traffic redirection rules for
//! transparent proxies.
//!
//! A transparent node proxy does all of its work inside the network namespace of
//! each pod it serves: a node agent installs redirection rules there, and the proxy
//! opens its listeners and outbound connections there. This crate provides those
//! pieces:
//!
//! The root holds the namespace handle [`NetNs`] and the [`Error`] of namespace and
//! socket operations; the rest is in three modules:
//!
//! * [`ns`]: namespace handles ([`NetNs`]): open by path, pid or file descriptor (for
//!   example one received over ZDS), compare by identity ([`ns::NsId`]: device and
//!   inode), and run code inside: [`NetNs::run`] on the current thread with a
//!   guaranteed switch back (also on panic), [`NetNs::run_on_thread`] and
//!   [`NetNs::run_async`] on a dedicated short-lived thread so that no async worker
//!   thread ever changes namespace, and [`ns::NsThread`]: one long-lived thread inside
//!   a namespace that runs jobs until dropped (one thread per pod, not per socket).
//!   The socket functions take either ([`ns::RunIn`]). [`ns::processes_in`] finds the
//!   processes living in a namespace by scanning `/proc` (for identity providers that
//!   attest a workload by process id).
//! * [`socket`]: proxy sockets. [`socket::bind_listener_in`] (`SO_MARK`,
//!   `SO_REUSEPORT`, optional `IP_TRANSPARENT`), [`socket::connect_in`] /
//!   [`socket::socket_in`] (`SO_MARK`, optional source binding), and
//!   [`socket::original_dst`] (`SO_ORIGINAL_DST` for IPv4 and IPv6, falling back to the
//!   local address when the connection was not NATed). Sockets keep the namespace they
//!   were made in, so they are returned ready for tokio. Options are
//!   [`socket::ListenerOptions`] and [`socket::SocketOptions`], structs with public
//!   fields and `Default`.
//! * [`rules`]: redirection rules as data ([`rules::RuleSet`]) with the Istio-style
//!   ([`rules::RuleSet::istio`], chains `ISTIO_*`) and Cilium-style
//!   ([`rules::RuleSet::cilium`], chains `CILIUM_*`) presets: rendered to
//!   `iptables-restore` input for IPv4 and IPv6 ([`rules::RuleSet::render`]), applied
//!   atomically and idempotently ([`rules::RuleSet::apply`]), verified against
//!   `iptables-save` with typed differences ([`rules::RuleSet::verify`],
//!   [`rules::Drift`]), repaired ([`rules::RuleSet::repair`]) and removed completely,
//!   including the fwmark rule and the local route of the policy-routing table
//!   ([`rules::RuleSet::remove`]).
//!
//! Programs (`iptables-save`, `iptables-restore`, `ip`) are run through the
//! [`rules::Executor`] trait, so rendering, parsing and the logic of every operation are
//! testable without root. [`rules::Netfilter::detect_backend`] tells nf_tables from
//! legacy iptables, and a missing program is reported as
//! [`rules::RulesError::ToolMissing`].
//!
//! This crate speaks no protocol and knows nothing about workloads: which pods get
//! rules and which listeners are opened is for the caller to decide. Its only `unsafe`
//! code is one `ioctl(NS_GET_NSTYPE)` in a private module, with its safety argument
//! written next to it.
//!
//! # Privileges
//!
//! Entering another namespace needs `CAP_SYS_ADMIN`; `SO_MARK`, `IP_TRANSPARENT`
//! and changing rules need `CAP_NET_ADMIN`. Rendering, parsing and drift
//! computation need nothing.
//!
//! # Example
//!
//! Render the Cilium-style rules and check that a dump holding exactly those rules
//! shows no drift (no privileges needed; the `rules` example does more:
//! `cargo run -p meshwire-netns --example rules`):
//!
//! ```
//! use meshwire_netns::rules::{Family, RuleSet, SaveDump};
//!
//! let mut rules = RuleSet::cilium();
//! rules.ipv6 = false;
//! let restore_input = rules.render(Family::V4)?;
//! assert!(restore_input.contains(
//!     "-A CILIUM_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff \
//!      -j REDIRECT --to-ports 15001"
//! ));
//!
//! let dump = SaveDump::parse(&restore_input)?;
//! assert!(rules.drift(Family::V4, &dump).is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With privileges, inside a pod's namespace (not run here):
//!
//! ```no_run
//! use meshwire_netns::NetNs;
//! use meshwire_netns::rules::RuleSet;
//! use meshwire_netns::socket::{self, ListenerOptions, SocketOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pod = NetNs::from_path("/var/run/netns/pod-a")?;
//!
//! // Agent: install, check and eventually remove the rules.
//! let rules = RuleSet::istio();
//! rules.apply(&pod)?;
//! assert!(rules.verify(&pod)?.is_clean());
//!
//! // Proxy: listen on the outbound capture port inside the pod.
//! let mut opts = ListenerOptions::default();
//! opts.mark = Some(0x539);
//! opts.reuse_port = true;
//! opts.transparent = true;
//! let listener = socket::bind_listener_in(&pod, "[::]:15001".parse()?, opts).await?;
//! let (app, _) = listener.accept().await?;
//! let target = socket::original_dst(&app)?;
//!
//! // Proxy: connect onwards from the pod, exempt from redirection by the mark.
//! let mut out = SocketOptions::default();
//! out.mark = Some(0x539);
//! let upstream = socket::connect_in(&pod, target, out).await?;
//! # drop((app, upstream));
//! rules.remove(&pod)?;
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]

mod error;
mod sys;

pub mod ns;
pub mod rules;
pub mod socket;

pub use error::{Error, SocketOp};
pub use ns::NetNs;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
