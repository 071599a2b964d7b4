//! Example node agent (see README.md).

mod ca_auth;
mod ca_files;
mod cli;
mod desired;
mod effects;
mod metrics;
mod reconcile;
mod state;
mod watch;
mod workloads;

fn main() {}
