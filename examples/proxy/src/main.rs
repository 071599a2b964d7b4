//! Example `proxy` (work in progress).

fn main() {}
