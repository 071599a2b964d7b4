//! Wiring: starts every server, runs the reconcile loop, stops cleanly on a signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshwire_svid::service::server::CertificateService;
use meshwire_svid::{SpiffeId, TrustDomain};
use meshwire_xds_workload::ads::server::AdsServer;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ca::auth::CallerPolicy;
use crate::ca::authn::Authenticator;
use crate::ca::files as ca_files;
use crate::ca::service::NodeAuthorizer;
use crate::ca::tokenreview::TokenReviewer;
use crate::cli::{Args, CaMode};
use crate::desired::Settings;
use crate::driver::{Driver, Inputs};
use crate::effects::rules::NetnsRules;
use crate::effects::xds::{self as xds_effects, XdsPublisher};
use crate::effects::zds::ZdsChannel;
use crate::grpc;
use crate::leftovers;
use crate::metrics::{self, Metrics};
use crate::reconcile::Reconciler;
use crate::source;
use crate::state::PodStateFile;

/// How long shutdown waits for servers to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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

/// The reviewer of proxy tokens of the Kubernetes mode.
fn reviewer(client: kube::Client, args: &Args) -> TokenReviewer {
    let trusted = &args.ca_trusted_node_accounts;
    if trusted.is_empty() {
        warn!("CA_TRUSTED_NODE_ACCOUNTS is empty: proxies' service-account tokens are refused");
    } else {
        info!(audiences = ?args.token_audiences, accounts = ?trusted, "proxies authenticate with reviewed service-account tokens");
    }
    TokenReviewer::new(client, args.token_audiences.clone(), trusted.clone())
}

/// Runs the agent until SIGTERM or SIGINT.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut stop = std::pin::pin!(signals()?);
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
    let rules = args.rules.rule_set();
    let backend =
        tokio::task::spawn_blocking(|| meshwire_netns::rules::Netfilter::system().detect_backend())
            .await
            .context("iptables detection task")?
            .context("cannot manage in-pod redirection rules")?;
    info!(backend = ?backend, "iptables found");

    // The built-in CA with the policy of its callers, unless turned off (SPIRE issues the
    // certificates): then no key is generated, read or written.
    let builtin = match args.ca {
        CaMode::Builtin => {
            let callers = CallerPolicy::load(args.proxy_tokens.as_deref(), args.trust_loopback())?;
            let (cert, key, dir, td) = (
                args.ca_cert.clone(),
                args.ca_key.clone(),
                args.state_dir.clone(),
                trust_domain.clone(),
            );
            let ca = tokio::task::spawn_blocking(move || {
                ca_files::load_or_create(cert.as_deref(), key.as_deref(), &dir, &td)
            })
            .await
            .context("CA task")??;
            Some((ca, callers))
        }
        CaMode::None => {
            if !args.ca_trusted_node_accounts.is_empty() {
                warn!(
                    "CA_TRUSTED_NODE_ACCOUNTS is unused with --ca none: no CA or TLS endpoint takes tokens, xDS is served only on the unix socket"
                );
            }
            // A root left by an earlier run with the CA on would have TLS-configured
            // proxies trust it and wait for an endpoint that no longer exists.
            let stale = args.state_dir.join(crate::ca::files::ROOT_CERT_FILE);
            match std::fs::remove_file(&stale) {
                Ok(()) => {
                    warn!(file = %stale.display(), "removed the root certificate of an earlier run with the built-in CA");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("removing the stale root certificate {}", stale.display())
                    });
                }
            }
            info!("built-in CA off: no CA key, no root certificate, no TLS endpoint");
            None
        }
    };

    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let metrics_listener = metrics::bind(args.metrics_address)
        .await
        .with_context(|| format!("binding the metrics address {}", args.metrics_address))?;
    let gate = crate::http_gate::HttpGate::new(
        crate::http_gate::HttpLimits {
            max_connections: args.http_max_connections,
            header_read_timeout: args.http_header_read_timeout,
        },
        |d| tracing::debug!(reason = d.as_str(), "metrics connection dropped"),
    );
    tasks.spawn(metrics::serve(
        metrics_listener,
        metrics.clone(),
        gate,
        shutdown.clone(),
    ));

    let mut state_file = PodStateFile::new(&args.state_dir);
    let restored = state_file.load();

    // The workload source; a Kubernetes source waits for the API server's lists, which a
    // signal may interrupt.
    let opened = tokio::select! {
        opened = source::open(&args, &settings, &restored, &metrics, &mut tasks, &shutdown) => opened?,
        signal = stop.as_mut() => {
            info!(signal, "stopped before the workload source was ready");
            shutdown.cancel();
            return Ok(());
        }
    };
    let mut cluster_rx = opened.cluster;
    if let Some(server_socket) = &args.spire_server_socket {
        let parent = match &args.spire_parent_id {
            Some(p) => SpiffeId::new(p).with_context(|| format!("--spire-parent-id {p:?}"))?,
            None => SpiffeId::new(&format!("spiffe://{trust_domain}/ztunnel"))?,
        };
        let role = crate::spire::RegistrarRole {
            server_socket: server_socket.clone(),
            parent,
            trust_domain: trust_domain.clone(),
            label_key: settings.label_key.clone(),
            timeout: args.spire_timeout,
            interval: args.reconcile_interval,
        };
        tasks.spawn(crate::spire::run(
            role,
            cluster_rx.clone(),
            shutdown.clone(),
        ));
    }
    let remote_rx = opened.remote;

    // xDS and the CA on one TLS gRPC port, when the agent has a CA.
    let ads = AdsServer::default();
    if let Some((ca, callers)) = builtin {
        let tls = grpc::tls_config(&ca, &trust_domain)?;
        let grpc_listener = TcpListener::bind(args.xds_address)
            .await
            .with_context(|| format!("binding the xDS/CA address {}", args.xds_address))?;
        // xDS admits the callers the CA recognises as node proxies.
        let authenticator = Arc::new(Authenticator {
            policy: callers,
            reviewer: opened
                .client
                .clone()
                .map(|client| reviewer(client.0, &args)),
            settings: settings.clone(),
            metrics: metrics.clone(),
        });
        let authorizer = NodeAuthorizer {
            cluster: cluster_rx.clone(),
            authenticator: authenticator.clone(),
        };
        let cert_service = CertificateService::new(Arc::new(ca.ca), authorizer);
        metrics.ca_requests.watch(cert_service.stats());
        info!(address = %args.xds_address, root = %ca.root_file.display(), "serving xDS and the CA over TLS");
        tasks.spawn(grpc::serve_tls(
            grpc_listener,
            tls,
            ads.clone(),
            authenticator,
            cert_service,
            shutdown.clone(),
        ));
    }
    if let Some(path) = &args.xds_unix_socket {
        let listener = grpc::bind_unix(path)?;
        info!(path = %path.display(), "serving xDS on a unix socket (plaintext, mode 0600: its owner only)");
        tasks.spawn(grpc::serve_unix(listener, ads.clone(), shutdown.clone()));
    }
    tasks.spawn(xds_effects::follow_events(
        ads.events(),
        metrics.clone(),
        shutdown.clone(),
    ));

    // ZDS: hold snapshots until the cache is seeded from the first pass, so a proxy that
    // reconnects to a restarted agent does not drop its pods.
    let mut zds_config = meshwire_zds::server::ServerConfig::default();
    zds_config.path = args.zds_socket.clone();
    zds_config.wait_for_seed = true;
    let zds_server = meshwire_zds::server::Server::bind(zds_config)
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

    let netns_rules = NetnsRules::new(rules);
    if !restored.is_empty() {
        info!(
            pods = restored.len(),
            "restoring pods enrolled by a previous run"
        );
    }
    // Pods that kept rules the state file does not know of (it was lost): the first pass
    // removes them, before any proxy gets its snapshot.
    let leftovers = {
        let cluster = cluster_rx.borrow().clone();
        leftovers::find(&cluster, &settings, &restored, &netns_rules).await
    };
    let mut reconciler = Reconciler::new(
        zds,
        netns_rules,
        XdsPublisher::new(ads, settings.clone(), remote_rx.clone(), opened.report),
    );
    reconciler.restore(restored.into_iter().chain(leftovers));

    let mut driver = Driver::new(
        reconciler,
        settings,
        metrics,
        state_file,
        args.reconcile_interval,
    );
    let cluster = cluster_rx.borrow_and_update().clone();
    let failures = driver.failures();
    let first = driver.pass(&cluster, false).await;
    zds_server.mark_seeded().await;
    info!("initial pass done; proxies get their snapshot now");
    if let Some(cni) = opened.cni {
        tasks.spawn(cni.serve(failures, shutdown.clone()));
    }

    let inputs = Inputs {
        cluster: cluster_rx,
        remote: remote_rx,
        proxy_answered: wake,
    };
    let reason = driver.run_until(inputs, &first, stop).await?;
    info!(
        signal = reason,
        "shutting down; redirection rules stay in place so pods keep working"
    );
    shutdown.cancel();
    drop(opened.keep);
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
