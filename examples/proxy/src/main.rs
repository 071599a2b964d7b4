//! Example node proxy (binary `proxy`).
//!
//! Receives enrolled pods from the node agent over ZDS, opens listeners inside each pod's
//! network namespace (15001 outbound, 15006 inbound plaintext, 15008 inbound HBONE), learns
//! workloads and authorization policies over workload xDS, obtains an X.509-SVID per pod
//! identity from the CA, and carries pod-to-pod TCP in HBONE with SPIFFE identities checked on
//! both ends. See `README.md` for flags, metrics and endpoints.

mod admin;
mod config;
mod control;
mod copy;
mod dataplane;
mod enrollment;
mod error_text;
mod http;
#[path = "../../shared/http_gate.rs"]
mod http_gate;
mod metrics;
mod podnet;
mod pods;
mod readiness;
mod routing;
mod signals;
mod spire_pid;
mod splice;
#[cfg(test)]
mod test_support;
mod tls;

use std::process::ExitCode;
use std::sync::{Arc, OnceLock, Weak};

use clap::Parser;
use meshwire_svid::spire::source::{SourceConfig, SpireSource};
use meshwire_xds_workload::WorkloadStore;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::dataplane::{DataPlane, DataPlaneConfig, Dispatch};
use crate::http::Endpoint;
use crate::metrics::Metrics;
use crate::pods::Supervisor;
use crate::readiness::Readiness;

/// jemalloc instead of glibc's malloc: HTTP/2 frames are read into a fresh buffer of up to a
/// whole DATA frame (hundreds of KiB) each, which glibc serves from new mappings or trimmed
/// heap pages (a page fault per 4 KiB touched); jemalloc keeps freed pages for reuse. See
/// BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (its `malloc_conf`), so that the proxy's idle memory stays where glibc
/// had it: one arena instead of four per CPU, and freed pages returned to the kernel after
/// about a second by a background thread, also while the proxy is idle. Bulk transfers reuse
/// freed pages long before that. `_RJEM_MALLOC_CONF` in the environment still overrides them.
// SAFETY: jemalloc (built with the `_rjem_` prefix by tikv-jemalloc-sys) reads this symbol
// once, at its initialisation, as a pointer to a NUL-terminated C string: a thin pointer to
// the first byte of a static NUL-terminated string is exactly that. jemalloc's own definition
// of the symbol is weak, and no other one exists.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 =
    &b"background_thread:true,narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

fn main() -> ExitCode {
    let cli = config::Cli::parse();
    let json_logs = cli.log_format == "json";
    init_tracing(json_logs);
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("invalid configuration: {}", error_text::chain(&e));
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
            tracing::error!("proxy failed: {}", error_text::chain(&e));
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
    tokio::spawn(signals::wait_for_signal(shutdown.clone()));
    tracing::info!(
        node = %config.node_name,
        zds = %config.zds_socket.display(),
        xds = %config.xds_address,
        ca = %config.spire.as_ref().map(|s| s.admin_socket.as_str()).or(config.ca_address.as_deref()).unwrap_or("none"),
        mark = config.packet_mark,
        "proxy starting"
    );

    podnet::check_privileges(config.packet_mark)?;
    let metrics = Metrics::new();
    let readiness = Arc::new(Readiness::default());
    let crypto = meshwire_svid::provider::ring();

    // Own endpoints first, so a port conflict fails the start at once.
    let http_stop = CancellationToken::new();
    let metrics_listener = http::bind(config.metrics_address).await?;
    let readiness_listener = http::bind(config.readiness_address).await?;
    let admin_listener = http::bind(config.admin_address).await?;
    let mut servers = tokio::task::JoinSet::new();
    // 15020 and 15021 listen on all addresses: one bound for both.
    let public_gate = http_gate(&config, &metrics);
    servers.spawn(http::serve(
        metrics_listener,
        Endpoint::Metrics(metrics.clone()),
        public_gate.clone(),
        http_stop.clone(),
    ));
    servers.spawn(http::serve(
        readiness_listener,
        Endpoint::Readiness(readiness.clone()),
        public_gate,
        http_stop.clone(),
    ));

    // Control plane: over TLS, the root may appear only once the agent has started.
    let Some((xds_channel, xds_root)) = control::xds_channel(&config, &crypto, &shutdown).await?
    else {
        return stop_servers(http_stop, servers).await;
    };
    let token = control::TokenValue::parse(config.auth_token.as_deref());

    let store = Arc::new(WorkloadStore::new());
    let ads = control::ads_client(&config, xds_channel, token.as_ref(), store.clone())?;
    let synced = ads.synced();
    let xds_events = ads.events();
    let ads_task = tokio::spawn(ads.run(shutdown.clone().cancelled_owned()));
    tokio::spawn(control::log_xds_events(xds_events));

    // Workload certificates: from the SPIRE agent, or from the certificate service.
    // PID mode finds the pods' processes through the data plane, made further down.
    let dataplane_slot = Arc::new(OnceLock::<Weak<DataPlane>>::new());
    let certs: Arc<dyn tls::certs::Certificates> = match (&config.spire, &config.ca_address) {
        (Some(spire), _) => {
            let mut source_config = SourceConfig::default();
            source_config.timeout = spire.timeout;
            let source = SpireSource::connect_unix(&spire.admin_socket, source_config)?;
            tracing::info!(admin_socket = %spire.admin_socket, subject = ?spire.subject, "workload certificates from SPIRE");
            // Peers are checked against SPIRE's bundles as they arrive, not as they were
            // when the certificate was fetched.
            let roots = source.shared_bundles();
            match spire.subject {
                config::SpireSubject::Selectors => {
                    tls::certs::Managed::with_live_roots(source, crypto, metrics.clone(), roots)
                }
                config::SpireSubject::Pid => tls::certs::Managed::with_live_roots(
                    spire_pid::PidSource::new(source, dataplane_slot.clone(), spire.timeout),
                    crypto,
                    metrics.clone(),
                    roots,
                ),
            }
        }
        (None, Some(ca_address)) => {
            let ca_root = match xds_root {
                Some(pem) if config.ca_root_ca == config.xds_root_ca => pem,
                _ => match control::wait_for_root_pem(&config.ca_root_ca, &shutdown).await {
                    Some(pem) => pem,
                    None => return stop_servers(http_stop, servers).await,
                },
            };
            let ca = control::ca_client(&config, ca_address, &ca_root, token.as_ref(), &crypto)?;
            tls::certs::Managed::new(ca, crypto, metrics.clone())
        }
        (None, None) => anyhow::bail!("no certificate service and no SPIRE agent configured"),
    };

    let dataplane = DataPlane::new(
        DataPlaneConfig {
            node_name: config.node_name.clone(),
            drain_deadline: config.drain_timeout,
            original_source: config.original_source,
            hbone_limit: config.hbone_limit,
            hbone_accept_timeout: config.hbone_accept_timeout,
            strict_hbone_wait: config.strict_hbone_wait,
            pool_idle_timeout: config.pool_unused_release_timeout,
            ..DataPlaneConfig::default()
        },
        metrics.clone(),
        store.clone(),
        certs,
    );
    let _ = dataplane_slot.set(Arc::downgrade(&dataplane));
    let supervisor = Supervisor::new(Arc::new(Dispatch(dataplane.clone())), metrics.clone());

    let dump = admin::dump_fn(dataplane.clone(), supervisor.clone(), readiness.clone());
    servers.spawn(http::serve(
        admin_listener,
        Endpoint::Admin {
            dump,
            shutdown: shutdown.clone(),
        },
        http_gate(&config, &metrics),
        http_stop.clone(),
    ));

    // ZDS only after the first xDS sync, so no pod is accepted before its workload is known.
    let zds_task = tokio::spawn(enrollment::run_after_sync(
        synced,
        shutdown.clone(),
        config.zds_socket.clone(),
        config.zds_agent_uids.clone(),
        config.packet_mark,
        supervisor.clone(),
        readiness.clone(),
    ));

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

/// HTTP limits from the configuration, counting dropped connections in the metrics.
fn http_gate(config: &config::Config, metrics: &Arc<Metrics>) -> http::HttpGate {
    let metrics = metrics.clone();
    http::HttpGate::new(config.http, move |d| {
        metrics.connection_dropped("http", d.as_str());
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
