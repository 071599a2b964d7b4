//! The five pods of the demo cluster, by role: name, namespace, service account, node.

use crate::{ENROLLED_NS, PLAIN_NS, TRUST_DOMAIN};

/// A pod of the demo cluster, by its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// `shop/client` (service account `client`) on node 1.
    Client,
    /// `shop/server-near` (service account `server`) on node 1.
    ServerNear,
    /// `shop/intruder` (service account `intruder`) on node 1: denied by policy.
    Intruder,
    /// `shop/server-far` (service account `server`) on node 2.
    ServerFar,
    /// `legacy/legacy` (service account `default`) on node 2: never enrolled.
    Legacy,
}

impl Role {
    /// Every role, in the order the pods are created.
    pub const ALL: [Self; 5] = [
        Self::Client,
        Self::ServerNear,
        Self::Intruder,
        Self::ServerFar,
        Self::Legacy,
    ];

    /// The pod name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::ServerNear => "server-near",
            Self::Intruder => "intruder",
            Self::ServerFar => "server-far",
            Self::Legacy => "legacy",
        }
    }

    /// The Kubernetes namespace.
    pub fn namespace(self) -> &'static str {
        match self {
            Self::Legacy => PLAIN_NS,
            _ => ENROLLED_NS,
        }
    }

    /// The service account.
    pub fn service_account(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::ServerNear | Self::ServerFar => "server",
            Self::Intruder => "intruder",
            Self::Legacy => "default",
        }
    }

    /// The node index (0-based) the pod runs on.
    pub fn node(self) -> usize {
        match self {
            Self::Client | Self::ServerNear | Self::Intruder => 0,
            Self::ServerFar | Self::Legacy => 1,
        }
    }

    /// The SPIFFE ID of the pod's service account.
    pub fn spiffe_id(self) -> String {
        format!(
            "spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}",
            self.namespace(),
            self.service_account()
        )
    }

    /// `namespace/name`.
    pub fn label(self) -> String {
        format!("{}/{}", self.namespace(), self.name())
    }
}
