//! Unit tests of the server's resource versions, change log and subscriptions.

use std::collections::HashMap;

use super::change::ResourceChange;
use super::resources::{Resources, apply_changes};
use super::subscription::Subscription;
use crate::pb::envoy::service::discovery::v3::Resource;

fn any(value: &[u8]) -> prost_types::Any {
    prost_types::Any {
        type_url: "t".into(),
        value: value.to_vec(),
    }
}

fn upserts(names: impl IntoIterator<Item = String>, value: &[u8]) -> Vec<ResourceChange> {
    names
        .into_iter()
        .map(|n| ResourceChange::upsert_any(n, any(value)))
        .collect()
}

fn names(out: &[Resource]) -> Vec<String> {
    let mut v: Vec<_> = out.iter().map(|r| r.name.clone()).collect();
    v.sort();
    v
}

#[test]
fn versions_follow_content() {
    let mut state = Resources::default();
    assert_eq!(
        apply_changes(&mut state, "t", upserts(["a".to_owned()], b"1")),
        1
    );
    assert_eq!(
        apply_changes(&mut state, "t", upserts(["a".to_owned()], b"1")),
        0
    );
    let v1 = state.types["t"].resources["a"].version.clone();
    assert_eq!(
        apply_changes(&mut state, "t", upserts(["a".to_owned()], b"2")),
        1
    );
    assert_ne!(state.types["t"].resources["a"].version, v1);
    assert_eq!(
        apply_changes(&mut state, "t", [ResourceChange::remove("zz")]),
        0
    );
}

#[test]
fn subscriber_catches_up_incrementally() {
    let mut state = Resources::default();
    apply_changes(
        &mut state,
        "t",
        upserts((0..3).map(|i| format!("r{i}")), b"x"),
    );
    let mut sub = Subscription {
        wildcard: true,
        initial: true,
        ..Default::default()
    };
    let (out, removed) = sub.build(state.types.get("t"));
    assert_eq!(names(&out), ["r0", "r1", "r2"]);
    assert!(removed.is_empty());
    assert!(!sub.pending(state.types.get("t")));

    apply_changes(
        &mut state,
        "t",
        [
            ResourceChange::remove("r0"),
            ResourceChange::upsert_any("r1", any(b"y")),
            ResourceChange::upsert_any("r9", any(b"x")),
        ],
    );
    assert!(sub.pending(state.types.get("t")));
    let (out, removed) = sub.build(state.types.get("t"));
    assert_eq!(names(&out), ["r1", "r9"]);
    assert_eq!(removed, ["r0"]);
    // An add and remove of the same name while the subscriber was behind sends nothing.
    apply_changes(&mut state, "t", upserts(["tmp".to_owned()], b"x"));
    apply_changes(&mut state, "t", [ResourceChange::remove("tmp")]);
    let (out, removed) = sub.build(state.types.get("t"));
    assert!(out.is_empty() && removed.is_empty());
}

#[test]
fn initial_versions_skip_what_the_client_has() {
    let mut state = Resources::default();
    apply_changes(
        &mut state,
        "t",
        upserts((0..4).map(|i| format!("r{i}")), b"x"),
    );
    let ts = state.types.get("t");
    let version = ts.map(|t| t.resources["r0"].version.clone()).unwrap();
    let mut known = HashMap::new();
    known.insert("r0".to_owned(), version.clone());
    known.insert("r1".to_owned(), version.clone());
    known.insert("r2".to_owned(), "stale".to_owned());
    known.insert("gone".to_owned(), version);
    let mut sub = Subscription {
        wildcard: true,
        initial: true,
        known,
        ..Default::default()
    };
    let (out, removed) = sub.build(ts);
    assert_eq!(names(&out), ["r2", "r3"]);
    assert_eq!(removed, ["gone"]);
}

#[test]
fn compaction_forces_a_full_comparison() {
    let mut state = Resources::default();
    apply_changes(
        &mut state,
        "t",
        upserts((0..3).map(|i| format!("keep{i}")), b"x"),
    );
    let mut sub = Subscription {
        wildcard: true,
        initial: true,
        ..Default::default()
    };
    sub.build(state.types.get("t"));
    // The subscriber learns 2000 temporary resources, then falls behind while they
    // are all removed: more tombstones than the log keeps.
    apply_changes(
        &mut state,
        "t",
        upserts((0..2000).map(|i| format!("tmp{i}")), b"x"),
    );
    let (out, _) = sub.build(state.types.get("t"));
    assert_eq!(out.len(), 2000);
    apply_changes(
        &mut state,
        "t",
        (0..2000).map(|i| ResourceChange::remove(format!("tmp{i}"))),
    );
    let ts = &state.types["t"];
    assert_eq!(ts.tombstones, 0, "compacted");
    assert!(ts.floor > sub.last_seq);
    assert_eq!(ts.log.len(), 3);
    let (out, removed) = sub.build(state.types.get("t"));
    assert!(out.is_empty());
    assert_eq!(removed.len(), 2000);
    assert_eq!(sub.known.len(), 3);
}

#[test]
fn named_subscription_filters() {
    let mut state = Resources::default();
    apply_changes(
        &mut state,
        "t",
        upserts(["a".to_owned(), "b".to_owned()], b"x"),
    );
    let mut sub = Subscription {
        initial: true,
        ..Default::default()
    };
    sub.names.insert("a".into());
    let (out, _) = sub.build(state.types.get("t"));
    assert_eq!(names(&out), ["a"]);
    apply_changes(&mut state, "t", upserts(["b".to_owned()], b"y"));
    assert!(sub.pending(state.types.get("t")));
    let (out, removed) = sub.build(state.types.get("t"));
    assert!(out.is_empty() && removed.is_empty());
}
