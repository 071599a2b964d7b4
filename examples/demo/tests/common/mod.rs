//! What the end-to-end test files share: payloads and checks of a flow.

#![allow(dead_code, unreachable_pub)] // each test file uses its own part

use std::time::{Duration, Instant};

use demo::{Cluster, Flow, Role};

/// `n` bytes of `tag` repeated.
pub fn payload(tag: &str, n: usize) -> Vec<u8> {
    tag.bytes().cycle().take(n).collect()
}

/// Asserts that the flow was echoed (with the cluster's log tail if not).
#[track_caller]
pub fn check(c: &Cluster, f: &Flow) {
    assert!(
        f.echoed,
        "{} -> {}: {:?}\n{}",
        f.from.label(),
        f.to.label(),
        f,
        c.log_tail(30)
    );
}

/// Sends `n` bytes from `from` to `to`, and checks they came back over mTLS with `from`'s
/// identity verified by the destination's proxy.
#[track_caller]
pub fn mtls_flow(c: &Cluster, from: Role, to: Role, tag: &str, n: usize) -> Flow {
    let f = c.flow(from, to, &payload(tag, n)).unwrap();
    check(c, &f);
    assert!(f.encrypted(), "{f:?}");
    assert_eq!(
        f.peer_identity.as_deref(),
        Some(from.spiffe_id().as_str()),
        "{f:?}"
    );
    f
}

/// Repeats a flow until it is echoed over mutual TLS (30 s at most) and returns the last.
pub fn retry_until_encrypted(c: &Cluster, from: Role, to: Role) -> Flow {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = c.flow(from, to, &payload("retry", 2000)).unwrap();
        if (f.echoed && f.encrypted()) || Instant::now() > deadline {
            check(c, &f);
            return f;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
