//! Settings of the server, and which peers it serves.

use std::path::PathBuf;
use std::time::Duration;

use crate::DEFAULT_SOCKET_PATH;

/// Which peers a [`Server`](super::Server) serves, by the uid the kernel reports for the process that
/// connected (`SO_PEERCRED`, taken at `connect`). Refused peers are logged, reported as
/// [`ServerEvent::Refused`](super::ServerEvent::Refused) and closed before anything is read or sent.
///
/// This adds to the socket file's mode (0600, owner only), which processes with
/// `CAP_DAC_OVERRIDE` or a mount of the socket elsewhere can get around.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerUids {
    /// uid 0 and the server process's effective uid. The default.
    #[default]
    RootAndSelf,
    /// Only these uids.
    Only(Vec<u32>),
    /// Every peer that can open the socket (no check).
    Any,
}

impl PeerUids {
    /// Whether a peer running as `uid` is served.
    pub fn allows(&self, uid: u32) -> bool {
        match self {
            Self::RootAndSelf => uid == 0 || uid == nix::unistd::geteuid().as_raw(),
            Self::Only(uids) => uids.contains(&uid),
            Self::Any => true,
        }
    }
}

/// Settings of a [`Server`](super::Server).
///
/// Start from [`ServerConfig::default`] and set the fields that differ:
///
/// ```
/// let mut config = meshwire_zds::server::ServerConfig::default();
/// config.path = "/run/meshwire/zds.sock".into();
/// config.wait_for_seed = true;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Where to listen. The parent directory is created (mode 0755) and a stale socket
    /// file is replaced. Default [`DEFAULT_SOCKET_PATH`].
    pub path: PathBuf,
    /// Which peers are served, by their uid. Default [`PeerUids::RootAndSelf`].
    pub peer_uids: PeerUids,
    /// How long a new connection may take to send its hello. Default 5 s.
    pub hello_timeout: Duration,
    /// How long sending one request and receiving its answer may take; past it the
    /// connection is closed (lock-step is lost). Default 5 s.
    pub ack_timeout: Duration,
    /// Requests queued per connection before callers wait. Default 100; 0 counts as 1.
    pub queue_capacity: usize,
    /// Hold the snapshot of every connection until [`Server::mark_seeded`](super::Server::mark_seeded) is called, so
    /// that a proxy connecting while the agent is still loading its workloads does not
    /// get a partial snapshot (which would make it drop the rest). Default off.
    pub wait_for_seed: bool,
    /// Events buffered per [`Server::subscribe`](super::Server::subscribe) receiver before it starts missing
    /// them. Default 256; 0 counts as 1.
    pub event_capacity: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_SOCKET_PATH),
            peer_uids: PeerUids::RootAndSelf,
            hello_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(5),
            queue_capacity: 100,
            wait_for_seed: false,
            event_capacity: 256,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = ServerConfig::default();
        assert_eq!(
            c.path,
            std::path::Path::new("/var/run/ztunnel/ztunnel.sock")
        );
        assert_eq!(c.peer_uids, PeerUids::RootAndSelf);
        assert_eq!(c.hello_timeout, Duration::from_secs(5));
        assert_eq!(c.ack_timeout, Duration::from_secs(5));
        assert_eq!(c.queue_capacity, 100);
        assert!(!c.wait_for_seed);
        assert_eq!(c.event_capacity, 256);
    }

    #[test]
    fn peer_uids() {
        assert!(PeerUids::RootAndSelf.allows(0));
        assert!(PeerUids::RootAndSelf.allows(nix::unistd::geteuid().as_raw()));
        assert!(PeerUids::Only(vec![7]).allows(7));
        assert!(!PeerUids::Only(vec![7]).allows(0));
        assert!(PeerUids::Any.allows(12345));
    }
}
