//! What pooled connections are keyed by.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use meshwire_svid::{IdentityPolicy, SpiffeId};

/// What makes two tunnels share a connection: only tunnels with equal keys do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PoolKey {
    /// The identity the client presents (source workload).
    pub source: SpiffeId,
    /// The server identities accepted for this hop (any one of them). The pool checks
    /// the server certificate's SPIFFE ID against this set after the handshake, on top
    /// of the TLS provider's verifier; an empty set skips that check.
    pub expected: BTreeSet<SpiffeId>,
    /// The next hop: `<ip>:15008` of the destination, waypoint or gateway.
    pub next_hop: SocketAddr,
    /// The local address to connect from, if the connector should bind one.
    pub source_addr: Option<IpAddr>,
}

impl PoolKey {
    /// A key from its parts.
    pub fn new(
        source: SpiffeId,
        expected: impl IntoIterator<Item = SpiffeId>,
        next_hop: SocketAddr,
        source_addr: Option<IpAddr>,
    ) -> Self {
        Self {
            source,
            expected: expected.into_iter().collect(),
            next_hop,
            source_addr,
        }
    }

    /// The server-identity policy for this hop: exactly the expected identities.
    pub fn expected_policy(&self) -> IdentityPolicy {
        IdentityPolicy::Exact(self.expected.clone())
    }
}
