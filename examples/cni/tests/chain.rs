//! The plugin last in a chain after Debian's real `bridge` + `host-local` plugins, run
//! as a container runtime runs them, inside a node namespace, for a pod namespace.
//! A small listener on the agent's socket stands for the agent and records the events.

// Helpers outside #[test] functions: a failed step should abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshwire_cni::event::{EventKind, PodEvent, Reply, answer};
use serde_json::{Value, json};
use testbed::Namespace;
use testbed::cni::{Attachment, CniRuntime, DEBIAN_PLUGIN_DIR};

/// A directory holding `meshwire-cni` (a link to the binary under test), for `CNI_PATH`.
fn plugin_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_meshwire-cni"), dir.join("meshwire-cni"))
        .unwrap();
    dir
}

fn conflist(tmp: &Path, socket: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "pods",
        "plugins": [
            {
                "type": "bridge", "bridge": "cni0", "isGateway": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": "10.99.0.0/24" }]],
                    "dataDir": tmp.join("ipam").display().to_string()
                }
            },
            { "type": "meshwire-cni", "agent_socket": socket.display().to_string(), "agent_timeout_ms": 2000 }
        ]
    })
}

/// Stands for the agent: answers every event with `reply` and records it.
struct FakeAgent {
    events: Arc<Mutex<Vec<PodEvent>>>,
    runtime: tokio::runtime::Runtime,
}

impl FakeAgent {
    fn start(socket: &Path, reply: Reply) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::bind(socket).unwrap()
        };
        let seen = events.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let reply = reply.clone();
                if let Ok(event) = answer(stream, Duration::from_secs(2), |_| async { reply }).await
                {
                    seen.lock().unwrap().push(event);
                }
            }
        });
        Self { events, runtime }
    }

    fn events(&self) -> Vec<PodEvent> {
        self.events.lock().unwrap().clone()
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    socket: PathBuf,
    runtime: CniRuntime,
    pod: Namespace,
    _node: Namespace,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("cni.sock");
    let node = Namespace::new().unwrap();
    let pod = Namespace::new().unwrap();
    let runtime = CniRuntime::new(
        conflist(tmp.path(), &socket),
        vec![PathBuf::from(DEBIAN_PLUGIN_DIR), plugin_dir(tmp.path())],
    )
    .in_node(node.clone());
    Setup {
        _tmp: tmp,
        socket,
        runtime,
        pod,
        _node: node,
    }
}

fn require() -> bool {
    if testbed::require_privileged("cni chain").is_none() {
        return false;
    }
    assert!(
        Path::new(DEBIAN_PLUGIN_DIR).join("bridge").is_file(),
        "Debian's containernetworking-plugins are missing ({DEBIAN_PLUGIN_DIR}/bridge); scripts/test.sh installs them"
    );
    true
}

#[test]
fn add_reports_the_pod_to_the_agent_and_passes_the_result_on() {
    if !require() {
        return;
    }
    let s = setup();
    let agent = FakeAgent::start(&s.socket, Reply::Done);
    let att = Attachment::pod(
        "c0ffee",
        s.pod.path(),
        "shop",
        "client-7d9",
        "0b7c3a52-0000-4000-8000-000000000001",
    );

    let result = s.runtime.add(&att).unwrap().expect("ADD succeeds");
    let addr = result["ips"][0]["address"]
        .as_str()
        .expect("an address")
        .to_owned();
    assert!(addr.starts_with("10.99.0."), "{result}");
    assert_eq!(result["cniVersion"], "1.0.0");

    // The bridge plugin really configured the pod's eth0 with that address.
    let shown = s.pod.ip(&["-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(shown.contains(&addr), "{shown}");

    let events = agent.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.kind, EventKind::Add);
    assert_eq!(
        (e.pod_namespace.as_str(), e.pod_name.as_str()),
        ("shop", "client-7d9")
    );
    assert_eq!(e.pod_uid, "0b7c3a52-0000-4000-8000-000000000001");
    assert_eq!(e.container_id, "c0ffee");
    assert_eq!(Path::new(&e.netns), s.pod.path());
    let ip: IpAddr = addr.split('/').next().unwrap().parse().unwrap();
    assert_eq!(e.ips, vec![ip]);

    // CHECK with the result passes; DEL reaches the agent and succeeds.
    let plugin = json!({ "type": "meshwire-cni", "agent_socket": s.socket.display().to_string() });
    s.runtime
        .invoke("CHECK", &plugin, &att, Some(&result))
        .unwrap()
        .expect("CHECK passes");
    s.runtime
        .del(&att, Some(&result))
        .unwrap()
        .expect("DEL succeeds");
    let events = agent.events();
    assert_eq!(
        events.last().map(|e| e.kind),
        Some(EventKind::Del),
        "{events:?}"
    );
    drop(agent.runtime);
}

#[test]
fn add_fails_closed_while_the_agent_is_unreachable() {
    if !require() {
        return;
    }
    let s = setup();
    // Nobody listens on the socket and no kubeconfig is configured: the enrollment of
    // the pod cannot be known, so ADD fails with "try again later" and the runtime retries.
    let att = Attachment::pod("c1", s.pod.path(), "shop", "server-0", "uid-1");
    let failure = s.runtime.add(&att).unwrap().expect_err("ADD must fail");
    assert_eq!(failure.plugin, "meshwire-cni");
    assert_eq!(failure.code(), Some(11), "{failure:?}");
    assert_eq!(failure.exit, Some(11));
    assert!(
        failure.error["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot be reached"),
        "{failure:?}"
    );

    // A pod of an excluded namespace starts anyway, and so does a non-Kubernetes sandbox.
    let sys = Attachment::pod("c2", s.pod.path(), "kube-system", "dns", "uid-2");
    let plugin = json!({ "type": "meshwire-cni", "agent_socket": s.socket.display().to_string() });
    let prev = json!({ "cniVersion": "1.0.0", "ips": [{ "address": "10.99.0.9/24" }] });
    let out = s
        .runtime
        .invoke("ADD", &plugin, &sys, Some(&prev))
        .unwrap()
        .expect("excluded pod passes");
    assert_eq!(out["ips"][0]["address"], "10.99.0.9/24");

    // DEL never fails, even with the agent gone.
    s.runtime
        .invoke("DEL", &plugin, &att, Some(&prev))
        .unwrap()
        .expect("DEL passes");

    // STATUS says not available (code 50) until the agent listens.
    let st = s
        .runtime
        .invoke("STATUS", &plugin, &att, None)
        .unwrap()
        .expect_err("STATUS fails");
    assert_eq!(st.code(), Some(50), "{st:?}");
    let _agent = FakeAgent::start(&s.socket, Reply::NotEnrolled);
    s.runtime
        .invoke("STATUS", &plugin, &att, None)
        .unwrap()
        .expect("STATUS passes");
}

#[test]
fn add_fails_when_the_agent_cannot_enroll() {
    if !require() {
        return;
    }
    let s = setup();
    let _agent = FakeAgent::start(
        &s.socket,
        Reply::Failed {
            message: "proxy did not acknowledge".to_owned(),
        },
    );
    let att = Attachment::pod("c3", s.pod.path(), "shop", "server-1", "uid-3");
    let failure = s.runtime.add(&att).unwrap().expect_err("ADD must fail");
    assert_eq!(failure.code(), Some(11), "{failure:?}");
    assert!(
        failure.error["details"]
            .as_str()
            .unwrap_or_default()
            .contains("proxy did not acknowledge")
    );
}

#[test]
fn version_lists_cni_1_1() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshwire-cni"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let versions: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        versions.contains(&"1.1.0") && versions.contains(&"1.0.0"),
        "{v}"
    );
}

#[test]
fn a_bad_configuration_is_a_cni_error() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meshwire-cni"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c")
        .env("CNI_NETNS", "/var/run/netns/none")
        .env("CNI_IFNAME", "eth0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"cniVersion":"9.9.9","type":"meshwire-cni"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["code"], 1, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("9.9.9"));
}
