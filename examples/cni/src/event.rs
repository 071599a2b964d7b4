//! The plugin's message to the node agent: one JSON request and one JSON reply per
//! connection on a unix stream socket.
//!
//! The plugin writes a [`PodEvent`] and shuts down its write half; the agent answers
//! with a [`Reply`] and closes. Both sides bound what they read ([`MAX_MESSAGE`]).

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The largest request or reply either side reads.
pub const MAX_MESSAGE: u64 = 64 * 1024;

/// What happened to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum EventKind {
    /// CNI ADD: the pod's sandbox and network exist.
    Add,
    /// CNI DEL: the pod's network is being torn down.
    Del,
}

/// A pod's sandbox as the CNI runtime describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PodEvent {
    /// ADD or DEL.
    pub kind: EventKind,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the path of the pod's network namespace.
    pub netns: String,
    /// `K8S_POD_NAME`.
    pub pod_name: String,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: String,
    /// `K8S_POD_UID` (empty when the runtime does not pass it).
    pub pod_uid: String,
    /// The pod's addresses from `prevResult`.
    pub ips: Vec<IpAddr>,
}

impl PodEvent {
    /// An event with every field given.
    pub fn new(
        kind: EventKind,
        container_id: impl Into<String>,
        netns: impl Into<String>,
        pod_namespace: impl Into<String>,
        pod_name: impl Into<String>,
        pod_uid: impl Into<String>,
        ips: Vec<IpAddr>,
    ) -> Self {
        Self {
            kind,
            container_id: container_id.into(),
            netns: netns.into(),
            pod_name: pod_name.into(),
            pod_namespace: pod_namespace.into(),
            pod_uid: pod_uid.into(),
            ips,
        }
    }
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Reply {
    /// The pod is enrolled and its traffic redirected (or the DEL was handled).
    Done,
    /// The pod is not in the mesh; nothing was done.
    NotEnrolled,
    /// The pod should be enrolled but that failed; ADD must fail so the runtime retries.
    Failed {
        /// Why.
        message: String,
    },
}

/// Why the agent could not be asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Connecting, writing or reading failed (the agent is not there, or too slow).
    #[error("agent socket {path}: {source}")]
    Unreachable {
        /// The socket path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The agent answered something that is not a [`Reply`].
    #[error("agent sent an invalid reply: {0}")]
    BadReply(String),
}

/// Sends `event` to the agent at `socket` and waits up to `timeout` for each of the
/// write and the read.
pub fn send(socket: &Path, event: &PodEvent, timeout: Duration) -> Result<Reply, SendError> {
    let unreachable = |source| SendError::Unreachable {
        path: socket.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    let body = serde_json::to_vec(event).map_err(|e| SendError::BadReply(e.to_string()))?;
    stream.write_all(&body).map_err(unreachable)?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(unreachable)?;
    let mut reply = Vec::new();
    stream
        .take(MAX_MESSAGE)
        .read_to_end(&mut reply)
        .map_err(unreachable)?;
    serde_json::from_slice(&reply).map_err(|e| SendError::BadReply(e.to_string()))
}

/// Whether something accepts connections on `socket` (CNI STATUS).
pub fn reachable(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

/// The agent's side: reads one event from an accepted connection (bounded by
/// [`MAX_MESSAGE`] and `timeout`), asks `handle`, and writes the reply.
pub async fn answer<F, Fut>(
    mut stream: tokio::net::UnixStream,
    timeout: Duration,
    handle: F,
) -> Result<PodEvent, AnswerError>
where
    F: FnOnce(PodEvent) -> Fut,
    Fut: Future<Output = Reply>,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut body = Vec::new();
    tokio::time::timeout(
        timeout,
        (&mut stream).take(MAX_MESSAGE).read_to_end(&mut body),
    )
    .await
    .map_err(|_| AnswerError::Timeout)?
    .map_err(AnswerError::Io)?;
    let event: PodEvent = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            let reply = Reply::Failed {
                message: format!("invalid event: {e}"),
            };
            let _ = write_reply(&mut stream, &reply).await;
            return Err(AnswerError::BadEvent(e.to_string()));
        }
    };
    let reply = handle(event.clone()).await;
    write_reply(&mut stream, &reply).await?;
    stream.shutdown().await.map_err(AnswerError::Io)?;
    Ok(event)
}

async fn write_reply(
    stream: &mut tokio::net::UnixStream,
    reply: &Reply,
) -> Result<(), AnswerError> {
    use tokio::io::AsyncWriteExt;
    let text = serde_json::to_vec(reply).map_err(|e| AnswerError::BadEvent(e.to_string()))?;
    stream.write_all(&text).await.map_err(AnswerError::Io)
}

/// Why the agent's side could not answer a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnswerError {
    /// The plugin sent nothing complete in time.
    #[error("no complete event in time")]
    Timeout,
    /// Reading or writing failed.
    #[error("I/O: {0}")]
    Io(std::io::Error),
    /// The request was not a [`PodEvent`].
    #[error("invalid event: {0}")]
    BadEvent(String),
}
