//! The proxy channel over the `zds` crate's server.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

use meshwire_zds::Workload;
use meshwire_zds::server::{ConnectionId, Server, ServerEvent, ZdsError};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::desired::LocalPod;
use crate::effects::next_event;
use crate::metrics::Metrics;
use crate::reconcile::{Cause, EffectError, ProxyChannel};

/// What the newest proxy connection holds, as far as the acks tell.
#[derive(Debug, Default)]
struct Held {
    newest: Option<ConnectionId>,
    /// Known once the newest connection answered its snapshot.
    uids: Option<BTreeSet<String>>,
}

/// [`ProxyChannel`] backed by a [`meshwire_zds::server::Server`].
#[derive(Debug, Clone)]
pub(crate) struct ZdsChannel {
    server: Arc<Server>,
    held: Arc<Mutex<Held>>,
    /// The namespace last handed over per uid (to notice a namespace recreated under the
    /// same path).
    handed: Arc<Mutex<BTreeMap<String, meshwire_netns::ns::NsId>>>,
}

impl ZdsChannel {
    pub(crate) fn new(server: Arc<Server>) -> Self {
        Self {
            server,
            held: Arc::default(),
            handed: Arc::default(),
        }
    }

    fn held_mut<R>(&self, f: impl FnOnce(&mut Held) -> R) -> R {
        f(&mut self.held.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Follows the server's events: logs them, keeps the connected-proxies gauge and the
    /// held set, and wakes the reconciler when a proxy finished its snapshot.
    pub(crate) async fn follow_events(
        self,
        mut events: broadcast::Receiver<ServerEvent>,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        while let Some(event) = next_event(&mut events, &shutdown).await {
            match event {
                Ok(ServerEvent::Connected { id }) => {
                    info!(connection = %id, "proxy connected over ZDS; sending it the snapshot");
                    metrics.connected_proxies.inc();
                    self.held_mut(|h| {
                        h.newest = Some(id);
                        h.uids = None;
                    });
                }
                Ok(ServerEvent::SnapshotDone {
                    id,
                    workloads,
                    nacked,
                }) => {
                    for uid in &nacked {
                        warn!(connection = %id, %uid, "proxy rejected pod in its snapshot");
                        metrics.failure(Cause::ProxyNack.label());
                    }
                    info!(connection = %id, pods = workloads, rejected = nacked.len(), "proxy acknowledged the snapshot");
                    let cached: BTreeSet<String> = self
                        .server
                        .workloads()
                        .await
                        .into_iter()
                        .map(|w| w.uid)
                        .collect();
                    self.held_mut(|h| {
                        if h.newest == Some(id) {
                            let nacked: BTreeSet<String> = nacked.into_iter().collect();
                            h.uids = Some(cached.difference(&nacked).cloned().collect());
                        }
                    });
                    wake.notify_one();
                }
                Ok(ServerEvent::Nacked { id, uid, message }) => {
                    warn!(connection = %id, uid = uid.as_deref().unwrap_or("-"), %message, "proxy NACKed a request");
                    if let Some(uid) = uid {
                        self.held_mut(|h| {
                            if h.newest == Some(id)
                                && let Some(uids) = &mut h.uids
                            {
                                uids.remove(&uid);
                            }
                        });
                    }
                }
                Ok(ServerEvent::Disconnected { id, error }) => {
                    match error {
                        Some(e) => warn!(connection = %id, error = %e, "proxy connection closed"),
                        None => info!(connection = %id, "proxy disconnected"),
                    }
                    metrics.connected_proxies.dec();
                    self.held_mut(|h| {
                        if h.newest == Some(id) {
                            h.newest = None;
                            h.uids = None;
                        }
                    });
                }
                Ok(other) => info!(event = ?other, "ZDS event"),
                Err(missed) => {
                    warn!(
                        missed,
                        "missed ZDS events; re-checking the proxy on the next pass"
                    );
                    self.held_mut(|h| h.uids = None);
                    let n = self.server.connections().await;
                    metrics
                        .connected_proxies
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }
    }
}

fn open_netns(pod: &LocalPod) -> Result<meshwire_netns::NetNs, EffectError> {
    // `NetNs` checks that the file is a network namespace (also through a bind mount).
    meshwire_netns::NetNs::from_path(&pod.netns)
        .map_err(|e| EffectError::new(Cause::Netns, e.to_string()))
}

fn zds_error(e: ZdsError) -> EffectError {
    let cause = match &e {
        ZdsError::Nack(_) => Cause::ProxyNack,
        ZdsError::Timeout => Cause::ProxyTimeout,
        _ => Cause::ProxyUnavailable,
    };
    EffectError::new(cause, e.to_string())
}

impl ProxyChannel for ZdsChannel {
    async fn add(&self, pod: &LocalPod) -> Result<(), EffectError> {
        let ns = open_netns(pod)?;
        let id = ns.id();
        let workload = Workload::new(&pod.uid, &pod.name, &pod.namespace, &pod.service_account);
        self.server
            .add(workload, OwnedFd::from(ns))
            .await
            .map_err(zds_error)?;
        self.handed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pod.uid.clone(), id);
        self.held_mut(|h| {
            if let Some(uids) = &mut h.uids {
                uids.insert(pod.uid.clone());
            }
        });
        Ok(())
    }

    async fn del(&self, uid: &str) -> Result<(), EffectError> {
        self.server.del(uid).await.map_err(zds_error)?;
        self.handed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uid);
        self.held_mut(|h| {
            if let Some(uids) = &mut h.uids {
                uids.remove(uid);
            }
        });
        Ok(())
    }

    fn held(&self) -> Option<BTreeSet<String>> {
        self.held_mut(|h| h.uids.clone())
    }

    fn netns_replaced(&self, pod: &LocalPod) -> bool {
        let Some(handed) = self
            .handed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pod.uid)
            .copied()
        else {
            return false;
        };
        // A path that cannot be opened is not a replacement (the pod is going away).
        open_netns(pod).is_ok_and(|ns| ns.id() != handed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_namespace_recreated_under_the_same_path_is_noticed() {
        let Some(_privileged) = testbed::require_privileged("effects::zds::netns_replaced") else {
            return;
        };
        let ns = testbed::Namespace::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("zds.sock");
        let mut config = meshwire_zds::server::ServerConfig::default();
        config.path = socket.clone();
        let server = Arc::new(Server::bind(config).await.unwrap());
        let channel = ZdsChannel::new(server.clone());
        // A stand-in proxy that acknowledges everything.
        let mut config = meshwire_zds::client::ClientConfig::default();
        config.path = socket.clone();
        let client =
            meshwire_zds::client::Client::new(config, |_update: meshwire_zds::Update| async {
                Ok::<(), std::io::Error>(())
            });
        let proxy = tokio::spawn(client.run());

        let pod = LocalPod {
            uid: "u1".into(),
            name: "p".into(),
            namespace: "shop".into(),
            service_account: "default".into(),
            netns: ns.path().to_owned(),
        };
        let mut added = false;
        for _ in 0..250 {
            match channel.add(&pod).await {
                Ok(()) => {
                    added = true;
                    break;
                }
                Err(e) if e.cause == Cause::ProxyUnavailable => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("add failed: {e}"),
            }
        }
        assert!(added, "the stand-in proxy never connected");
        assert!(!channel.netns_replaced(&pod));

        // Same path, new namespace (the old one lives on in the server's fd).
        let ns = ns.recreate().unwrap();
        assert!(channel.netns_replaced(&pod));
        channel.add(&pod).await.unwrap();
        assert!(!channel.netns_replaced(&pod), "the new one was handed over");

        // After a delete nothing is remembered for the uid.
        channel.del(&pod.uid).await.unwrap();
        let _ns = ns.recreate().unwrap();
        assert!(!channel.netns_replaced(&pod));
        proxy.abort();
    }
}
