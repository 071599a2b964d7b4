//! The in-pod redirection rules through the `netns` crate.

use std::path::Path;
use std::sync::Arc;

use meshwire_netns::rules::{Family, Netfilter, RuleSet, RulesError};
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

impl NetnsRules {
    /// Whether the network namespace at `netns` holds any chain of this rule set (in any
    /// table, IPv4 or IPv6); `Ok(false)` when the namespace no longer exists.
    pub(crate) async fn present(&self, netns: &Path) -> Result<bool, EffectError> {
        let rules = self.rules.clone();
        let path = netns.to_owned();
        let joined = tokio::task::spawn_blocking(move || {
            let ns = match NetNs::from_path(&path) {
                Ok(ns) => ns,
                Err(e) if netns_gone(&e) => return Ok(false),
                Err(e) => return Err(format!("netns {}: {e}", path.display())),
            };
            ns.run_on_thread(|| chains_present(&rules, &Netfilter::system()))
                .map_err(|e| format!("netns {}: {e}", path.display()))?
                .map_err(|e| e.to_string())
        })
        .await;
        joined
            .unwrap_or_else(|e| Err(format!("rule task failed: {e}")))
            .map_err(|e| EffectError::new(Cause::RulesVerify, e))
    }
}

/// Whether the namespace `nf` runs in holds a chain of `rules` in any table and family. An
/// IPv6 dump that fails is ignored when the rule set does not use IPv6 (as on removal).
fn chains_present<E: meshwire_netns::rules::Executor>(
    rules: &RuleSet,
    nf: &Netfilter<E>,
) -> Result<bool, RulesError> {
    let ours = [rules.prerouting_chain.as_str(), rules.output_chain.as_str()];
    for family in Family::ALL {
        let dump = match nf.save(family) {
            Ok(dump) => dump,
            Err(_) if family == Family::V6 && !rules.ipv6 => continue,
            Err(e) => return Err(e),
        };
        if dump
            .tables
            .iter()
            .any(|t| ours.iter().any(|c| t.has_chain(c)))
        {
            return Ok(true);
        }
    }
    Ok(false)
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

    /// Answers `iptables-save` with `v4` and `ip6tables-save` with `v6` (`None`: fails).
    struct Dumps {
        v4: &'static str,
        v6: Option<&'static str>,
    }

    impl meshwire_netns::rules::Executor for Dumps {
        fn execute(
            &self,
            inv: &meshwire_netns::rules::Invocation,
        ) -> std::io::Result<meshwire_netns::rules::CommandOutput> {
            let out = match inv.program.as_str() {
                "iptables-save" => Some(self.v4),
                "ip6tables-save" => self.v6,
                other => panic!("unexpected program {other}"),
            };
            Ok(match out {
                Some(text) => meshwire_netns::rules::CommandOutput::new(Some(0), text, ""),
                None => meshwire_netns::rules::CommandOutput::new(Some(1), "", "no ip6tables"),
            })
        }
    }

    #[test]
    fn our_chains_in_any_table_or_family_count_as_present() {
        const NONE: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        const V4_NAT: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:ISTIO_PRERT - [0:0]\n-A PREROUTING -j ISTIO_PRERT\nCOMMIT\n";
        const MANGLE_OUTPUT: &str =
            "*mangle\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\nCOMMIT\n";
        let present = |rules: &RuleSet, v4, v6| {
            let nf = Netfilter::new(Dumps { v4, v6 }, meshwire_netns::rules::Tools::default());
            chains_present(rules, &nf)
        };
        let istio = RuleSet::istio();
        assert!(!present(&istio, NONE, Some(NONE)).unwrap());
        assert!(present(&istio, V4_NAT, Some(NONE)).unwrap());
        assert!(present(&istio, NONE, Some(MANGLE_OUTPUT)).unwrap());
        assert!(
            !present(&RuleSet::cilium(), V4_NAT, Some(NONE)).unwrap(),
            "another preset's chains are not ours"
        );
        assert!(
            present(&istio, NONE, None).is_err(),
            "IPv6 in use: a failed dump is an error"
        );
        let mut v4_only = RuleSet::istio();
        v4_only.ipv6 = false;
        assert!(!present(&v4_only, NONE, None).unwrap());
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
