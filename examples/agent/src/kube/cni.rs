//! The CNI plugin's event socket: the plugin reports each new pod sandbox (name, namespace,
//! uid, netns path, addresses) and waits for the answer before the pod may start.
//!
//! ADD of a pod in an enrolled namespace records its sandbox and answers `done` only once
//! the pod is enrolled (the proxy holds it, its rules are in place), `failed` when that
//! failed or takes too long (the runtime then retries the sandbox, so no enrolled pod starts
//! unprotected), and `not-enrolled` for other pods (whose sandbox is recorded too, for a
//! later label). DEL forgets the sandbox.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::reflector::Store;
use meshwire_cni::event::{EventKind, PodEvent, Reply, answer};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::annotate::LocalStatus;
use super::sandboxes::{Sandboxes, sandbox};

/// How long the plugin has to send its event.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an ADD waits for the pod to appear in the watch.
const POD_WAIT: Duration = Duration::from_secs(1);
/// How long an ADD waits for the pod to be enrolled (the plugin waits 5 s by default).
const ENROLL_WAIT: Duration = Duration::from_secs(4);

/// Binds the socket at `path` (owner-only: the plugin runs as root), replacing a stale one.
pub(crate) fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the CNI socket's directory {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("removing the stale CNI socket {}", path.display()))?,
        Ok(_) => anyhow::bail!("{} exists and is not a socket", path.display()),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the CNI socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting the CNI socket {}", path.display()))?;
    Ok(listener)
}

/// What an event is answered from.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) pods: Store<Pod>,
    pub(crate) namespaces: Store<Namespace>,
    pub(crate) sandboxes: Sandboxes,
    pub(crate) label_key: String,
    /// What this node's pods carry (enrolled ones are `enabled`).
    pub(crate) status: watch::Receiver<Option<Arc<LocalStatus>>>,
    /// The failed steps of the last reconcile pass, by pod uid.
    pub(crate) failures: watch::Receiver<Arc<BTreeMap<String, String>>>,
}

/// Answers the plugin's connections until `shutdown`.
pub(crate) async fn serve(
    listener: UnixListener,
    path: PathBuf,
    context: Context,
    shutdown: CancellationToken,
) {
    info!(path = %path.display(), "serving CNI plugin events");
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "accepting a CNI plugin connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let context = context.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, READ_TIMEOUT, |event| handle(context, event)).await {
                warn!(error = %e, "CNI plugin event not answered");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

async fn handle(context: Context, event: PodEvent) -> Reply {
    let pod = format!("{}/{}", event.pod_namespace, event.pod_name);
    let reply = match event.kind {
        EventKind::Add => add(&context, &event).await,
        EventKind::Del => {
            if let Some(uid) = find(&context.pods, &event).and_then(|p| p.metadata.uid.clone()) {
                context.sandboxes.remove(&uid, Path::new(&event.netns));
            }
            Reply::Done
        }
        _ => Reply::Done,
    };
    match &reply {
        Reply::Failed { message } => {
            warn!(%pod, kind = ?event.kind, netns = %event.netns, %message, "CNI event failed");
        }
        other => {
            info!(%pod, kind = ?event.kind, netns = %event.netns, reply = ?other, "CNI event answered")
        }
    }
    reply
}

/// The pod the event is about, by namespace and name (and uid when the runtime gave it).
fn find(pods: &Store<Pod>, event: &PodEvent) -> Option<Arc<Pod>> {
    pods.find(|p| {
        p.metadata.namespace.as_deref() == Some(event.pod_namespace.as_str())
            && p.metadata.name.as_deref() == Some(event.pod_name.as_str())
            && (event.pod_uid.is_empty() || p.metadata.uid.as_deref() == Some(&event.pod_uid))
    })
}

async fn add(context: &Context, event: &PodEvent) -> Reply {
    let enrolled = context
        .namespaces
        .find(|ns| ns.metadata.name.as_deref() == Some(event.pod_namespace.as_str()))
        .and_then(|ns| {
            ns.metadata
                .labels
                .as_ref()?
                .get(&context.label_key)
                .cloned()
        })
        .is_some_and(|v| v == "true");
    // The runtime may run the plugin before the watch has shown the pod.
    let deadline = tokio::time::Instant::now() + POD_WAIT;
    let pod = loop {
        if let Some(p) = find(&context.pods, event) {
            break Some(p);
        }
        if tokio::time::Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let Some(uid) = pod.and_then(|p| p.metadata.uid.clone()) else {
        if enrolled {
            return Reply::Failed {
                message: format!(
                    "pod {}/{} is not known to the agent yet",
                    event.pod_namespace, event.pod_name
                ),
            };
        }
        return Reply::NotEnrolled;
    };
    let mut status = context.status.clone();
    let mut failures = context.failures.clone();
    failures.borrow_and_update();
    let before = status.borrow_and_update().clone();
    let new = !context
        .sandboxes
        .contains_exactly(&uid, Path::new(&event.netns));
    context
        .sandboxes
        .insert(&uid, sandbox(&event.netns, event.ips.clone()));
    if !enrolled {
        return Reply::NotEnrolled;
    }
    let is_enabled =
        |s: &Option<Arc<LocalStatus>>| s.as_ref().is_some_and(|s| s.enabled.contains(&uid));
    // A sandbox the agent already had and enrolled: nothing changes.
    if !new && is_enabled(&before) {
        return Reply::Done;
    }
    debug!(%uid, "waiting for the pod to be enrolled");
    let wait = async {
        loop {
            tokio::select! {
                r = status.changed() => {
                    if r.is_err() {
                        return Reply::Failed { message: "the agent is stopping".to_owned() };
                    }
                    if is_enabled(&status.borrow_and_update()) {
                        return Reply::Done;
                    }
                }
                r = failures.changed() => {
                    if r.is_err() {
                        return Reply::Failed { message: "the agent is stopping".to_owned() };
                    }
                    if let Some(message) = failures.borrow_and_update().get(&uid) {
                        return Reply::Failed { message: message.clone() };
                    }
                }
            }
        }
    };
    tokio::time::timeout(ENROLL_WAIT, wait)
        .await
        .unwrap_or_else(|_| Reply::Failed {
            message: format!("not enrolled within {ENROLL_WAIT:?}"),
        })
}
