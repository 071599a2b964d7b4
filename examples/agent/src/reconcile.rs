//! The enrollment reconciler: moves each local pod through the enrollment stages in an order
//! that never redirects into a port nobody listens on and never advertises HBONE before the
//! pod can receive it.
//!
//! Enroll: hand the pod to the proxy over ZDS (netns fd) and wait for its ack → install the
//! redirection rules → advertise the pod as HBONE over xDS. Unenroll runs in reverse: stop
//! advertising HBONE → remove the rules → ZDS delete (also when the netns is already gone).
//! Every pass re-sends enrolled pods the connected proxy no longer holds (it rejected them
//! in its snapshot); a periodic check also repairs rule drift, after handing the proxy a
//! namespace that was recreated under the same path.
//!
//! The side effects are behind three traits so this ordering logic is tested with fakes; the
//! real implementations live in `effects`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;

use tracing::{info, warn};

use crate::desired::LocalPod;
use crate::workloads::Cluster;

/// Why an effect failed; used as the `cause` label of the failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Cause {
    /// The pod's network namespace could not be opened.
    Netns,
    /// No proxy is connected, or sending to it failed.
    ProxyUnavailable,
    /// The proxy answered with an error (NACK).
    ProxyNack,
    /// The proxy did not answer in time.
    ProxyTimeout,
    /// Installing the redirection rules failed.
    RulesInstall,
    /// Reading back or repairing the rules failed.
    RulesVerify,
    /// Removing the rules failed.
    RulesRemove,
}

impl Cause {
    /// Metric label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Netns => "netns",
            Self::ProxyUnavailable => "proxy_unavailable",
            Self::ProxyNack => "proxy_nack",
            Self::ProxyTimeout => "proxy_timeout",
            Self::RulesInstall => "rules_install",
            Self::RulesVerify => "rules_verify",
            Self::RulesRemove => "rules_remove",
        }
    }
}

/// A failed side effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EffectError {
    pub(crate) cause: Cause,
    pub(crate) message: String,
}

impl EffectError {
    pub(crate) fn new(cause: Cause, message: impl Into<String>) -> Self {
        Self {
            cause,
            message: message.into(),
        }
    }
}

impl fmt::Display for EffectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.cause.label(), self.message)
    }
}

/// Result of removing a pod's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    /// The rules were removed (or were not there).
    Removed,
    /// The network namespace no longer exists, so neither do its rules.
    NetnsGone,
}

/// Result of checking a pod's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RuleCheck {
    InSync,
    /// What differs from the expected rule set.
    Drift(String),
}

/// The node proxy, reached over ZDS.
pub(crate) trait ProxyChannel: Send + Sync {
    /// Opens the pod's netns, sends `AddWorkload` with the fd, waits for the proxy's ack.
    fn add(&self, pod: &LocalPod) -> impl Future<Output = Result<(), EffectError>> + Send;
    /// Sends `DelWorkload`; succeeds when no proxy is connected (it will not get the pod in
    /// its next snapshot).
    fn del(&self, uid: &str) -> impl Future<Output = Result<(), EffectError>> + Send;
    /// The uids the connected proxy has acknowledged, or `None` when no proxy is connected or
    /// this is unknown.
    fn held(&self) -> Option<BTreeSet<String>>;
    /// Whether the pod's netns path now names another namespace than the one last handed
    /// to the proxy (the sandbox was recreated under the same path).
    fn netns_replaced(&self, pod: &LocalPod) -> bool;
}

/// The in-pod redirection rules.
pub(crate) trait RuleInstaller: Send + Sync {
    /// Applies the rule set in the pod's netns (idempotent).
    fn install(&self, pod: &LocalPod) -> impl Future<Output = Result<(), EffectError>> + Send;
    /// Compares the installed rules with the expected set.
    fn check(&self, pod: &LocalPod) -> impl Future<Output = Result<RuleCheck, EffectError>> + Send;
    /// Re-applies what is missing or different.
    fn repair(&self, pod: &LocalPod) -> impl Future<Output = Result<(), EffectError>> + Send;
    /// Removes the rule set completely.
    fn remove(&self, pod: &LocalPod) -> impl Future<Output = Result<Removal, EffectError>> + Send;
}

/// The xDS view served to proxies.
pub(crate) trait Publisher: Send + Sync {
    /// Publishes every pod of `cluster`; local pods are HBONE only if in `hbone_ready`.
    fn publish(&self, cluster: &Cluster, hbone_ready: &BTreeSet<String>);
    /// Waits (bounded) until what was published has reached the other nodes, before
    /// unenrolled pods lose their rules. Default: at once.
    fn settled(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// How far a local pod has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    /// An add was attempted but not acknowledged: the proxy (or the ZDS snapshot cache) may
    /// hold the pod; no rules were installed by us.
    Offered,
    /// Known from a previous agent run: rules may be installed and the proxy may hold it, but
    /// this agent has not handed it over yet.
    Restored,
    /// The proxy acknowledged the pod; no rules (yet, or any more).
    HandedOver,
    /// Rules installed, not yet advertised as HBONE.
    RulesInstalled,
    /// Advertised as HBONE.
    Published,
}

#[derive(Debug, Clone)]
struct Tracked {
    pod: LocalPod,
    stage: Stage,
}

/// What one pass did, for metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Pods that became advertised as HBONE in this pass.
    pub(crate) enrolled: Vec<String>,
    /// Pods fully unenrolled (ZDS delete acknowledged) in this pass.
    pub(crate) unenrolled: Vec<String>,
    /// Pods whose rules drifted and were repaired.
    pub(crate) repaired: Vec<String>,
    /// Pods re-sent to a proxy that had lost them.
    pub(crate) resent: Vec<String>,
    /// Failed steps; retried on the next pass.
    pub(crate) failures: Vec<(String, EffectError)>,
}

/// Enrollment reconciler for the pods of one node.
#[derive(Debug)]
pub(crate) struct Reconciler<Z, R, P> {
    zds: Z,
    rules: R,
    publisher: P,
    pods: BTreeMap<String, Tracked>,
    /// Local pods advertised as HBONE by the last publish.
    advertised: BTreeSet<String>,
}

impl<Z: ProxyChannel, R: RuleInstaller, P: Publisher> Reconciler<Z, R, P> {
    pub(crate) fn new(zds: Z, rules: R, publisher: P) -> Self {
        Self {
            zds,
            rules,
            publisher,
            pods: BTreeMap::new(),
            advertised: BTreeSet::new(),
        }
    }

    /// Adds pods remembered from a previous run (their rules may still be installed).
    pub(crate) fn restore(&mut self, pods: impl IntoIterator<Item = LocalPod>) {
        for pod in pods {
            self.pods.entry(pod.uid.clone()).or_insert(Tracked {
                pod,
                stage: Stage::Restored,
            });
        }
    }

    /// Pods this reconciler is responsible for, with their stage.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> impl Iterator<Item = (&LocalPod, Stage)> {
        self.pods.values().map(|t| (&t.pod, t.stage))
    }

    /// Number of pods advertised as HBONE.
    pub(crate) fn published(&self) -> usize {
        self.pods
            .values()
            .filter(|t| t.stage == Stage::Published)
            .count()
    }

    /// Pods whose rules may be installed in their netns (the set to persist across restarts).
    pub(crate) fn with_rules(&self) -> Vec<LocalPod> {
        self.pods
            .values()
            .filter(|t| {
                matches!(
                    t.stage,
                    Stage::Restored | Stage::RulesInstalled | Stage::Published
                )
            })
            .map(|t| t.pod.clone())
            .collect()
    }

    /// One pass: unenroll what left, enroll what arrived, publish, re-send enrolled pods the
    /// connected proxy lost; with `periodic`, also verify and repair the rules of enrolled
    /// pods.
    pub(crate) async fn reconcile(
        &mut self,
        cluster: &Cluster,
        desired: &BTreeMap<String, LocalPod>,
        periodic: bool,
    ) -> Outcome {
        let mut out = Outcome::default();

        // Pods to take out: no longer desired, or changed (netns, identity).
        let leaving: Vec<String> = self
            .pods
            .iter()
            .filter(|(uid, t)| desired.get(*uid) != Some(&t.pod))
            .map(|(uid, _)| uid.clone())
            .collect();

        // 1. Stop advertising HBONE for leaving pods, before anything else changes for them.
        let mut unpublished = false;
        for uid in &leaving {
            if let Some(t) = self.pods.get_mut(uid) {
                if t.stage == Stage::Published {
                    t.stage = Stage::RulesInstalled;
                }
                if self.advertised.contains(uid) {
                    info!(pod = %t.pod.display_name(), %uid, "unenrolling pod: no longer advertised as HBONE");
                    unpublished = true;
                }
            }
        }
        if unpublished {
            self.publish(cluster, desired);
            self.publisher.settled().await;
        }

        // 2. Remove rules, then tell the proxy.
        for uid in &leaving {
            self.unenroll(uid, &mut out).await;
        }

        // 3. Enroll new pods (and re-enroll changed ones that have left completely).
        for (uid, pod) in desired {
            let stage = self.pods.get(uid).map(|t| t.stage);
            if self.pods.get(uid).is_some_and(|t| t.pod != *pod) {
                // Still leaving (a step failed above); retried next pass.
                continue;
            }
            if matches!(stage, None | Some(Stage::Offered | Stage::Restored)) {
                info!(pod = %pod.display_name(), %uid, "enrolling pod: handing its netns to the proxy");
                match self.zds.add(pod).await {
                    Ok(()) => {
                        info!(pod = %pod.display_name(), %uid, "proxy acknowledged pod");
                        self.pods.insert(
                            uid.clone(),
                            Tracked {
                                pod: pod.clone(),
                                stage: Stage::HandedOver,
                            },
                        );
                    }
                    Err(e) if e.cause == Cause::ProxyUnavailable => {
                        info!(pod = %pod.display_name(), %uid, "no proxy connected yet; the pod goes out in its snapshot");
                        out.failures.push((uid.clone(), e));
                        self.pods.entry(uid.clone()).or_insert_with(|| Tracked {
                            pod: pod.clone(),
                            stage: Stage::Offered,
                        });
                        continue;
                    }
                    Err(e) => {
                        warn!(pod = %pod.display_name(), %uid, error = %e, "proxy did not take pod; will retry");
                        out.failures.push((uid.clone(), e));
                        // It may still reach the proxy (e.g. in the next snapshot), so it
                        // must be deleted if it leaves before being acknowledged.
                        self.pods.entry(uid.clone()).or_insert_with(|| Tracked {
                            pod: pod.clone(),
                            stage: Stage::Offered,
                        });
                        continue;
                    }
                }
            }
            if self.pods.get(uid).map(|t| t.stage) == Some(Stage::HandedOver) {
                match self.rules.install(pod).await {
                    Ok(()) => {
                        info!(pod = %pod.display_name(), %uid, "redirection rules installed");
                        if let Some(t) = self.pods.get_mut(uid) {
                            t.stage = Stage::RulesInstalled;
                        }
                    }
                    Err(e) => {
                        warn!(pod = %pod.display_name(), %uid, error = %e, "installing rules failed; will retry");
                        out.failures.push((uid.clone(), e));
                    }
                }
            }
        }

        // 4. Advertise every pod whose rules are in place.
        for (uid, t) in &mut self.pods {
            if t.stage == Stage::RulesInstalled && desired.contains_key(uid) {
                info!(pod = %t.pod.display_name(), %uid, "pod enrolled: advertised as HBONE");
                t.stage = Stage::Published;
                out.enrolled.push(uid.clone());
            }
        }
        self.publish(cluster, desired);

        self.check(&mut out, periodic).await;
        out
    }

    async fn unenroll(&mut self, uid: &str, out: &mut Outcome) {
        let Some(t) = self.pods.get(uid).cloned() else {
            return;
        };
        let name = t.pod.display_name();
        if matches!(
            t.stage,
            Stage::Restored | Stage::RulesInstalled | Stage::Published
        ) {
            match self.rules.remove(&t.pod).await {
                Ok(Removal::Removed) => info!(pod = %name, %uid, "redirection rules removed"),
                Ok(Removal::NetnsGone) => {
                    info!(pod = %name, %uid, "network namespace is gone; no rules to remove")
                }
                Err(e) => {
                    warn!(pod = %name, %uid, error = %e, "removing rules failed; keeping the pod at the proxy and retrying");
                    out.failures.push((uid.to_owned(), e));
                    return;
                }
            }
            if let Some(t) = self.pods.get_mut(uid) {
                t.stage = Stage::HandedOver;
            }
        }
        match self.zds.del(uid).await {
            Ok(()) => {
                info!(pod = %name, %uid, "pod unenrolled: proxy released it");
                self.pods.remove(uid);
                out.unenrolled.push(uid.to_owned());
            }
            Err(e) => {
                warn!(pod = %name, %uid, error = %e, "proxy did not release pod; will retry");
                out.failures.push((uid.to_owned(), e));
            }
        }
    }

    /// Re-sends enrolled pods the connected proxy does not hold; with `verify_rules`, first
    /// compares their rules with the rule set and repairs drift.
    async fn check(&mut self, out: &mut Outcome, verify_rules: bool) {
        let held = self.zds.held();
        if !verify_rules && held.is_none() {
            return;
        }
        let enrolled: Vec<LocalPod> = self
            .pods
            .values()
            .filter(|t| t.stage >= Stage::RulesInstalled)
            .map(|t| t.pod.clone())
            .collect();
        for pod in enrolled {
            let uid = &pod.uid;
            // A namespace recreated under the same path has neither the proxy's listeners nor
            // the rules: hand the new one over first, then the rule check below installs them.
            if verify_rules && self.zds.netns_replaced(&pod) {
                warn!(pod = %pod.display_name(), %uid, netns = %pod.netns.display(), "network namespace was replaced; handing the new one to the proxy");
                match self.zds.add(&pod).await {
                    Ok(()) => {
                        info!(pod = %pod.display_name(), %uid, "proxy acknowledged the new network namespace");
                        out.resent.push(uid.clone());
                    }
                    Err(e) => {
                        warn!(pod = %pod.display_name(), %uid, error = %e, "handing over the new network namespace failed; will retry");
                        out.failures.push((uid.clone(), e));
                        continue;
                    }
                }
            }
            let check = if verify_rules {
                self.rules.check(&pod).await
            } else {
                Ok(RuleCheck::InSync)
            };
            match check {
                Ok(RuleCheck::InSync) => {}
                Ok(RuleCheck::Drift(what)) => {
                    warn!(pod = %pod.display_name(), %uid, drift = %what, "redirection rules drifted; repairing");
                    match self.rules.repair(&pod).await {
                        Ok(()) => {
                            info!(pod = %pod.display_name(), %uid, "redirection rules repaired");
                            out.repaired.push(uid.clone());
                        }
                        Err(e) => {
                            warn!(pod = %pod.display_name(), %uid, error = %e, "repairing rules failed");
                            out.failures.push((uid.clone(), e));
                        }
                    }
                }
                Err(e) => {
                    warn!(pod = %pod.display_name(), %uid, error = %e, "checking rules failed");
                    out.failures.push((uid.clone(), e));
                }
            }
            if let Some(held) = &held
                && !held.contains(uid)
            {
                warn!(pod = %pod.display_name(), %uid, "proxy does not hold pod; re-sending it");
                match self.zds.add(&pod).await {
                    Ok(()) => {
                        info!(pod = %pod.display_name(), %uid, "proxy acknowledged re-sent pod");
                        out.resent.push(uid.clone());
                    }
                    Err(e) => {
                        warn!(pod = %pod.display_name(), %uid, error = %e, "re-sending pod failed");
                        out.failures.push((uid.clone(), e));
                    }
                }
            }
        }
    }

    /// Advertises published pods, and restored pods that are still desired: they were
    /// enrolled by the previous agent run and keep their rules, so they keep working while
    /// this run hands them to the proxy again.
    fn publish(&mut self, cluster: &Cluster, desired: &BTreeMap<String, LocalPod>) {
        let ready: BTreeSet<String> = self
            .pods
            .iter()
            .filter(|(uid, t)| {
                t.stage == Stage::Published
                    || (t.stage == Stage::Restored && desired.get(*uid) == Some(&t.pod))
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        self.publisher.publish(cluster, &ready);
        self.advertised = ready;
    }
}

#[cfg(test)]
mod tests;
