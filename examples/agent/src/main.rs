//! Example `agent` (work in progress).

fn main() {}
