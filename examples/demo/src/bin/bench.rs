//! The node-level benchmark: the demo's two-node cluster with the real agent and proxy,
//! measured with the benchmark's own traffic generator. Prints a table and JSON.
//!
//! Run it as root from the repository: `sudo cargo run --release -p demo --bin bench`
//! (a quick round), or with `-- --runs 5 --seconds 8` for the full measurement.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use demo::bench::{self, Options, Round, Servers, report};
use demo::launch::step;
use demo::{Cluster, ClusterOptions, Role};

const USAGE: &str = "usage: bench [--runs N] [--seconds S] [--tunnels N] [--json FILE]
  --runs N      rounds over every path; the report shows medians (default 1)
  --seconds S   length of each throughput measurement (default 2; latency and
                each connection rate take half of it)
  --tunnels N   idle tunnels held open for the memory figure (default 1000)
  --json FILE   write the JSON report to FILE instead of standard output
  --proxy-env K=V  extra environment of both proxies (repeatable), for experiments";

#[derive(Debug)]
struct Args {
    runs: usize,
    opts: Options,
    json: Option<String>,
    proxy_env: Vec<(String, String)>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        runs: 1,
        opts: Options::default(),
        json: None,
        proxy_env: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--runs" => args.runs = value()?.parse().context("--runs")?,
            "--seconds" => {
                args.opts.duration =
                    Duration::from_secs_f64(value()?.parse().context("--seconds")?);
            }
            "--tunnels" => args.opts.idle_tunnels = value()?.parse().context("--tunnels")?,
            "--json" => args.json = Some(value()?),
            "--proxy-env" => {
                let kv = value()?;
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--proxy-env {kv}: expected KEY=VALUE"))?;
                args.proxy_env.push((k.to_owned(), v.to_owned()));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if args.runs == 0 || args.opts.duration.is_zero() {
        bail!("--runs and --seconds must be positive");
    }
    Ok(args)
}

fn main() {
    demo::launch::exit_with("bench", run());
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let binaries = demo::launch::prepare("benchmark")?;
    step("building two nodes and five pods, starting the agents and proxies");
    let mut cluster = Cluster::start(ClusterOptions {
        binaries,
        log: "info".into(),
        reconcile_interval: Duration::from_millis(500),
        rules: "istio",
        proxy_env: args.proxy_env.clone(),
        spire: false,
        source: demo::Source::File,
    })?;
    let _servers = [
        Servers::start(cluster.pod(Role::ServerFar))?,
        Servers::start(cluster.pod(Role::Legacy))?,
    ];
    let mut rounds: Vec<Round> = Vec::new();
    for i in 0..args.runs {
        step(&format!(
            "round {}/{}: passthrough, HBONE, memory, HBONE with a cold pool (node-1's proxy restarted), then direct ({:?} per throughput figure)",
            i + 1,
            args.runs,
            args.opts.duration
        ));
        rounds.push(
            bench::measure(&mut cluster, &args.opts)
                .with_context(|| format!("round {} (logs: {})", i + 1, cluster.logs_hint()))?,
        );
    }
    print!("{}", report::table(&rounds));
    let json = serde_json::to_string_pretty(&report::json(&rounds))?;
    match &args.json {
        Some(path) => {
            std::fs::write(path, json + "\n").with_context(|| format!("writing {path}"))?
        }
        None => println!("{json}"),
    }
    drop(cluster);
    Ok(())
}
