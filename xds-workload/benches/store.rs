//! Workload store benchmark: inserting 10 000 workloads one call at a time versus one
//! batch, and looking workloads up by IP.
//!
//! Run with `cargo bench -p meshwire-xds-workload --bench store`. Prints one JSON object per
//! measurement; ratios are against the one-by-one insert measured in the same run.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use meshwire_xds_workload::store::StoreBatch;
use meshwire_xds_workload::{Address, NetworkAddress, WorkloadStore};

const N: usize = 10_000;
const ROUNDS: usize = 7;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn addresses() -> Vec<(String, Address)> {
    (0..N)
        .map(|i| {
            let w = common::workload(i);
            (
                w.uid.clone(),
                Address::Workload(std::sync::Arc::new((&w).try_into().unwrap())),
            )
        })
        .collect()
}

fn main() {
    // Conversion from the wire type (not part of the store timings).
    let wire: Vec<_> = (0..N).map(common::workload).collect();
    let convert = median(
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                for w in &wire {
                    black_box(meshwire_xds_workload::Workload::try_from(w).unwrap());
                }
                start.elapsed()
            })
            .collect(),
    );

    let one_by_one = median(
        (0..ROUNDS)
            .map(|_| {
                let input = addresses();
                let store = WorkloadStore::new();
                let start = Instant::now();
                for (name, address) in input {
                    store.insert_address(name, address);
                }
                let elapsed = start.elapsed();
                assert_eq!(store.workload_count(), N);
                elapsed
            })
            .collect(),
    );

    let batch = median(
        (0..ROUNDS)
            .map(|_| {
                let input = addresses();
                let store = WorkloadStore::new();
                let start = Instant::now();
                let mut batch = StoreBatch::with_capacity(N);
                for (name, address) in input {
                    batch.upsert_address(name, address);
                }
                store.apply(batch);
                let elapsed = start.elapsed();
                assert_eq!(store.workload_count(), N);
                elapsed
            })
            .collect(),
    );

    let store = WorkloadStore::new();
    let mut b = StoreBatch::with_capacity(N);
    for (name, address) in addresses() {
        b.upsert_address(name, address);
    }
    store.apply(b);
    let keys: Vec<NetworkAddress> = (0..N)
        .map(|i| NetworkAddress::new("", IpAddr::V4(common::workload_ip(i))))
        .collect();
    let lookup = median(
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                for key in &keys {
                    assert!(black_box(store.workload_by_address(key)).is_some());
                }
                start.elapsed()
            })
            .collect(),
    );

    let per = |d: Duration| d.as_nanos() as f64 / N as f64;
    let base = one_by_one.as_secs_f64();
    println!(
        "{{\"bench\":\"convert_workload\",\"n\":{N},\"total_ms\":{:.3},\"ns_per_op\":{:.1}}}",
        convert.as_secs_f64() * 1e3,
        per(convert)
    );
    println!(
        "{{\"bench\":\"store_insert_one_by_one\",\"n\":{N},\"total_ms\":{:.3},\"ns_per_op\":{:.1},\"ratio\":1.0}}",
        one_by_one.as_secs_f64() * 1e3,
        per(one_by_one)
    );
    println!(
        "{{\"bench\":\"store_insert_batch\",\"n\":{N},\"total_ms\":{:.3},\"ns_per_op\":{:.1},\"ratio\":{:.3}}}",
        batch.as_secs_f64() * 1e3,
        per(batch),
        batch.as_secs_f64() / base
    );
    println!(
        "{{\"bench\":\"store_lookup_by_ip\",\"n\":{N},\"total_ms\":{:.3},\"ns_per_op\":{:.1},\"ratio\":{:.3}}}",
        lookup.as_secs_f64() * 1e3,
        per(lookup),
        lookup.as_secs_f64() / base
    );
}
