//! The in-pod redirection rules through the `netns` crate.

use std::sync::Arc;

use meshwire_netns::rules::{RuleSet, RulesError};
use meshwire_netns::{Error as NsError, NetNs};

use crate::desired::LocalPod;
use crate::reconcile::{Cause, EffectError, Removal, RuleCheck, RuleInstaller};

/// [`RuleInstaller`] applying one [`RuleSet`] preset in each pod's netns.
#[derive(Debug, Clone)]
pub(crate) struct NetnsRules {
    rules: Arc<RuleSet>,
}

impl NetnsRules {
    pub(crate) fn new(rules: RuleSet) -> Self {
        Self {
            rules: Arc::new(rules),
        }
    }

    /// Runs a blocking rule operation for `pod` off the async workers.
    async fn run<T: Send + 'static>(
        &self,
        pod: &LocalPod,
        cause: Cause,
        op: impl FnOnce(&RuleSet, &NetNs) -> Result<T, RulesError> + Send + 'static,
    ) -> Result<Result<T, EffectError>, NsError> {
        let rules = self.rules.clone();
        let path = pod.netns.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let ns = NetNs::from_path(&path)?;
            Ok(op(&rules, &ns).map_err(|e| EffectError::new(cause, e.to_string())))
        })
        .await;
        match joined {
            Ok(r) => r,
            Err(e) => Ok(Err(EffectError::new(
                cause,
                format!("rule task failed: {e}"),
            ))),
        }
    }
}

/// Whether opening the namespace failed because it no longer exists.
fn netns_gone(e: &NsError) -> bool {
    match e {
        NsError::Open { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        NsError::NotNetworkNamespace { .. } => true,
        _ => false,
    }
}

fn netns_error(pod: &LocalPod, e: &NsError) -> EffectError {
    EffectError::new(Cause::Netns, format!("netns {}: {e}", pod.netns.display()))
}

impl RuleInstaller for NetnsRules {
    async fn install(&self, pod: &LocalPod) -> Result<(), EffectError> {
        self.run(pod, Cause::RulesInstall, |rules, ns| rules.apply(ns))
            .await
            .map_err(|e| netns_error(pod, &e))?
    }

    async fn check(&self, pod: &LocalPod) -> Result<RuleCheck, EffectError> {
        let drift = self
            .run(pod, Cause::RulesVerify, |rules, ns| rules.verify(ns))
            .await
            .map_err(|e| netns_error(pod, &e))??;
        Ok(if drift.is_clean() {
            RuleCheck::InSync
        } else {
            RuleCheck::Drift(drift.to_string())
        })
    }

    async fn repair(&self, pod: &LocalPod) -> Result<(), EffectError> {
        self.run(pod, Cause::RulesVerify, |rules, ns| {
            rules.repair(ns).map(drop)
        })
        .await
        .map_err(|e| netns_error(pod, &e))?
    }

    async fn remove(&self, pod: &LocalPod) -> Result<Removal, EffectError> {
        match self
            .run(pod, Cause::RulesRemove, |rules, ns| rules.remove(ns))
            .await
        {
            Ok(r) => r.map(|()| Removal::Removed),
            Err(e) if netns_gone(&e) => Ok(Removal::NetnsGone),
            Err(e) => Err(netns_error(pod, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn pod(netns: &str) -> LocalPod {
        LocalPod {
            uid: "u".into(),
            name: "p".into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
            netns: PathBuf::from(netns),
        }
    }

    #[tokio::test]
    async fn missing_or_bogus_netns_counts_as_gone_for_removal_only() {
        let rules = NetnsRules::new(RuleSet::istio());
        let gone = pod("/var/run/netns/meshwire-agent-test-does-not-exist");
        assert_eq!(rules.remove(&gone).await, Ok(Removal::NetnsGone));
        let e = rules.install(&gone).await.unwrap_err();
        assert_eq!(e.cause, Cause::Netns);
        assert!(e.message.contains("does-not-exist"), "{e}");

        // A regular file is not a namespace: nothing of ours can be in it.
        let file = tempfile::NamedTempFile::new().unwrap();
        let bogus = pod(file.path().to_str().unwrap());
        assert_eq!(rules.remove(&bogus).await, Ok(Removal::NetnsGone));
        assert_eq!(rules.check(&bogus).await.unwrap_err().cause, Cause::Netns);
    }
}
