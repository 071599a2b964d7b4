//! The CNI commands: what the plugin does for each `CNI_COMMAND`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::conf::{Invocation, NetConf, SUPPORTED_VERSIONS};
use crate::error::{CniError, Code};
use crate::event::{self, EventKind, PodEvent, Reply};

/// What a command prints on stdout when it succeeds (`None`: nothing).
pub type Output = Option<String>;

/// Runs one invocation with its stdin; on success returns what to print.
pub fn run(inv: &Invocation, stdin: &[u8]) -> Result<Output, CniError> {
    match inv.command.as_str() {
        "VERSION" => Ok(Some(version(stdin))),
        "ADD" => add(inv, &NetConf::parse(stdin)?),
        "DEL" => {
            del(inv, &NetConf::parse(stdin)?);
            Ok(None)
        }
        "CHECK" => check(inv, &NetConf::parse(stdin)?),
        "STATUS" => status(&NetConf::parse(stdin)?),
        "GC" => {
            NetConf::parse(stdin)?;
            Ok(None)
        }
        "" => Err(CniError::new(
            Code::InvalidEnvironment,
            "CNI_COMMAND is not set",
            "",
        )),
        other => Err(CniError::new(
            Code::InvalidEnvironment,
            format!("unknown CNI_COMMAND {other}"),
            "",
        )),
    }
}

fn version(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "1.1.0".to_owned());
    json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS }).to_string()
}

/// The `prevResult`, printed unchanged (with `cniVersion`), as a chained plugin must.
fn pass_through(conf: &NetConf) -> Result<Output, CniError> {
    let mut result = conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            Code::InvalidConfig,
            "meshwire-cni must be chained after a plugin that sets up the interface",
            "no prevResult",
        )
    })?;
    if let Some(obj) = result.as_object_mut() {
        obj.insert(
            "cniVersion".to_owned(),
            Value::String(conf.cni_version.clone()),
        );
    }
    Ok(Some(result.to_string()))
}

/// The pod this invocation is for, when the runtime is Kubernetes and the namespace is
/// not excluded.
fn pod_event(kind: EventKind, inv: &Invocation, conf: &NetConf) -> Option<PodEvent> {
    let (name, namespace) = (inv.arg("K8S_POD_NAME")?, inv.arg("K8S_POD_NAMESPACE")?);
    if conf.exclude_namespaces.iter().any(|n| n == namespace) {
        return None;
    }
    Some(PodEvent::new(
        kind,
        inv.container_id.clone(),
        inv.netns.clone(),
        namespace,
        name,
        inv.arg("K8S_POD_UID").unwrap_or_default(),
        conf.prev_ips(),
    ))
}

fn add(inv: &Invocation, conf: &NetConf) -> Result<Output, CniError> {
    inv.require("CNI_CONTAINERID", &inv.container_id)?;
    inv.require("CNI_NETNS", &inv.netns)?;
    inv.require("CNI_IFNAME", &inv.ifname)?;
    let output = pass_through(conf)?;
    let Some(event) = pod_event(EventKind::Add, inv, conf) else {
        return Ok(output);
    };
    let timeout = Duration::from_millis(conf.agent_timeout_ms);
    match event::send(&conf.agent_socket, &event, timeout) {
        Ok(Reply::Done | Reply::NotEnrolled) => Ok(output),
        Ok(Reply::Failed { message }) => Err(CniError::new(
            Code::TryAgainLater,
            format!(
                "the node agent could not enroll pod {}/{}",
                event.pod_namespace, event.pod_name
            ),
            message,
        )),
        Err(err) => match crate::kube::namespace_enrolled(conf, &event.pod_namespace, timeout) {
            Ok(false) => Ok(output),
            Ok(true) => Err(CniError::new(
                Code::TryAgainLater,
                format!(
                    "namespace {} is enrolled but the node agent cannot be reached",
                    event.pod_namespace
                ),
                err.to_string(),
            )),
            Err(lookup) => Err(CniError::new(
                Code::TryAgainLater,
                "the node agent cannot be reached and the pod's enrollment is unknown",
                format!("{err}; {lookup}"),
            )),
        },
    }
}

fn del(inv: &Invocation, conf: &NetConf) {
    // DEL must succeed even when the agent is gone: the agent also notices deleted pods
    // from the API server, so this is only a fast path.
    if let Some(event) = pod_event(EventKind::Del, inv, conf) {
        let _ = event::send(
            &conf.agent_socket,
            &event,
            Duration::from_millis(conf.agent_timeout_ms),
        );
    }
}

fn check(inv: &Invocation, conf: &NetConf) -> Result<Output, CniError> {
    inv.require("CNI_CONTAINERID", &inv.container_id)?;
    pass_through(conf).map(|_| None)
}

fn status(conf: &NetConf) -> Result<Output, CniError> {
    if event::reachable(&conf.agent_socket) {
        Ok(None)
    } else {
        Err(CniError::new(
            Code::NotAvailable,
            "the node agent is not listening",
            conf.agent_socket.display().to_string(),
        ))
    }
}
