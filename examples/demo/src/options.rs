//! The options the tests usually start a cluster with.

use std::time::Duration;

use crate::{Binaries, ClusterOptions, Source};

impl ClusterOptions {
    /// A cluster from the workloads file with Istio-style rules, the built-in CA, `info`
    /// logs and a 500 ms reconcile interval; change the fields for anything else.
    pub fn new(binaries: Binaries) -> Self {
        Self {
            binaries,
            log: "info".into(),
            reconcile_interval: Duration::from_millis(500),
            rules: "istio",
            proxy_env: Vec::new(),
            spire: false,
            source: Source::File,
        }
    }
}
