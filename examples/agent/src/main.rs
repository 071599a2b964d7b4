//! Example node agent (see README.md).

mod cli;
mod desired;
mod reconcile;
mod workloads;

fn main() {}
