//! Example node agent (see README.md).

mod cli;
mod workloads;

fn main() {}
