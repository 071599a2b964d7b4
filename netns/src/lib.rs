//! Network namespaces, proxy sockets and in-pod traffic redirection rules for
//! transparent proxies.
//!
//! A transparent node proxy does all of its work inside the network namespace of
//! each pod it serves: a node agent installs redirection rules there, and the proxy
//! opens its listeners and outbound connections there. This crate provides those
//! pieces:
//!
//! * **Namespace handles** ([`NetNs`]): open by path, pid or file descriptor (for
//!   example one received over ZDS), compare by identity ([`NsId`]: device and
//!   inode), and run code inside: [`NetNs::run`] on the current thread with a
//!   guaranteed switch back (also on panic), [`NetNs::run_on_thread`] and
//!   [`NetNs::run_async`] on a dedicated short-lived thread so that no async worker
//!   thread ever changes namespace.
//! * **Proxy sockets**: [`bind_listener_in`] (`SO_MARK`, `SO_REUSEPORT`, optional
//!   `IP_TRANSPARENT`), [`connect_in`] / [`socket_in`] (`SO_MARK`, optional source
//!   binding), and [`original_dst`] (`SO_ORIGINAL_DST` for IPv4 and IPv6, falling
//!   back to the local address when the connection was not NATed). Sockets keep the
//!   namespace they were made in, so they are returned ready for tokio.
//! * **Redirection rules as data** ([`RuleSet`]) with the Istio-style
//!   ([`RuleSet::istio`], chains `ISTIO_*`) and Cilium-style ([`RuleSet::cilium`],
//!   chains `CILIUM_*`) presets: rendered to `iptables-restore` input for IPv4 and
//!   IPv6 ([`RuleSet::render`]), applied atomically and idempotently
//!   ([`RuleSet::apply`]), verified against `iptables-save` with typed differences
//!   ([`RuleSet::verify`], [`Drift`]), repaired ([`RuleSet::repair`]) and removed
//!   completely, including the fwmark rule and the local route of the
//!   policy-routing table ([`RuleSet::remove`]).
//!
//! Programs (`iptables-save`, `iptables-restore`, `ip`) are run through the
//! [`Executor`] trait, so rendering, parsing and the logic of every operation are
//! testable without root. [`Netfilter::detect_backend`] tells nf_tables from legacy
//! iptables, and a missing program is reported as [`RulesError::ToolMissing`].
//!
//! This crate speaks no protocol and knows nothing about workloads: which pods get
//! rules and which listeners are opened is for the caller to decide.
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
//! shows no drift (no privileges needed):
//!
//! ```
//! use meshwire_netns::{Family, RuleSet, SaveDump};
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
//! use meshwire_netns::{ListenerOptions, NetNs, RuleSet, SocketOptions};
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
//! let mut opts = ListenerOptions::new();
//! opts.mark(0x539).reuse_port(true).transparent(true);
//! let listener = meshwire_netns::bind_listener_in(&pod, "[::]:15001".parse()?, opts).await?;
//! let (app, _) = listener.accept().await?;
//! let target = meshwire_netns::original_dst(&app)?;
//!
//! // Proxy: connect onwards from the pod, exempt from redirection by the mark.
//! let mut out = SocketOptions::new();
//! out.mark(0x539);
//! let upstream = meshwire_netns::connect_in(&pod, target, out).await?;
//! # drop((app, upstream));
//! rules.remove(&pod)?;
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]

mod error;
mod ns;
mod rules;
mod socket;
mod sys;

pub use error::{Error, SocketOp};
pub use ns::{NetNs, NsId};
pub use rules::{
    Backend, CommandOutput, Difference, Drift, Executor, Family, Invocation, MarkMask, Netfilter,
    ParseError, ParseErrorKind, PolicyRouting, Ports, ProbeExemption, RuleSet, RulesError,
    SaveDump, SavedChain, SavedRule, SavedTable, SystemExecutor, Table, Tools,
};
pub use socket::{
    ListenerOptions, SocketOptions, bind_listener, bind_listener_in, connect_in, original_dst,
    outbound_socket, socket_in,
};
