//! Example node proxy (binary `proxy`).
//!
//! Receives enrolled pods from the node agent over ZDS, opens listeners inside each pod's
//! network namespace (15001 outbound, 15006 inbound plaintext, 15008 inbound HBONE), learns
//! workloads and authorization policies over workload xDS, obtains an X.509-SVID per pod
//! identity from the CA, and carries pod-to-pod TCP in HBONE with SPIFFE identities checked on
//! both ends. See `README.md` for flags, metrics and endpoints.

mod certs;
mod config;
mod control;
mod copy;
mod dataplane;
mod http;
mod metrics;
mod podnet;
mod pods;
mod routing;
#[cfg(test)]
mod testutil;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use meshwire_xds_workload::WorkloadStore;
use meshwire_xds_workload::ads::client::{AdsClient, NodeInfo, StoreHandler};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::dataplane::{DataPlane, DataPlaneConfig, Dispatch};
use crate::http::{Endpoint, Readiness};
use crate::metrics::Metrics;
use crate::pods::{PodInfo, Supervisor};

fn main() -> ExitCode {
    let cli = config::Cli::parse();
    let json_logs = cli.log_format == "json";
    init_tracing(json_logs);
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("invalid configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("proxy-worker")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("proxy failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn run(config: config::Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    tracing::info!(
        node = %config.node_name,
        zds = %config.zds_socket.display(),
        xds = %config.xds_address,
        ca = %config.ca_address,
        mark = config.packet_mark,
        "proxy starting"
    );

    check_privileges(config.packet_mark)?;
    let metrics = Metrics::new();
    let readiness = Arc::new(Readiness::default());
    let crypto = meshwire_svid::provider::ring();

    // Own endpoints first, so a port conflict fails the start at once.
    let http_stop = CancellationToken::new();
    let metrics_listener = http::bind(config.metrics_address).await?;
    let readiness_listener = http::bind(config.readiness_address).await?;
    let admin_listener = http::bind(config.admin_address).await?;
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(http::serve(
        metrics_listener,
        Endpoint::Metrics(metrics.clone()),
        http_stop.clone(),
    ));
    servers.spawn(http::serve(
        readiness_listener,
        Endpoint::Readiness(readiness.clone()),
        http_stop.clone(),
    ));

    // Control plane: the root may appear only once the agent has started.
    let Some(xds_root) = control::wait_for_root_pem(&config.xds_root_ca, &shutdown).await else {
        return stop_servers(http_stop, servers).await;
    };
    let ca_root = if config.ca_root_ca == config.xds_root_ca {
        xds_root.clone()
    } else {
        match control::wait_for_root_pem(&config.ca_root_ca, &shutdown).await {
            Some(pem) => pem,
            None => return stop_servers(http_stop, servers).await,
        }
    };
    let token = control::TokenValue::parse(config.auth_token.as_deref());

    let store = Arc::new(WorkloadStore::new());
    let mut xds_config = meshwire_xds_workload::ads::client::ClientConfig::default();
    xds_config.node = NodeInfo::proxy(
        config.instance_ip,
        &config.pod_name,
        &config.pod_namespace,
        &config.node_name,
    )
    .with_metadata("CLUSTER_ID", config.cluster_id.as_str());
    xds_config.cluster_id = Some(config.cluster_id.clone());
    xds_config.token = token.as_ref().map(control::TokenValue::for_xds);
    let xds_channel = control::channel(&config.xds_address, &xds_root, crypto.clone())?;
    let ads = AdsClient::new(xds_config, xds_channel, StoreHandler::new(store.clone()))
        .map_err(|e| anyhow::anyhow!("xDS client: {e}"))?;
    let mut synced = ads.synced();
    let mut xds_events = ads.events();
    let ads_task = tokio::spawn(ads.run(shutdown.clone().cancelled_owned()));
    tokio::spawn(async move {
        use meshwire_xds_workload::ads::client::ClientEvent;
        while let Ok(event) = xds_events.recv().await {
            match event {
                ClientEvent::Connected => tracing::info!("xDS stream connected"),
                ClientEvent::Disconnected {
                    reason, retry_in, ..
                } => {
                    tracing::warn!(%reason, retry_in_ms = retry_in.as_millis() as u64, "xDS stream ended");
                }
                ClientEvent::Applied {
                    type_url,
                    resources,
                    removed,
                    rejected,
                    ..
                } => {
                    tracing::debug!(%type_url, resources, removed, rejected = rejected.len(), "xDS response applied");
                    for r in rejected {
                        tracing::warn!(rejection = ?r, "xDS resource rejected");
                    }
                }
                _ => {}
            }
        }
    });

    let ca_channel = control::channel(&config.ca_address, &ca_root, crypto.clone())?;
    let mut ca_config = meshwire_svid::CaClientConfig::default();
    ca_config
        .cluster_id(config.cluster_id.clone())
        .ttl(config.secret_ttl)
        .impersonate(true);
    if let Some(t) = &token {
        ca_config.token(t.for_ca());
    }
    let certs = certs::Managed::new(
        meshwire_svid::CaClient::new(ca_channel, ca_config),
        metrics.clone(),
    );

    let dataplane = DataPlane::new(
        DataPlaneConfig {
            node_name: config.node_name.clone(),
            drain_deadline: config.drain_timeout,
            original_source: config.original_source,
            ..DataPlaneConfig::default()
        },
        metrics.clone(),
        store.clone(),
        certs,
        crypto,
    );
    let supervisor = Supervisor::new(Arc::new(Dispatch(dataplane.clone())), metrics.clone());

    let dump: http::DumpFn = {
        let dataplane = dataplane.clone();
        let supervisor = supervisor.clone();
        let readiness = readiness.clone();
        Arc::new(move || {
            let mut v = dataplane.dump(&supervisor.pods());
            v["ready"] = serde_json::json!({
                "xds_synced": readiness.xds_synced(),
                "zds_snapshot": readiness.zds_snapshot(),
            });
            v
        })
    };
    servers.spawn(http::serve(
        admin_listener,
        Endpoint::Admin {
            dump,
            shutdown: shutdown.clone(),
        },
        http_stop.clone(),
    ));

    // ZDS only after the first xDS sync, so no pod is accepted before its workload is known.
    let zds_task = {
        let shutdown = shutdown.clone();
        let readiness = readiness.clone();
        let supervisor = supervisor.clone();
        let socket = config.zds_socket.clone();
        let mark = config.packet_mark;
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => return,
                ok = synced.wait() => if !ok { return },
            }
            readiness.set_xds_synced(true);
            tracing::info!("xDS synced, connecting to ZDS");
            run_zds(socket, mark, supervisor, readiness).await;
        })
    };

    shutdown.cancelled().await;
    tracing::info!(
        grace_ms = config.drain_timeout.as_millis() as u64,
        "draining"
    );
    readiness.set_zds_snapshot(false);
    zds_task.abort();
    let _ = zds_task.await;
    supervisor.shutdown(config.drain_timeout).await;
    let _ = ads_task.await;
    stop_servers(http_stop, servers).await?;
    tracing::info!("proxy stopped");
    Ok(())
}

/// Fails early, with a clear message, when the proxy cannot mark sockets (it would otherwise
/// accept pods and then fail every connection).
fn check_privileges(mark: u32) -> anyhow::Result<()> {
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    probe.set_mark(mark).map_err(|e| {
        anyhow::anyhow!(
            "cannot set SO_MARK on sockets ({e}); the proxy needs CAP_NET_ADMIN and \
             CAP_SYS_ADMIN (run it as root)"
        )
    })
}

async fn stop_servers(
    stop: CancellationToken,
    mut servers: tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    stop.cancel();
    while servers.join_next().await.is_some() {}
    Ok(())
}

/// The NACK text of a failed ZDS update.
#[derive(Debug)]
struct Nack(String);

impl std::fmt::Display for Nack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs the ZDS client: every add opens the pod's listeners before it is acknowledged.
async fn run_zds(
    socket: std::path::PathBuf,
    mark: u32,
    supervisor: Arc<Supervisor>,
    readiness: Arc<Readiness>,
) {
    let mut zds_config = meshwire_zds::client::ClientConfig::default();
    zds_config.path = socket;
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
    match client.run().await {
        Ok(never) => match never {},
        Err(e) => tracing::error!(
            error = %e,
            "ZDS client stopped for good: pods already held keep being served, but no pod is \
             added or removed and the proxy stays not ready until it is restarted"
        ),
    }
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
                .add(info, Arc::new(podnet::PodNamespace::new(ns, mark)))
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

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
        () = shutdown.cancelled() => return,
    }
    shutdown.cancel();
}
