//! Who may have which certificate: the CA signs an identity only for the proxy of a node on
//! which a pod with that identity runs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use meshwire_svid::service::server::Credentials;

use crate::desired::Settings;
use crate::workloads::Cluster;

/// How callers are recognised as the proxy of a node. [`Debug`](fmt::Debug) shows the nodes
/// of the tokens, not the tokens.
#[derive(Clone, Default)]
pub(crate) struct CallerPolicy {
    /// Bearer tokens of node proxies: token → node name.
    pub(crate) tokens: BTreeMap<String, String>,
    /// File-source demo mode: a caller on the loopback of this node's netns is this node's
    /// proxy.
    pub(crate) trust_loopback: bool,
}

impl fmt::Debug for CallerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallerPolicy")
            .field("token_nodes", &self.tokens.values().collect::<Vec<_>>())
            .field("trust_loopback", &self.trust_loopback)
            .finish()
    }
}

impl CallerPolicy {
    /// The node whose proxy `caller` is, if it can be recognised.
    ///
    /// In order: a client certificate `spiffe://<trust domain>/node/<node>`, a known bearer
    /// token, then (demo mode) the loopback address.
    pub(crate) fn caller_node(&self, caller: &Credentials, settings: &Settings) -> Option<String> {
        if let Some(node) = self.certificate_node(caller, settings) {
            return Some(node);
        }
        if let Some(token) = &caller.bearer_token
            && let Some(node) = self.tokens.get(token)
        {
            return Some(node.clone());
        }
        let remote = caller.remote_addr?;
        if self.trust_loopback && is_loopback(remote.ip()) {
            return Some(settings.node.clone());
        }
        None
    }

    /// The node of a client certificate `spiffe://<trust domain>/node/<node>`, if the caller
    /// presented one.
    pub(crate) fn certificate_node(
        &self,
        caller: &Credentials,
        settings: &Settings,
    ) -> Option<String> {
        let id = caller.peer_identity.as_ref()?;
        let node = id.path().strip_prefix("/node/")?;
        (id.trust_domain().as_str() == settings.trust_domain.as_str()
            && !node.is_empty()
            && !node.contains('/'))
        .then(|| node.to_owned())
    }

    /// The policy of the command line: the tokens of `tokens_file` (none when unset) and
    /// whether loopback callers are trusted.
    pub(crate) fn load(tokens_file: Option<&Path>, trust_loopback: bool) -> anyhow::Result<Self> {
        let tokens = match tokens_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading --proxy-tokens {}", path.display()))?;
                Self::parse_tokens(&text)
                    .map_err(|e| anyhow::anyhow!("--proxy-tokens {}: {e}", path.display()))?
            }
            None => BTreeMap::new(),
        };
        Ok(Self {
            tokens,
            trust_loopback,
        })
    }

    /// Parses a token file: one `<node-name> <token>` per line; `#` starts a comment.
    pub(crate) fn parse_tokens(text: &str) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(node), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("line {}: expected `<node-name> <token>`", n + 1));
            };
            if out.insert(token.to_owned(), node.to_owned()).is_some() {
                return Err(format!("line {}: token is listed twice", n + 1));
            }
        }
        Ok(out)
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The workload identity a caller asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Requested<'a> {
    pub(crate) trust_domain: &'a str,
    pub(crate) namespace: &'a str,
    pub(crate) service_account: &'a str,
}

/// Why a certificate request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denial {
    /// The caller is not recognised as the proxy of any node.
    UnknownCaller,
    /// The identity is of another trust domain.
    ForeignTrustDomain(String),
    /// No pod with that identity runs on the caller's node.
    NoPodOnNode { node: String },
    /// Pods with that identity exist on the node, but their namespace is not enrolled.
    NotEnrolled,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownCaller => f.write_str("caller is not recognised as a node proxy"),
            Self::ForeignTrustDomain(td) => {
                write!(f, "trust domain {td:?} is not served by this CA")
            }
            Self::NoPodOnNode { node } => {
                write!(f, "no pod with this identity runs on node {node:?}")
            }
            Self::NotEnrolled => f.write_str("the pods with this identity are not enrolled"),
        }
    }
}

/// Decides whether the proxy of `caller_node` may have `requested`.
pub(crate) fn authorize(
    cluster: &Cluster,
    settings: &Settings,
    caller_node: Option<&str>,
    requested: &Requested<'_>,
) -> Result<(), Denial> {
    let node = caller_node.ok_or(Denial::UnknownCaller)?;
    if requested.trust_domain != settings.trust_domain {
        return Err(Denial::ForeignTrustDomain(
            requested.trust_domain.to_owned(),
        ));
    }
    let mut found = false;
    for pod in &cluster.pods {
        if pod.node == node
            && pod.namespace == requested.namespace
            && pod.service_account == requested.service_account
        {
            found = true;
            if cluster.namespace_enrolled(&pod.namespace, &settings.label_key) {
                return Ok(());
            }
        }
    }
    Err(if found {
        Denial::NotEnrolled
    } else {
        Denial::NoPodOnNode {
            node: node.to_owned(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::tests::{EXAMPLE, settings};

    fn req<'a>(ns: &'a str, sa: &'a str) -> Requested<'a> {
        Requested {
            trust_domain: "cluster.local",
            namespace: ns,
            service_account: sa,
        }
    }

    #[test]
    fn signs_only_identities_of_pods_on_the_callers_node() {
        let c = Cluster::from_yaml(EXAMPLE).unwrap();
        let s = settings("node-1");
        // client-1 (shop/client) runs on node-1.
        assert_eq!(
            authorize(&c, &s, Some("node-1"), &req("shop", "client")),
            Ok(())
        );
        // server-1 (shop/default) runs on node-2: node-1's proxy may not have it.
        assert_eq!(
            authorize(&c, &s, Some("node-1"), &req("shop", "default")),
            Err(Denial::NoPodOnNode {
                node: "node-1".into()
            })
        );
        assert_eq!(
            authorize(&c, &s, Some("node-2"), &req("shop", "default")),
            Ok(())
        );
        assert_eq!(
            authorize(&c, &s, Some("node-2"), &req("shop", "client")),
            Err(Denial::NoPodOnNode {
                node: "node-2".into()
            })
        );
        // old-1 (legacy/default) runs on node-1 but legacy is not enrolled.
        assert_eq!(
            authorize(&c, &s, Some("node-1"), &req("legacy", "default")),
            Err(Denial::NotEnrolled)
        );
        // Unknown caller, foreign trust domain.
        assert_eq!(
            authorize(&c, &s, None, &req("shop", "client")),
            Err(Denial::UnknownCaller)
        );
        let foreign = Requested {
            trust_domain: "evil.example",
            namespace: "shop",
            service_account: "client",
        };
        assert_eq!(
            authorize(&c, &s, Some("node-1"), &foreign),
            Err(Denial::ForeignTrustDomain("evil.example".into()))
        );
    }

    #[test]
    fn callers_are_recognised_by_token_or_loopback() {
        let s = settings("node-1");
        let policy = CallerPolicy {
            tokens: CallerPolicy::parse_tokens("# node proxies\nnode-2 s3cret\nnode-3 other # c\n")
                .unwrap(),
            trust_loopback: true,
        };
        let at = |addr: &str, token: Option<&str>| {
            let mut c = Credentials::default();
            c.remote_addr = Some(addr.parse().unwrap());
            c.bearer_token = token.map(str::to_owned);
            c
        };
        assert_eq!(
            policy
                .caller_node(&at("127.0.0.1:4000", None), &s)
                .as_deref(),
            Some("node-1")
        );
        assert_eq!(
            policy
                .caller_node(&at("127.0.0.9:4000", None), &s)
                .as_deref(),
            Some("node-1")
        );
        assert_eq!(
            policy.caller_node(&at("[::1]:4000", None), &s).as_deref(),
            Some("node-1")
        );
        assert_eq!(
            policy
                .caller_node(&at("[::ffff:127.0.0.1]:4000", None), &s)
                .as_deref(),
            Some("node-1")
        );
        assert_eq!(policy.caller_node(&at("10.0.0.5:4000", None), &s), None);
        assert_eq!(
            policy
                .caller_node(&at("10.0.0.5:4000", Some("s3cret")), &s)
                .as_deref(),
            Some("node-2")
        );
        assert_eq!(
            policy
                .caller_node(&at("127.0.0.1:4000", Some("other")), &s)
                .as_deref(),
            Some("node-3")
        );
        assert_eq!(
            policy
                .caller_node(&at("127.0.0.1:4000", Some("wrong")), &s)
                .as_deref(),
            Some("node-1"),
            "an unknown token on loopback is still the local proxy in demo mode"
        );
        let with_cert = |id: &str| {
            let mut c = Credentials::default();
            c.remote_addr = Some("10.0.0.5:4000".parse().unwrap());
            c.peer_identity = Some(meshwire_svid::SpiffeId::new(id).unwrap());
            c
        };
        assert_eq!(
            policy
                .caller_node(&with_cert("spiffe://cluster.local/node/node-7"), &s)
                .as_deref(),
            Some("node-7")
        );
        for not_a_node in [
            "spiffe://other.domain/node/node-7",
            "spiffe://cluster.local/ns/shop/sa/client",
            "spiffe://cluster.local/nodes/node-7",
            "spiffe://cluster.local/node/a/b",
            "spiffe://cluster.localx/node/n",
        ] {
            assert_eq!(
                policy.caller_node(&with_cert(not_a_node), &s),
                None,
                "{not_a_node}"
            );
        }
        let strict = CallerPolicy {
            trust_loopback: false,
            ..policy
        };
        assert_eq!(strict.caller_node(&at("127.0.0.1:4000", None), &s), None);
        assert_eq!(strict.caller_node(&Credentials::default(), &s), None);
    }

    #[test]
    fn debug_does_not_show_tokens() {
        let policy = CallerPolicy {
            tokens: CallerPolicy::parse_tokens("node-2 s3cret\n").unwrap(),
            trust_loopback: false,
        };
        let shown = format!("{policy:?}");
        assert!(
            shown.contains("node-2") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn token_file_errors() {
        assert!(CallerPolicy::parse_tokens("node-1\n").is_err());
        assert!(CallerPolicy::parse_tokens("node-1 a b\n").is_err());
        assert!(CallerPolicy::parse_tokens("n1 t\nn2 t\n").is_err());
        assert!(CallerPolicy::parse_tokens("").unwrap().is_empty());
    }
}
