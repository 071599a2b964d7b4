//! The network configuration a runtime gives the plugin on stdin, and the CNI
//! environment.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{CniError, Code};

/// Default unix socket of the agent's CNI event server.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/meshwire/cni.sock";

/// CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 6] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "0.2.0"];

/// The plugin's entry of the network configuration, with the fields the runtime adds.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct NetConf {
    /// The configuration's CNI version.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The network name.
    #[serde(default)]
    pub name: String,
    /// `meshwire-cni`.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The result of the previous plugins of the chain (absent on a first plugin).
    #[serde(rename = "prevResult")]
    pub prev_result: Option<Value>,
    /// The agent's event socket. Default [`DEFAULT_AGENT_SOCKET`].
    #[serde(default = "default_socket")]
    pub agent_socket: PathBuf,
    /// Namespaces whose pods are never reported. Default `kube-system`.
    #[serde(default = "default_excluded")]
    pub exclude_namespaces: Vec<String>,
    /// Kubeconfig used to look up the pod's namespace when the agent cannot be
    /// reached: a pod of an enrolled namespace then fails ADD (the runtime retries), a
    /// pod of another namespace starts. Without it every pod fails ADD while the agent
    /// is unreachable.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace label that enrolls, `key=value`. Default `io.cilium/mtls-enabled=true`.
    #[serde(default = "default_label")]
    pub enrollment_label: String,
    /// How long to wait for the agent, in milliseconds. Default 5000.
    #[serde(default = "default_timeout")]
    pub agent_timeout_ms: u64,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_AGENT_SOCKET)
}

fn default_excluded() -> Vec<String> {
    vec!["kube-system".to_owned()]
}

fn default_label() -> String {
    "io.cilium/mtls-enabled=true".to_owned()
}

fn default_timeout() -> u64 {
    5000
}

impl NetConf {
    /// Parses stdin.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: Self = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::Decode,
                "cannot decode the network configuration",
                e.to_string(),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("CNI version {} is not supported", conf.cni_version),
                format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        if conf.enrollment_label.split_once('=').is_none() {
            return Err(CniError::new(
                Code::InvalidConfig,
                "enrollment_label must be key=value",
                conf.enrollment_label.clone(),
            ));
        }
        Ok(conf)
    }

    /// The interface addresses of `prevResult` (`ips[].address`, CIDR notation).
    pub fn prev_ips(&self) -> Vec<IpAddr> {
        let Some(ips) = self
            .prev_result
            .as_ref()
            .and_then(|r| r.get("ips"))
            .and_then(Value::as_array)
        else {
            return Vec::new();
        };
        ips.iter()
            .filter_map(|ip| ip.get("address").and_then(Value::as_str))
            .filter_map(|cidr| cidr.split('/').next())
            .filter_map(|addr| addr.parse().ok())
            .collect()
    }

    /// The enrollment label as (key, value).
    pub fn label(&self) -> (&str, &str) {
        self.enrollment_label
            .split_once('=')
            .unwrap_or((self.enrollment_label.as_str(), ""))
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, split into key/value pairs.
    pub args: HashMap<String, String>,
}

impl Invocation {
    /// Reads the invocation from environment variables through `get`.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Self {
        let args = get("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self {
            command: get("CNI_COMMAND").unwrap_or_default(),
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").unwrap_or_default(),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args,
        }
    }

    /// A `CNI_ARGS` value.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Fails with code 4 when a variable the command needs is empty.
    pub fn require(&self, name: &'static str, value: &str) -> Result<(), CniError> {
        if value.is_empty() {
            Err(CniError::new(
                Code::InvalidEnvironment,
                format!("{name} is not set"),
                format!("CNI_COMMAND={}", self.command),
            ))
        } else {
            Ok(())
        }
    }
}
