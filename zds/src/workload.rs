//! Domain types shared by the codec, the sessions, the client and the server.

use std::fmt;
use std::os::fd::OwnedFd;

/// One pod as ZDS names it: the Kubernetes pod UID plus the identity the proxy needs to
/// find the pod's workload in xDS.
///
/// The `uid` is the pod's `metadata.uid`. It is the key of every ZDS request; it is *not*
/// the xDS workload uid. The proxy matches xDS workloads on (`name`, `namespace`,
/// `service_account`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct Workload {
    /// Kubernetes pod UID (`metadata.uid`).
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod service account (`spec.serviceAccountName`).
    pub service_account: String,
}

impl Workload {
    /// Builds a workload from its four fields.
    pub fn new(
        uid: impl Into<String>,
        name: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self {
            uid: uid.into(),
            name: name.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

/// A change the proxy application has to apply, handed out by
/// [`ProxySession`](crate::session::ProxySession) and by the [`Client`](crate::client::Client) to its
/// [`Handler`](crate::client::Handler).
///
/// `F` is the type of the netns handle: [`OwnedFd`] on a real socket; tests and fuzzers
/// may use anything.
///
/// Every update must be answered: success becomes a positive ack on the wire, an error
/// becomes a NACK carrying the error's text.
#[derive(Debug)]
#[non_exhaustive]
pub enum Update<F = OwnedFd> {
    /// Start serving `workload` inside the network namespace `netns`.
    ///
    /// The proxy owns `netns` from here on and keeps it open for as long as it serves
    /// the workload. A uid that is already served may arrive again: with the same
    /// namespace (compare [`NetnsId`](crate::netns::NetnsId)) it is a no-op, with a different
    /// one the pod sandbox was recreated and the old instance must be replaced.
    Add {
        /// The pod.
        workload: Workload,
        /// Its network namespace.
        netns: F,
    },
    /// Sent only during the snapshot: the pod still exists, but the agent could not
    /// open its namespace. Leave whatever runs for it untouched.
    Keep {
        /// Kubernetes pod UID.
        uid: String,
    },
    /// Stop serving the pod now. Unknown uids must be accepted (deletes are idempotent).
    ///
    /// Also produced by snapshot reconciliation for every uid the application was given
    /// earlier but that the agent's snapshot no longer names.
    Del {
        /// Kubernetes pod UID.
        uid: String,
    },
    /// The agent finished its snapshot. Stale workloads have already been deleted
    /// through [`Update::Del`] when this arrives.
    SnapshotSent,
}

impl<F> Update<F> {
    /// The pod UID this update is about, if any.
    pub fn uid(&self) -> Option<&str> {
        match self {
            Self::Add { workload, .. } => Some(&workload.uid),
            Self::Keep { uid } | Self::Del { uid } => Some(uid),
            Self::SnapshotSent => None,
        }
    }
}
