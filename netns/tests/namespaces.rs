//! Privileged tests of namespace handles, entering namespaces and making sockets in
//! them, against real namespaces from the test bed.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use meshwire_netns::NetNs;
use meshwire_netns::socket::{ListenerOptions, SocketOptions};
use testbed::{Testbed, TestbedOptions, require_privileged};

#[test]
fn handles_from_path_pid_and_fd_compare_by_identity() {
    let Some(_p) = require_privileged("handles_from_path_pid_and_fd_compare_by_identity") else {
        return;
    };
    let tb = Testbed::build(TestbedOptions::default(), &[2]).unwrap();
    let (pod, other) = (&tb.pods()[0], &tb.pods()[1]);

    let by_path = NetNs::from_path(pod.ns().path()).unwrap();
    let by_fd = NetNs::from_fd(File::open(pod.ns().path()).unwrap().into()).unwrap();
    let proc = pod
        .ns()
        .spawn(std::process::Command::new("sleep").arg("30"))
        .unwrap();
    let by_pid = NetNs::from_pid(proc.id() as i32).unwrap();

    assert_eq!(by_path, by_fd);
    assert_eq!(by_path, by_pid);
    assert_eq!(by_path.id(), by_pid.id());
    assert_eq!(by_path.path(), Some(pod.ns().path()));
    assert_ne!(by_path, NetNs::from_path(other.ns().path()).unwrap());
    assert_ne!(by_path, NetNs::current().unwrap());
    assert!(!by_path.is_current().unwrap());
}

#[test]
fn run_switches_the_current_thread_and_always_switches_back() {
    let Some(_p) = require_privileged("run_switches_the_current_thread_and_always_switches_back")
    else {
        return;
    };
    let tb = Testbed::build(TestbedOptions::default(), &[1]).unwrap();
    let pod = NetNs::from_path(tb.pods()[0].ns().path()).unwrap();
    let home = NetNs::current().unwrap();

    let inside = pod.run(|| NetNs::current().unwrap().id()).unwrap();
    assert_eq!(inside, pod.id());
    assert_eq!(NetNs::current().unwrap(), home);

    // A panic inside still switches back before it continues.
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        pod.run(|| panic!("inside the pod")).unwrap();
    }));
    assert!(result.is_err());
    assert_eq!(NetNs::current().unwrap(), home);

    // The pod's interfaces are visible only inside.
    let links = pod
        .run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap())
        .unwrap();
    assert!(links.contains("eth0:"), "{links}");
    let host_links = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    assert_ne!(links, host_links);
}

#[test]
fn helper_threads_leave_the_caller_in_its_namespace() {
    let Some(_p) = require_privileged("helper_threads_leave_the_caller_in_its_namespace") else {
        return;
    };
    let tb = Testbed::build(TestbedOptions::default(), &[1]).unwrap();
    let pod = NetNs::from_path(tb.pods()[0].ns().path()).unwrap();
    let home = NetNs::current().unwrap();

    let seen = pod
        .run_on_thread(|| NetNs::current().unwrap().id())
        .unwrap();
    assert_eq!(seen, pod.id());
    assert_eq!(NetNs::current().unwrap(), home);

    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        pod.run_on_thread(|| panic!("on the helper")).unwrap();
    }));
    let payload = result.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"on the helper"));
    assert_eq!(NetNs::current().unwrap(), home);
}

#[tokio::test]
async fn socket_made_in_a_pod_from_a_host_thread_leaves_the_thread_unchanged() {
    let Some(_p) =
        require_privileged("socket_made_in_a_pod_from_a_host_thread_leaves_the_thread_unchanged")
    else {
        return;
    };
    let tb = Testbed::build(TestbedOptions::default(), &[2]).unwrap();
    let (a, b) = (&tb.pods()[0], &tb.pods()[1]);
    let pod_a = NetNs::from_path(a.ns().path()).unwrap();
    let pod_b = NetNs::from_path(b.ns().path()).unwrap();
    let home = NetNs::current().unwrap();

    // The pod's address exists only in the pod: binding it proves where the socket is.
    let addr = SocketAddr::from((a.ipv4(), 7000));
    let mut opts = ListenerOptions::default();
    opts.mark = Some(0x539);
    opts.reuse_port = true;
    let listener = meshwire_netns::socket::bind_listener_in(&pod_a, addr, opts.clone())
        .await
        .unwrap();
    assert_eq!(
        NetNs::current().unwrap(),
        home,
        "the calling thread changed namespace"
    );
    assert_eq!(listener.local_addr().unwrap(), addr);
    assert!(
        meshwire_netns::socket::bind_listener(addr, &opts).is_err(),
        "pod address bindable on the host"
    );

    // Outbound from pod B to the listener in pod A, source bound to B's address.
    let mut out = SocketOptions::default();
    out.mark = Some(0x539);
    out.source = Some((b.ipv4(), 0).into());
    let stream = meshwire_netns::socket::connect_in(&pod_b, addr, out)
        .await
        .unwrap();
    assert_eq!(NetNs::current().unwrap(), home);
    let (accepted, peer) = listener.accept().await.unwrap();
    assert_eq!(peer, stream.local_addr().unwrap());
    assert_eq!(peer.ip(), b.ipv4());
    assert_eq!(
        meshwire_netns::socket::original_dst(&accepted).unwrap(),
        addr
    );
    assert_eq!(socket2::SockRef::from(&stream).mark().unwrap(), 0x539);

    // The same from the current thread with `run`: the thread comes back too.
    let std_listener = pod_a
        .run(|| {
            meshwire_netns::socket::bind_listener(
                (a.ipv4(), 7001).into(),
                &ListenerOptions::default(),
            )
        })
        .unwrap()
        .unwrap();
    assert_eq!(NetNs::current().unwrap(), home);
    let c = pod_b
        .run(|| TcpStream::connect_timeout(&(a.ipv4(), 7001).into(), Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    std_listener.set_nonblocking(false).unwrap();
    let (_s, peer) = std_listener.accept().unwrap();
    assert_eq!(peer, c.local_addr().unwrap());
    assert_eq!(NetNs::current().unwrap(), home);
}
