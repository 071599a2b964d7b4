//! The namespace look-up used when the agent cannot be reached.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;

use crate::conf::NetConf;

/// Whether `namespace` carries the enrollment label, read from the API server with the
/// configured kubeconfig. Without a kubeconfig the answer is unknown (an error).
pub(crate) fn namespace_enrolled(
    conf: &NetConf,
    namespace: &str,
    timeout: Duration,
) -> Result<bool, String> {
    let path = conf
        .kubeconfig
        .as_ref()
        .ok_or_else(|| "no kubeconfig configured".to_owned())?;
    let (key, value) = conf.label();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        let lookup = async {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
            let ns = kube::Api::<Namespace>::all(client)
                .get(namespace)
                .await
                .map_err(|e| format!("namespace {namespace}: {e}"))?;
            Ok(ns
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(key))
                .is_some_and(|v| v == value))
        };
        tokio::time::timeout(timeout, lookup)
            .await
            .map_err(|_| format!("API server did not answer within {timeout:?}"))?
    })
}
