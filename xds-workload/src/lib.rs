//! `xds-workload` (work in progress).
#![forbid(unsafe_code)]
