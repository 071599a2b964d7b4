//! `meshwire-cni`: the chained CNI plugin (run by a container runtime), and
//! `meshwire-cni install|uninstall` (run by the agent's DaemonSet at start-up).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use meshwire_cni::conf::{DEFAULT_AGENT_SOCKET, Invocation};
use meshwire_cni::error::{CniError, Code};
use meshwire_cni::install::{self, PLUGIN_TYPE};
use serde_json::json;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("install") => admin(install_cmd(&args[1..])),
        Some("uninstall") => admin(uninstall_cmd(&args[1..])),
        _ => plugin(),
    }
}

/// The CNI plugin: environment and stdin in, result or error JSON out.
fn plugin() -> ExitCode {
    let inv = Invocation::from_env(|k| std::env::var(k).ok());
    let mut stdin = Vec::new();
    let result = std::io::stdin()
        .take(1 << 20)
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::new(Code::Io, "cannot read stdin", e.to_string()))
        .and_then(|_| meshwire_cni::cmd::run(&inv, &stdin));
    match result {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(err) => {
            let version = serde_json::from_slice::<serde_json::Value>(&stdin)
                .ok()
                .and_then(|v| {
                    v.get("cniVersion")
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "1.1.0".to_owned());
            println!("{}", err.to_json(&version));
            eprintln!("meshwire-cni: {err}");
            ExitCode::from(u8::try_from(err.code.number()).unwrap_or(1))
        }
    }
}

fn admin(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshwire-cni: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads `--name value` options.
fn options(args: &[String]) -> Result<std::collections::HashMap<String, String>, String> {
    let mut out = std::collections::HashMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {flag}"))?;
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        out.insert(name.to_owned(), value.clone());
    }
    Ok(out)
}

fn install_cmd(args: &[String]) -> Result<String, String> {
    let opts = options(args)?;
    for key in opts.keys() {
        if ![
            "conf-dir",
            "bin-dir",
            "agent-socket",
            "kubeconfig",
            "enrollment-label",
        ]
        .contains(&key.as_str())
        {
            return Err(format!("unknown option --{key}"));
        }
    }
    let conf_dir = PathBuf::from(
        opts.get("conf-dir")
            .map_or("/etc/cni/net.d", String::as_str),
    );
    let bin_dir = PathBuf::from(opts.get("bin-dir").map_or("/opt/cni/bin", String::as_str));
    let exe = std::env::current_exe().map_err(|e| format!("own binary: {e}"))?;
    let bin = install::install_binary(&exe, &bin_dir).map_err(|e| e.to_string())?;
    let mut entry = json!({
        "type": PLUGIN_TYPE,
        "agent_socket": opts.get("agent-socket").map_or(DEFAULT_AGENT_SOCKET, String::as_str),
    });
    if let Some(k) = opts.get("kubeconfig") {
        entry["kubeconfig"] = json!(k);
    }
    if let Some(l) = opts.get("enrollment-label") {
        entry["enrollment_label"] = json!(l);
    }
    let conf = install::install(&conf_dir, entry).map_err(|e| e.to_string())?;
    Ok(format!(
        "installed {} and added {PLUGIN_TYPE} to {}",
        bin.display(),
        conf.display()
    ))
}

fn uninstall_cmd(args: &[String]) -> Result<String, String> {
    let opts = options(args)?;
    let conf_dir = PathBuf::from(
        opts.get("conf-dir")
            .map_or("/etc/cni/net.d", String::as_str),
    );
    match install::uninstall(&conf_dir).map_err(|e| e.to_string())? {
        Some(path) => Ok(format!("removed {PLUGIN_TYPE} from {}", path.display())),
        None => Ok(format!("{PLUGIN_TYPE} was not configured")),
    }
}
