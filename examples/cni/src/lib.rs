//! Example chained CNI plugin for the meshwire node agent (CNI 1.1).
//!
//! A container runtime runs it last in a pod network's plugin chain. On ADD it tells
//! the agent the pod's name, namespace, uid, network-namespace path and addresses over a
//! unix socket ([`event`]), then prints the `prevResult` it was given, as a chained
//! plugin must. When the agent cannot be reached and the pod's namespace is enrolled
//! (or its enrollment cannot be read), ADD fails with code 11 so the runtime retries:
//! no enrolled pod ever starts with its traffic unprotected. DEL, CHECK, VERSION,
//! STATUS and GC follow the CNI 1.1 specification; errors are CNI error JSON.
//!
//! `meshwire-cni install` copies the binary into the CNI bin directory and adds the
//! plugin to the node's configuration list atomically ([`install`]).
//!
//! ```
//! use meshwire_cni::conf::{Invocation, NetConf};
//!
//! let conf = br#"{"cniVersion":"1.0.0","name":"pods","type":"meshwire-cni",
//!   "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"}]}}"#;
//! let parsed = NetConf::parse(conf).unwrap();
//! assert_eq!(parsed.prev_ips(), vec!["10.1.0.5".parse::<std::net::IpAddr>().unwrap()]);
//!
//! // A pod that is not from Kubernetes passes straight through.
//! let inv = Invocation::from_env(|k| match k {
//!     "CNI_COMMAND" => Some("ADD".into()),
//!     "CNI_CONTAINERID" => Some("c1".into()),
//!     "CNI_NETNS" => Some("/var/run/netns/x".into()),
//!     "CNI_IFNAME" => Some("eth0".into()),
//!     _ => None,
//! });
//! let out = meshwire_cni::cmd::run(&inv, conf).unwrap().unwrap();
//! assert!(out.contains("10.1.0.5/24"));
//! ```
#![forbid(unsafe_code)]

pub mod cmd;
pub mod conf;
pub mod error;
pub mod event;
pub mod install;
mod kube;
