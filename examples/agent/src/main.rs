//! Example node agent: enrolls the pods of its node by namespace label, hands their network
//! namespace to the node proxy over ZDS, installs the in-pod redirection rules, serves
//! workload xDS and signs workload certificates. See `README.md`.

mod ca;
mod cli;
mod desired;
mod driver;
mod effects;
mod file_watch;
mod grpc;
#[path = "../../shared/http_gate.rs"]
mod http_gate;
mod kube;
mod leftovers;
mod metrics;
mod reconcile;
mod run;
mod safe_file;
mod source;
mod spire;
mod state;
mod status;
mod workloads;

use tracing_subscriber::EnvFilter;

use crate::cli::{Args, LogFormat};

fn main() -> std::process::ExitCode {
    let args = Args::parse_checked();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: logs written to a file stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("agent failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
