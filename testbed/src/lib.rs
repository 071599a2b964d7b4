//! Test topologies of real network namespaces (unpublished, for tests and demos).
//!
//! * [`require_privileged`] is the first line of every privileged test in the
//!   workspace: it returns a token when the test can run (root, `ip` and the
//!   iptables tools present), prints `skipped: …` and returns `None` when
//!   `MESHWIRE_SKIP_PRIVILEGED=1` is set, and otherwise **panics** with the reason —
//!   a privileged test never passes silently.
//! * [`Testbed`] builds nodes and pods as named network namespaces
//!   (`ip netns add`, so each has a `/var/run/netns/<name>` path usable wherever a
//!   netns path is expected), joined by veth pairs, one bridge per node and a shared
//!   fabric, with addresses and routes so pods reach each other across nodes.
//!   Names are unique per test process and short; interface names are at most 15
//!   characters. Everything is deleted on drop, also when a test panics.
//! * [`Namespace`] runs closures ([`Namespace::run`]), commands
//!   ([`Namespace::exec`]) and long-running processes ([`Namespace::spawn`], killed
//!   on drop) inside a namespace. [`Namespace::new`] makes a bare one outside any test
//!   bed; [`Namespace::recreate`] replaces it with a new one under the same path, the way
//!   a pod sandbox is recreated.
//!
//! * [`KubeApiServer`] runs a real `etcd` and `kube-apiserver` and creates the objects a
//!   test needs ([`kube`]); [`LoopbackRelay`] makes its loopback port reachable inside a
//!   node's namespace, as a node reaches its API server.
//!
//! Addresses (`10.0.0.0/8`, `fd00::/8`) exist only inside the namespaces the test
//! bed created; the host namespace is never changed and nothing leaves the machine.
//!
//! # Address plan
//!
//! | what | IPv4 | IPv6 |
//! |---|---|---|
//! | node *n* on the fabric (`up0`) | `10.0.0.n/24` | `fd00::n/64` |
//! | pod gateway on node *n* (`br0`) | `10.10.n.1/24` | `fd00:10:n::1/64` |
//! | pod *k* of node *n* (`eth0`) | `10.10.n.(k+1)` | `fd00:10:n::(k+1)` |
//!
//! # Example
//!
//! ```no_run
//! use std::net::{SocketAddr, TcpListener, TcpStream};
//!
//! let Some(_privileged) = testbed::require_privileged("example") else {
//!     return;
//! };
//! let tb = testbed::Testbed::build(Default::default(), &[1, 1]).unwrap();
//! let (a, b) = (&tb.pods()[0], &tb.pods()[1]);
//! let server: SocketAddr = (b.ipv4(), 8080).into();
//! let listener = b.ns().run(move || TcpListener::bind(server)).unwrap().unwrap();
//! let client = a.ns().run(move || TcpStream::connect(server)).unwrap().unwrap();
//! let (_conn, peer) = listener.accept().unwrap();
//! assert_eq!(peer, client.local_addr().unwrap());
//! ```
#![forbid(unsafe_code)]

pub mod cni;
mod error;
pub mod kube;
mod namespace;
pub mod peers;
mod privileged;
mod procs;
mod relay;
pub mod spire;
mod topology;

pub use error::Error;
pub use kube::KubeApiServer;
pub use namespace::{NETNS_DIR, Namespace, Process, delete_own_namespaces};
pub use privileged::{Privileged, SKIP_ENV, check_privileges, require_privileged};
pub use relay::LoopbackRelay;
pub use spire::{Spire, SpireConfig};
pub use topology::{Node, Pod, Testbed, TestbedOptions};
