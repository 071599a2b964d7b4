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
    let client =
        meshwire_zds::client::Client::new(zds_config, move |update: meshwire_zds::Update| {
            let supervisor = supervisor.clone();
            async move {
                apply_zds(&supervisor, mark, update)
                    .await
                    .map_err(|e| Nack(format!("{e:#}")))
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
