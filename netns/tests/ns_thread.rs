//! One long-lived thread per namespace makes every socket there (privileged). Alone in
//! its test binary, so that no other test changes the thread count meanwhile.

// Test helpers panic on purpose: a failure there is a test failure.
#![allow(clippy::expect_used)]

use std::net::SocketAddr;
use std::thread::ThreadId;

use meshwire_netns::NetNs;
use meshwire_netns::ns::NsThread;
use meshwire_netns::socket::{ListenerOptions, SocketOptions};
use testbed::{Testbed, TestbedOptions, require_privileged};

/// Threads of this process now.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .count()
}

#[test]
fn many_sockets_in_a_namespace_use_one_thread_that_ends_on_drop() {
    let Some(_p) =
        require_privileged("many_sockets_in_a_namespace_use_one_thread_that_ends_on_drop")
    else {
        return;
    };
    let tb = Testbed::build(TestbedOptions::default(), &[1]).expect("test bed");
    let pod = NetNs::from_path(tb.pods()[0].ns().path()).expect("pod namespace");
    // A runtime without worker threads of its own.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let before = threads();

    let ns_thread = NsThread::spawn(&pod).expect("namespace thread");
    assert_eq!(ns_thread.id(), pod.id());
    assert_eq!(threads(), before + 1, "one thread for the namespace");

    rt.block_on(async {
        // 200 sockets at once: listeners, outbound sockets, and jobs that report where
        // they ran and how many threads the process had meanwhile.
        let mut sockets = Vec::new();
        let mut seen: Vec<(ThreadId, usize, bool)> = Vec::new();
        let jobs = (0..100).map(|_| {
            ns_thread.run(|| {
                let inside = NetNs::current().map(|ns| ns.id());
                (std::thread::current().id(), threads(), inside)
            })
        });
        let listeners = (0..50).map(|_| {
            let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
            meshwire_netns::socket::bind_listener_in(&ns_thread, any, ListenerOptions::default())
        });
        let outbound = (0..50).map(|_| {
            let dst: SocketAddr = "127.0.0.1:9".parse().expect("address");
            meshwire_netns::socket::socket_in(&ns_thread, dst, SocketOptions::default())
        });
        let (jobs, listeners, outbound) = tokio::join!(
            futures_join_all(jobs),
            futures_join_all(listeners),
            futures_join_all(outbound)
        );
        for job in jobs {
            let (thread, count, inside) = job.expect("job ran");
            seen.push((thread, count, inside.expect("namespace") == pod.id()));
        }
        for l in listeners {
            sockets.push(l.expect("listener").local_addr().expect("address"));
        }
        for s in outbound {
            s.expect("outbound socket");
        }
        assert_eq!(sockets.len(), 50);
        let first = seen[0].0;
        for (thread, count, inside) in &seen {
            assert_eq!(*thread, first, "every job on the same thread");
            assert_eq!(*count, before + 1, "no thread per socket");
            assert!(inside, "jobs run inside the pod's namespace");
        }
    });
    assert_eq!(threads(), before + 1);

    drop(ns_thread);
    assert_eq!(
        threads(),
        before,
        "the namespace thread ends with its handle"
    );
}

/// Awaits every future, one after the other.
async fn futures_join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}
