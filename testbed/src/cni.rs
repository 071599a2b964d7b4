//! A container runtime's side of CNI, for tests: runs a network configuration list's
//! plugins in order, exactly as a runtime invokes them (CNI 1.x: `CNI_*` environment,
//! the plugin's configuration on stdin with `name`, `cniVersion` and `prevResult`), so
//! real plugins (Debian's `containernetworking-plugins`) and ours run as on a node.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::error::Error;
use crate::namespace::Namespace;

/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const DEBIAN_PLUGIN_DIR: &str = "/usr/lib/cni";

/// A plugin that exited non-zero, with the CNI error it printed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PluginFailure {
    /// The plugin's `type`.
    pub plugin: String,
    /// Its exit code.
    pub exit: Option<i32>,
    /// The error JSON it printed (`code`, `msg`, `details`), or `Null` if none.
    pub error: Value,
    /// Its standard error.
    pub stderr: String,
}

impl PluginFailure {
    /// The CNI error code, if it printed one.
    pub fn code(&self) -> Option<u64> {
        self.error.get("code").and_then(Value::as_u64)
    }
}

/// One pod sandbox's attachment: what a runtime passes to every plugin.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` pairs (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID` …).
    pub args: Vec<(String, String)>,
}

impl Attachment {
    /// A Kubernetes pod's attachment as containerd passes it (`IgnoreUnknown=1`,
    /// `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_INFRA_CONTAINER_ID`, `K8S_POD_UID`).
    pub fn pod(container_id: &str, netns: &Path, namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            container_id: container_id.to_owned(),
            netns: netns.to_owned(),
            ifname: "eth0".to_owned(),
            args: vec![
                ("IgnoreUnknown".to_owned(), "1".to_owned()),
                ("K8S_POD_NAMESPACE".to_owned(), namespace.to_owned()),
                ("K8S_POD_NAME".to_owned(), name.to_owned()),
                (
                    "K8S_POD_INFRA_CONTAINER_ID".to_owned(),
                    container_id.to_owned(),
                ),
                ("K8S_POD_UID".to_owned(), uid.to_owned()),
            ],
        }
    }
}

/// A network configuration list and the directories its plugins are found in.
#[derive(Debug, Clone)]
pub struct CniRuntime {
    conflist: Value,
    path: Vec<PathBuf>,
    /// Namespace the plugins run in (the "node"); `None`: the caller's.
    node: Option<Namespace>,
}

impl CniRuntime {
    /// A runtime for `conflist` looking for plugins in `path` (like `CNI_PATH`).
    pub fn new(conflist: Value, path: Vec<PathBuf>) -> Self {
        Self {
            conflist,
            path,
            node: None,
        }
    }

    /// Runs the plugins inside `node` (as if the runtime ran on that node), so that
    /// host-side interfaces such as bridges are made there and not on the test host.
    pub fn in_node(mut self, node: Namespace) -> Self {
        self.node = Some(node);
        self
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist
            .get("plugins")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    fn version(&self) -> String {
        self.conflist
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("1.0.0")
            .to_owned()
    }

    /// ADD: every plugin in order, each given the previous one's result. Returns the
    /// last result, or the first failure.
    pub fn add(&self, att: &Attachment) -> Result<Result<Value, PluginFailure>, Error> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            match self.invoke("ADD", &plugin, att, prev.as_ref())? {
                Ok(out) => prev = Some(out),
                Err(f) => return Ok(Err(f)),
            }
        }
        Ok(Ok(prev.unwrap_or(Value::Null)))
    }

    /// DEL: every plugin in reverse order, each given `prev_result` (the ADD result).
    pub fn del(
        &self,
        att: &Attachment,
        prev_result: Option<&Value>,
    ) -> Result<Result<(), PluginFailure>, Error> {
        for plugin in self.plugins().iter().rev() {
            if let Err(f) = self.invoke("DEL", plugin, att, prev_result)? {
                return Ok(Err(f));
            }
        }
        Ok(Ok(()))
    }

    /// Runs one command of one plugin (`CHECK`, `STATUS`, `VERSION`, … or the above).
    pub fn invoke(
        &self,
        command: &str,
        plugin: &Value,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Result<Value, PluginFailure>, Error> {
        let kind = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut conf = plugin.clone();
        if let Some(obj) = conf.as_object_mut() {
            obj.insert("cniVersion".to_owned(), json!(self.version()));
            obj.insert(
                "name".to_owned(),
                self.conflist
                    .get("name")
                    .cloned()
                    .unwrap_or_else(|| json!("test")),
            );
            if let Some(prev) = prev {
                obj.insert("prevResult".to_owned(), prev.clone());
            }
        }
        let program = self
            .path
            .iter()
            .map(|d| d.join(&kind))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::ToolMissing {
                tool: kind.clone(),
                package: "containernetworking-plugins (or the plugin under test)",
            })?;
        let cni_path = std::env::join_paths(&self.path).map_err(|e| Error::Io {
            context: "CNI_PATH".to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let args: Vec<String> = att.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut cmd = match &self.node {
            Some(node) => node.command(&program),
            None => Command::new(&program),
        };
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_ARGS", args.join(";"))
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let text = format!("{kind} {command}");
        let mut child = cmd.spawn().map_err(|e| Error::Io {
            context: format!("starting CNI plugin {}", program.display()),
            source: e,
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            let body = serde_json::to_vec(&conf).unwrap_or_default();
            stdin.write_all(&body).map_err(|e| Error::Io {
                context: format!("stdin of {text}"),
                source: e,
            })?;
        }
        let out = child.wait_with_output().map_err(|e| Error::Io {
            context: format!("waiting for {text}"),
            source: e,
        })?;
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if out.status.success() {
            Ok(Ok(stdout))
        } else {
            Ok(Err(PluginFailure {
                plugin: kind,
                exit: out.status.code(),
                error: stdout,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }))
        }
    }
}
