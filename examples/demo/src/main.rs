//! Example `demo` (work in progress).

fn main() {}
