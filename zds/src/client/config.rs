//! Settings of the client.

use std::path::PathBuf;
use std::time::Duration;

use crate::DEFAULT_SOCKET_PATH;

/// Settings of a [`Client`](super::Client).
///
/// Start from [`ClientConfig::default`] and set the fields that differ:
///
/// ```
/// use std::time::Duration;
///
/// let mut config = meshwire_zds::client::ClientConfig::default();
/// config.path = "/run/meshwire/zds.sock".into();
/// config.max_backoff = Duration::from_secs(5);
/// config.verify_netns = true;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The socket to connect to. Default [`DEFAULT_SOCKET_PATH`].
    pub path: PathBuf,
    /// The first wait before reconnecting. Default 10 ms.
    ///
    /// Waits between attempts grow exponentially with jitter: the base doubles after
    /// every attempt, from `initial_backoff` up to `max_backoff`, and each wait adds a
    /// random share of up to the same again (so a wait lies between the base and twice
    /// the base). The base starts over at `initial_backoff` once a connection became
    /// ready.
    pub initial_backoff: Duration,
    /// The largest base wait before reconnecting (see
    /// [`initial_backoff`](Self::initial_backoff)); a smaller value than
    /// `initial_backoff` counts as `initial_backoff`, and base waits longer than a year
    /// count as a year. Default 15 s.
    pub max_backoff: Duration,
    /// How often adds the handler failed are offered to it again, with a duplicate of
    /// the same netns fd; `None` disables retries (a failed add then stays pending until
    /// the agent deletes or re-adds it, or the connection is replaced). Default 5 s.
    pub retry_interval: Option<Duration>,
    /// Whether to check every received netns fd with
    /// [`netns::verify_netns`](crate::netns::verify_netns) before the handler sees it.
    /// An fd that fails is not handed out: the add is NACKed as a start failure and
    /// stays pending. Default off.
    pub verify_netns: bool,
    /// Uids the agent may run as, besides root and this process's effective uid, which
    /// are always allowed. After connecting, the client reads the uid of the process
    /// that created the listening socket (`SO_PEERCRED`) and refuses the connection
    /// ([`ClientError::AgentNotAllowed`](super::ClientError::AgentNotAllowed), logged as
    /// an error, retried with back-off) unless it is allowed: whoever owns the socket
    /// decides which pods the proxy serves. Default empty.
    pub agent_uids: Vec<u32>,
}

impl ClientConfig {
    /// Whether an agent running as `uid` is trusted: root, this process's effective uid,
    /// or one of [`agent_uids`](Self::agent_uids).
    pub fn allows_agent(&self, uid: u32) -> bool {
        uid == 0 || uid == nix::unistd::geteuid().as_raw() || self.agent_uids.contains(&uid)
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_SOCKET_PATH),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(15),
            retry_interval: Some(Duration::from_secs(5)),
            verify_netns: false,
            agent_uids: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = ClientConfig::default();
        assert_eq!(
            c.path,
            std::path::Path::new("/var/run/ztunnel/ztunnel.sock")
        );
        assert_eq!(c.initial_backoff, Duration::from_millis(10));
        assert_eq!(c.max_backoff, Duration::from_secs(15));
        assert_eq!(c.retry_interval, Some(Duration::from_secs(5)));
        assert!(!c.verify_netns);
        assert!(c.agent_uids.is_empty());
    }

    #[test]
    fn root_self_and_listed_agents_are_allowed() {
        let mut c = ClientConfig::default();
        assert!(c.allows_agent(0));
        assert!(c.allows_agent(nix::unistd::geteuid().as_raw()));
        let other = nix::unistd::geteuid().as_raw().wrapping_add(4242);
        assert!(!c.allows_agent(other));
        c.agent_uids = vec![other];
        assert!(c.allows_agent(other));
    }
}
