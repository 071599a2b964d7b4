//! Wiring: starts every server, runs the reconcile loop, stops cleanly on a signal.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use meshwire_svid::{CertificateService, IdentityPolicy, TrustBundleSet, TrustDomain};
use meshwire_xds_workload::AdsServer;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::ca::auth::CallerPolicy;
use crate::ca::files as ca_files;
use crate::ca::service::NodeAuthorizer;
use crate::cli::{Args, RulesPreset};
use crate::desired::{LocalPod, RemoteReady, Settings, local_desired};
use crate::effects::rules::NetnsRules;
use crate::effects::xds::{self as xds_effects, XdsPublisher};
use crate::effects::zds::ZdsChannel;
use crate::metrics::{self, Metrics};
use crate::reconcile::{Cause, Outcome, Reconciler};
use crate::state::PodStateFile;
use crate::status::{StatusReader, StatusWriter, valid_node_file_name};
use crate::watch::FileWatcher;
use crate::workloads::Cluster;

/// How often the workloads file is polled.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// First retry delay after a pass with failures; doubles up to the reconcile interval.
const RETRY_MIN: Duration = Duration::from_millis(500);
/// How long shutdown waits for servers to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn rule_set(preset: RulesPreset) -> meshwire_netns::RuleSet {
    match preset {
        RulesPreset::Istio => meshwire_netns::RuleSet::istio(),
        RulesPreset::Cilium => meshwire_netns::RuleSet::cilium(),
    }
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves when one arrives.
///
/// Installed at start-up, so a signal that arrives during the initial pass is handled (after
/// the pass, with the state file written) instead of killing the process mid-way.
fn signals() -> anyhow::Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Runs the agent until SIGTERM or SIGINT.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let stop = signals()?;
    let trust_domain = TrustDomain::new(&args.trust_domain)
        .with_context(|| format!("--trust-domain {:?}", args.trust_domain))?;
    let settings = Settings {
        node: args.node_name.clone(),
        label_key: args.label_key.clone(),
        trust_domain: args.trust_domain.clone(),
        cluster_id: args.cluster_id.clone(),
    };
    info!(
        node = %settings.node,
        trust_domain = %settings.trust_domain,
        label = %format!("{}=true", settings.label_key),
        rules = ?args.rules,
        "starting agent"
    );
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating the state directory {}", args.state_dir.display()))?;

    // Rules need iptables; say so at once rather than failing on every pod.
    let rules = rule_set(args.rules);
    let backend =
        tokio::task::spawn_blocking(|| meshwire_netns::Netfilter::system().detect_backend())
            .await
            .context("iptables detection task")?
            .context("cannot manage in-pod redirection rules")?;
    info!(backend = ?backend, "iptables found");

    let (watcher, cluster) = FileWatcher::open(&args.workloads)?;
    info!(
        file = %args.workloads.display(),
        namespaces = cluster.namespaces.len(),
        pods = cluster.pods.len(),
        policies = cluster.policies.len(),
        "workloads file loaded"
    );

    let tokens = match &args.proxy_tokens {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --proxy-tokens {}", path.display()))?;
            CallerPolicy::parse_tokens(&text)
                .map_err(|e| anyhow::anyhow!("--proxy-tokens {}: {e}", path.display()))?
        }
        None => BTreeMap::new(),
    };
    let callers = CallerPolicy {
        tokens,
        trust_loopback: args.ca_trust_loopback,
    };

    let ca = {
        let (cert, key, dir, td) = (
            args.ca_cert.clone(),
            args.ca_key.clone(),
            args.state_dir.clone(),
            trust_domain.clone(),
        );
        tokio::task::spawn_blocking(move || {
            ca_files::load_or_create(cert.as_deref(), key.as_deref(), &dir, &td)
        })
        .await
        .context("CA task")??
    };

    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let metrics_listener = metrics::bind(args.metrics_address)
        .await
        .with_context(|| format!("binding the metrics address {}", args.metrics_address))?;
    tasks.spawn(metrics::serve(
        metrics_listener,
        metrics.clone(),
        shutdown.clone(),
    ));

    let (cluster_tx, mut cluster_rx) = watch::channel(Arc::new(cluster));
    tasks.spawn(watcher.run(
        WATCH_INTERVAL,
        cluster_tx,
        metrics.clone(),
        shutdown.clone(),
    ));

    // The nodes' pod status files: read now, so the first publish already gates the pods of
    // other nodes on their nodes' reports; then followed.
    let (remote_tx, mut remote_rx, status_writer) = match args.pod_status_dir() {
        Some(dir) => {
            if !valid_node_file_name(&settings.node) {
                bail!(
                    "--node-name {:?} cannot name a pod status file; set --pod-status-dir none",
                    settings.node
                );
            }
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating the pod status directory {}", dir.display()))?;
            let mut reader = StatusReader::new(&dir);
            reader.poll();
            let remote = reader.current();
            if let RemoteReady::Gated(nodes) = &remote {
                info!(
                    dir = %dir.display(),
                    nodes = nodes.len(),
                    "pods of other nodes are HBONE once their node's status file lists them"
                );
            }
            let (tx, rx) = watch::channel(Arc::new(remote));
            tasks.spawn(reader.run(WATCH_INTERVAL, tx.clone(), shutdown.clone()));
            (tx, rx, Some(StatusWriter::new(&dir, &settings.node)))
        }
        None => {
            info!(
                "pod status files off: pods of other nodes are HBONE once their namespace is enrolled"
            );
            let (tx, rx) = watch::channel(Arc::new(RemoteReady::Ungated));
            (tx, rx, None)
        }
    };

    // xDS and the CA on one TLS gRPC port.
    let ads = AdsServer::default();
    let mut client_roots = TrustBundleSet::default();
    client_roots.insert(ca.ca.bundle());
    let tls = meshwire_svid::control_plane_server_config(
        meshwire_svid::provider::ring(),
        ca.serving_chain.clone(),
        ca.serving_key.clone_key(),
        Some((
            client_roots,
            IdentityPolicy::SameTrustDomain(trust_domain.clone()),
        )),
    )
    .context("building the gRPC TLS configuration")?;
    let grpc_listener = TcpListener::bind(args.xds_address)
        .await
        .with_context(|| format!("binding the xDS/CA address {}", args.xds_address))?;
    let authorizer = NodeAuthorizer {
        cluster: cluster_rx.clone(),
        settings: settings.clone(),
        callers,
        metrics: metrics.clone(),
    };
    let cert_service = CertificateService::new(Arc::new(ca.ca), authorizer);
    {
        let ads = ads.clone();
        let shutdown = shutdown.clone();
        let incoming = meshwire_svid::tls_incoming(grpc_listener, Arc::new(tls));
        info!(address = %args.xds_address, root = %ca.root_file.display(), "serving xDS and the CA over TLS");
        tasks.spawn(async move {
            let stop = {
                let ads = ads.clone();
                async move {
                    shutdown.cancelled().await;
                    // Ends the open xDS streams and refuses new ones, so a proxy that
                    // reconnects at once cannot hold the graceful shutdown open.
                    ads.close();
                }
            };
            let served = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(ads.service())
                .add_service(cert_service.into_server())
                .serve_with_incoming_shutdown(incoming, stop)
                .await;
            if let Err(e) = served {
                error!(error = %e, "xDS/CA server failed");
            }
        });
    }
    if let Some(path) = &args.xds_unix_socket {
        let listener = bind_unix(path)?;
        info!(path = %path.display(), "serving xDS on a unix socket (plaintext)");
        let ads = ads.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = ads.serve_unix(listener, shutdown.cancelled_owned()).await {
                error!(error = %e, "xDS unix socket server failed");
            }
        });
    }
    tasks.spawn(xds_effects::follow_events(
        ads.events(),
        metrics.clone(),
        shutdown.clone(),
    ));

    // ZDS: hold snapshots until the cache is seeded from the first pass, so a proxy that
    // reconnects to a restarted agent does not drop its pods.
    let zds_server = meshwire_zds::Server::bind(
        meshwire_zds::ServerConfig::default()
            .path(&args.zds_socket)
            .wait_for_seed(true)
            .clone(),
    )
    .await
    .context("starting the ZDS server")?;
    let zds_server = Arc::new(zds_server);
    let zds = ZdsChannel::new(zds_server.clone());
    let wake = Arc::new(Notify::new());
    tasks.spawn(zds.clone().follow_events(
        zds_server.subscribe(),
        metrics.clone(),
        wake.clone(),
        shutdown.clone(),
    ));

    let mut reconciler = Reconciler::new(
        zds,
        NetnsRules::new(rules),
        XdsPublisher::new(ads, settings.clone(), remote_rx.clone(), status_writer),
    );
    let mut state_file = PodStateFile::new(&args.state_dir);
    let restored = state_file.load();
    if !restored.is_empty() {
        info!(
            pods = restored.len(),
            "restoring pods enrolled by a previous run"
        );
    }
    reconciler.restore(restored);

    let mut pass = Pass {
        settings: &settings,
        metrics: &metrics,
        state_file: &mut state_file,
        last_skipped: Vec::new(),
    };
    let cluster = cluster_rx.borrow_and_update().clone();
    let outcome = pass.run(&mut reconciler, &cluster, false).await;
    zds_server.mark_seeded().await;
    info!("initial pass done; proxies get their snapshot now");

    let mut tick = tokio::time::interval(args.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let mut retry = next_retry(&outcome, None, args.reconcile_interval);
    tokio::pin!(stop);
    let reason = loop {
        let sleep_retry = async {
            match retry {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let periodic = tokio::select! {
            s = &mut stop => break s,
            r = cluster_rx.changed() => {
                if r.is_err() {
                    bail!("workloads watcher stopped");
                }
                false
            }
            _ = tick.tick() => true,
            () = wake.notified() => false,
            // The sender lives in this function: this never fails.
            _ = remote_rx.changed() => false,
            () = sleep_retry => false,
        };
        let cluster = cluster_rx.borrow_and_update().clone();
        let outcome = pass.run(&mut reconciler, &cluster, periodic).await;
        retry = next_retry(&outcome, retry, args.reconcile_interval);
    };

    info!(
        signal = reason,
        "shutting down; redirection rules stay in place so pods keep working"
    );
    if let Err(e) = pass.state_file.store(reconciler.with_rules()) {
        warn!(error = %e, "cannot save the pod state file");
    }
    shutdown.cancel();
    drop(reconciler);
    drop(remote_tx);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("some servers did not stop in time");
    }
    match Arc::try_unwrap(zds_server) {
        Ok(server) => server.shutdown().await,
        Err(server) => drop(server),
    }
    info!("agent stopped");
    Ok(())
}

/// When to run again after a pass: soon (with back-off) if something failed.
///
/// A missing proxy is not retried on a timer: its connection wakes the loop.
fn next_retry(outcome: &Outcome, previous: Option<Duration>, max: Duration) -> Option<Duration> {
    if outcome
        .failures
        .iter()
        .all(|(_, e)| e.cause == Cause::ProxyUnavailable)
    {
        return None;
    }
    Some(previous.map_or(RETRY_MIN, |d| (d * 2).min(max)))
}

/// One reconcile pass with its bookkeeping (logs, metrics, state file).
struct Pass<'a> {
    settings: &'a Settings,
    metrics: &'a Metrics,
    state_file: &'a mut PodStateFile,
    last_skipped: Vec<(String, String)>,
}

impl Pass<'_> {
    async fn run<Z, R, P>(
        &mut self,
        reconciler: &mut Reconciler<Z, R, P>,
        cluster: &Cluster,
        periodic: bool,
    ) -> Outcome
    where
        Z: crate::reconcile::ProxyChannel,
        R: crate::reconcile::RuleInstaller,
        P: crate::reconcile::Publisher,
    {
        let desired = local_desired(cluster, self.settings);
        if desired.skipped != self.last_skipped {
            for (pod, reason) in &desired.skipped {
                warn!(%pod, %reason, "pod of an enrolled namespace cannot be enrolled");
            }
            self.last_skipped.clone_from(&desired.skipped);
        }
        let outcome = reconciler.reconcile(cluster, &desired.pods, periodic).await;
        self.metrics.record(&outcome, reconciler.published());
        let with_rules: Vec<LocalPod> = reconciler.with_rules();
        if let Err(e) = self.state_file.store(with_rules) {
            warn!(error = %e, "cannot save the pod state file");
        }
        outcome
    }
}

fn bind_unix(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(_) => {}
    }
    UnixListener::bind(path)
        .with_context(|| format!("binding the xDS unix socket {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::EffectError;

    #[test]
    fn retries_back_off_and_stop_when_clean() {
        let max = Duration::from_secs(10);
        let failed = Outcome {
            failures: vec![("a".into(), EffectError::new(Cause::RulesInstall, "x"))],
            ..Outcome::default()
        };
        assert_eq!(next_retry(&Outcome::default(), Some(RETRY_MIN), max), None);
        let mut d = next_retry(&failed, None, max);
        assert_eq!(d, Some(RETRY_MIN));
        for _ in 0..10 {
            d = next_retry(&failed, d, max);
        }
        assert_eq!(d, Some(max));
        let no_proxy = Outcome {
            failures: vec![("a".into(), EffectError::new(Cause::ProxyUnavailable, "x"))],
            ..Outcome::default()
        };
        assert_eq!(
            next_retry(&no_proxy, d, max),
            None,
            "a connecting proxy wakes the loop"
        );
    }
}
