//! Enrollment over ZDS: the node agent adds and removes pods; every add opens the pod's
//! listeners before it is acknowledged.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::podnet;
use crate::pods::{PodInfo, Supervisor};
use crate::readiness::Readiness;

/// The NACK text of a failed ZDS update.
#[derive(Debug)]
struct Nack(String);

impl std::fmt::Display for Nack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Waits for the first xDS sync (so no pod is accepted before its workload is known), marks
/// xDS synced in `readiness`, then runs the ZDS client; returns at once when `shutdown`
/// fires first or the xDS client stopped for good.
pub(crate) async fn run_after_sync(
    mut synced: meshwire_xds_workload::ads::client::SyncedSignal,
    shutdown: CancellationToken,
    socket: PathBuf,
    agent_uids: Vec<u32>,
    mark: u32,
    supervisor: Arc<Supervisor>,
    readiness: Arc<Readiness>,
) {
    tokio::select! {
        () = shutdown.cancelled() => return,
        ok = synced.wait() => if !ok { return },
    }
    readiness.set_xds_synced(true);
    tracing::info!("xDS synced, connecting to ZDS");
    run_zds(socket, agent_uids, mark, supervisor, readiness).await;
}

/// Runs the ZDS client until the task is aborted: every add opens the pod's listeners before
/// it is acknowledged.
async fn run_zds(
    socket: PathBuf,
    agent_uids: Vec<u32>,
    mark: u32,
    supervisor: Arc<Supervisor>,
    readiness: Arc<Readiness>,
) {
    let mut zds_config = meshwire_zds::client::ClientConfig::default();
    zds_config.path = socket;
    // Whoever owns the socket decides which pods are served: only trusted agents.
    zds_config.agent_uids = agent_uids;
    let metrics = supervisor.metrics();
    let client =
        meshwire_zds::client::Client::new(zds_config, move |update: meshwire_zds::Update| {
            let supervisor = supervisor.clone();
            async move {
                apply_zds(&supervisor, mark, update)
                    .await
                    .map_err(|e| Nack(crate::error_text::chain(&e)))
            }
        });
    let mut events = client.events();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let meshwire_zds::client::ClientEvent::Disconnected { error, .. } = event {
                metrics.zds_disconnected(&error);
            }
        }
    });
    let mut ready = client.readiness();
    tokio::spawn(async move {
        loop {
            let now = *ready.borrow_and_update();
            readiness.set_zds_snapshot(now);
            if ready.changed().await.is_err() {
                readiness.set_zds_snapshot(false);
                break;
            }
        }
    });
    // Never returns: after any error (the client logs it) it reconnects with back-off,
    // and the snapshot of the new connection removes the pods the agent no longer names.
    match client.run().await {}
}

async fn apply_zds(
    supervisor: &Supervisor,
    mark: u32,
    update: meshwire_zds::Update,
) -> anyhow::Result<()> {
    match update {
        meshwire_zds::Update::Add { workload, netns } => {
            let ns = meshwire_netns::NetNs::from_fd(netns)?;
            let info = PodInfo {
                uid: workload.uid,
                name: workload.name,
                namespace: workload.namespace,
                service_account: workload.service_account,
            };
            supervisor
                .add(info, Arc::new(podnet::PodNamespace::new(ns, mark)?))
                .await
        }
        meshwire_zds::Update::Del { uid } => {
            supervisor.remove(&uid);
            Ok(())
        }
        meshwire_zds::Update::Keep { uid } => {
            tracing::debug!(%uid, "ZDS keep");
            Ok(())
        }
        meshwire_zds::Update::SnapshotSent => {
            tracing::info!(pods = supervisor.pods().len(), "ZDS snapshot received");
            Ok(())
        }
        other => {
            tracing::debug!(update = ?other, "ignoring unknown ZDS update");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{DataPlane, DataPlaneConfig, Dispatch};
    use crate::metrics::Metrics;
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::time::Duration;

    /// An "agent" that answers the proxy's hello with an add that lacks its netns fd: the
    /// proxy refuses it, counts an unreadable message and connects again.
    #[tokio::test]
    async fn a_malformed_message_from_the_agent_is_counted_and_the_proxy_reconnects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ztunnel.sock");
        let listener = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        listener.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        listener.listen(8).unwrap();
        let agent = std::thread::spawn(move || {
            for _ in 0..2 {
                let (conn, _) = listener.accept().unwrap();
                let mut hello = [std::mem::MaybeUninit::new(0u8); 1024];
                let _ = conn.recv(&mut hello);
                // An add without the netns fd that must come with it.
                let _ = conn.send(&[0x0a, 0x04, 0x0a, 0x02, b'u', b'1']);
                // The proxy answers with a NACK and closes.
                let mut buf = [std::mem::MaybeUninit::new(0u8); 1024];
                while conn.recv(&mut buf).is_ok_and(|n| n > 0) {}
            }
        });
        let metrics = Metrics::new();
        let store = Arc::new(meshwire_xds_workload::WorkloadStore::new());
        let pki = Arc::new(meshwire_svid::test_util::TestPki::new("cluster.local"));
        let certs =
            crate::tls::certs::Managed::new(pki, meshwire_svid::provider::ring(), metrics.clone());
        let dp = DataPlane::new(DataPlaneConfig::default(), metrics.clone(), store, certs);
        let supervisor = Supervisor::new(Arc::new(Dispatch(dp)), metrics.clone());
        let zds = tokio::spawn(run_zds(
            path,
            Vec::new(),
            0,
            supervisor,
            Arc::new(Readiness::default()),
        ));
        let line = "meshwire_zds_disconnects_total{reason=\"unreadable message\"} 2";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !metrics.encode().lines().any(|l| l == line) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}",
                metrics.encode()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        zds.abort();
        agent.join().unwrap();
    }
}
