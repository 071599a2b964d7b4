//! Adding the plugin to a node's CNI configuration: the first `.conflist`/`.conf` file
//! (by name) in the configuration directory gets our entry at the end of its plugin
//! chain, written atomically (a new file renamed over the old one).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The `type` of our chain entry.
pub const PLUGIN_TYPE: &str = "meshwire-cni";

/// Why the configuration could not be changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// No `.conf`/`.conflist` file in the directory (the primary network plugin has not
    /// written its configuration yet).
    #[error("no CNI network configuration in {0}")]
    NoConfig(PathBuf),
    /// A file could not be read, written or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a CNI configuration.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The configuration file a runtime uses: the first `.conflist`, `.conf` or `.json` by name.
pub fn primary_config(conf_dir: &Path) -> Result<PathBuf, InstallError> {
    let mut files: Vec<PathBuf> = fs::read_dir(conf_dir)
        .map_err(io(conf_dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoConfig(conf_dir.to_owned()))
}

/// Puts `entry` (its `type` must be [`PLUGIN_TYPE`]) at the end of the primary
/// configuration's chain, replacing an earlier entry of ours. A single-plugin `.conf`
/// becomes a `.conflist` of the same name. Returns the file written.
pub fn install(conf_dir: &Path, entry: Value) -> Result<PathBuf, InstallError> {
    let path = primary_config(conf_dir)?;
    let (mut list, is_list) = read_list(&path)?;
    let plugins = plugins_mut(&mut list, &path)?;
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    plugins.push(entry);
    let target = if is_list {
        path.clone()
    } else {
        path.with_extension("conflist")
    };
    write_atomic(&target, &list)?;
    if target != path {
        fs::remove_file(&path).map_err(io(&path))?;
    }
    Ok(target)
}

/// Removes our entry from the primary configuration, if present.
pub fn uninstall(conf_dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    let path = primary_config(conf_dir)?;
    let (mut list, is_list) = read_list(&path)?;
    if !is_list {
        return Ok(None);
    }
    let plugins = plugins_mut(&mut list, &path)?;
    let before = plugins.len();
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    if plugins.len() == before {
        return Ok(None);
    }
    write_atomic(&path, &list)?;
    Ok(Some(path))
}

/// Reads a configuration as a list (a `.conf` is wrapped into one).
fn read_list(path: &Path) -> Result<(Value, bool), InstallError> {
    let text = fs::read(path).map_err(io(path))?;
    let value: Value = serde_json::from_slice(&text).map_err(|e| InstallError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if value.get("plugins").is_some() {
        return Ok((value, true));
    }
    let version = value
        .get("cniVersion")
        .cloned()
        .unwrap_or_else(|| json!("0.3.1"));
    let name = value
        .get("name")
        .cloned()
        .unwrap_or_else(|| json!("k8s-pod-network"));
    Ok((
        json!({ "cniVersion": version, "name": name, "plugins": [value] }),
        false,
    ))
}

fn plugins_mut<'a>(list: &'a mut Value, path: &Path) -> Result<&'a mut Vec<Value>, InstallError> {
    list.get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| InstallError::Invalid {
            path: path.to_owned(),
            reason: "`plugins` is not a list".to_owned(),
        })
}

/// Writes `value` to a new file beside `path` and renames it over `path`.
fn write_atomic(path: &Path, value: &Value) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = dir.join(format!(
        ".{}.meshwire-tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cni"),
        std::process::id()
    ));
    let text = serde_json::to_vec_pretty(value).map_err(|e| InstallError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(&text).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// Copies the plugin binary `from` into `bin_dir/meshwire-cni` atomically.
pub fn install_binary(from: &Path, bin_dir: &Path) -> Result<PathBuf, InstallError> {
    let target = bin_dir.join(PLUGIN_TYPE);
    let tmp = bin_dir.join(format!(".{PLUGIN_TYPE}.tmp-{}", std::process::id()));
    fs::copy(from, &tmp).map_err(io(&tmp))?;
    fs::rename(&tmp, &target).map_err(io(&target))?;
    Ok(target)
}
