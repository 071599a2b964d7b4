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
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    /// Every effect call, in order, as one shared journal.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Add(String),
        Del(String),
        Install(String),
        InstallFailed(String),
        Check(String),
        Repair(String),
        Remove(String),
        RemoveFailed(String),
        /// Uids advertised as HBONE.
        Publish(Vec<String>),
    }

    #[derive(Default)]
    struct World {
        journal: Vec<Call>,
        /// Uids whose next effect of the given kind fails.
        fail_add: BTreeMap<String, Cause>,
        fail_install: BTreeSet<String>,
        fail_remove: BTreeSet<String>,
        fail_del: BTreeSet<String>,
        netns_gone: BTreeSet<String>,
        drifted: BTreeSet<String>,
        held: Option<BTreeSet<String>>,
        /// Pods whose netns path names a new namespace since their last add.
        replaced: BTreeSet<String>,
    }

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<World>>);

    impl Fake {
        fn world(&self) -> std::sync::MutexGuard<'_, World> {
            self.0.lock().unwrap()
        }
        fn take_journal(&self) -> Vec<Call> {
            std::mem::take(&mut self.world().journal)
        }
    }

    impl ProxyChannel for Fake {
        async fn add(&self, pod: &LocalPod) -> Result<(), EffectError> {
            let mut w = self.world();
            w.journal.push(Call::Add(pod.uid.clone()));
            if let Some(cause) = w.fail_add.get(&pod.uid) {
                return Err(EffectError::new(*cause, "fake add failure"));
            }
            if let Some(held) = &mut w.held {
                held.insert(pod.uid.clone());
            }
            w.replaced.remove(&pod.uid);
            Ok(())
        }
        async fn del(&self, uid: &str) -> Result<(), EffectError> {
            let mut w = self.world();
            w.journal.push(Call::Del(uid.to_owned()));
            if w.fail_del.contains(uid) {
                return Err(EffectError::new(Cause::ProxyTimeout, "fake del failure"));
            }
            if let Some(held) = &mut w.held {
                held.remove(uid);
            }
            Ok(())
        }
        fn held(&self) -> Option<BTreeSet<String>> {
            self.world().held.clone()
        }
        fn netns_replaced(&self, pod: &LocalPod) -> bool {
            self.world().replaced.contains(&pod.uid)
        }
    }

    impl RuleInstaller for Fake {
        async fn install(&self, pod: &LocalPod) -> Result<(), EffectError> {
            let mut w = self.world();
            if w.fail_install.contains(&pod.uid) {
                w.journal.push(Call::InstallFailed(pod.uid.clone()));
                return Err(EffectError::new(
                    Cause::RulesInstall,
                    "fake install failure",
                ));
            }
            w.journal.push(Call::Install(pod.uid.clone()));
            Ok(())
        }
        async fn check(&self, pod: &LocalPod) -> Result<RuleCheck, EffectError> {
            let mut w = self.world();
            w.journal.push(Call::Check(pod.uid.clone()));
            Ok(if w.drifted.contains(&pod.uid) {
                RuleCheck::Drift("jump missing".into())
            } else {
                RuleCheck::InSync
            })
        }
        async fn repair(&self, pod: &LocalPod) -> Result<(), EffectError> {
            let mut w = self.world();
            w.journal.push(Call::Repair(pod.uid.clone()));
            w.drifted.remove(&pod.uid);
            Ok(())
        }
        async fn remove(&self, pod: &LocalPod) -> Result<Removal, EffectError> {
            let mut w = self.world();
            if w.fail_remove.contains(&pod.uid) {
                w.journal.push(Call::RemoveFailed(pod.uid.clone()));
                return Err(EffectError::new(Cause::RulesRemove, "fake remove failure"));
            }
            w.journal.push(Call::Remove(pod.uid.clone()));
            Ok(if w.netns_gone.contains(&pod.uid) {
                Removal::NetnsGone
            } else {
                Removal::Removed
            })
        }
    }

    impl Publisher for Fake {
        fn publish(&self, _cluster: &Cluster, hbone_ready: &BTreeSet<String>) {
            self.world()
                .journal
                .push(Call::Publish(hbone_ready.iter().cloned().collect()));
        }
    }

    fn pod(uid: &str) -> LocalPod {
        LocalPod {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            namespace: "shop".into(),
            service_account: "default".into(),
            netns: PathBuf::from(format!("/var/run/netns/{uid}")),
        }
    }

    fn desired(uids: &[&str]) -> BTreeMap<String, LocalPod> {
        uids.iter().map(|u| (u.to_string(), pod(u))).collect()
    }

    fn setup() -> (Fake, Reconciler<Fake, Fake, Fake>) {
        let fake = Fake::default();
        let r = Reconciler::new(fake.clone(), fake.clone(), fake.clone());
        (fake, r)
    }

    fn publish(uids: &[&str]) -> Call {
        Call::Publish(uids.iter().map(|u| u.to_string()).collect())
    }

    fn stages<Z: ProxyChannel, R: RuleInstaller, P: Publisher>(
        r: &Reconciler<Z, R, P>,
    ) -> Vec<(String, Stage)> {
        r.tracked().map(|(p, s)| (p.uid.clone(), s)).collect()
    }

    const C: &Cluster = &Cluster {
        namespaces: BTreeMap::new(),
        pods: Vec::new(),
        policies: Vec::new(),
    };

    #[tokio::test]
    async fn enroll_order_is_add_then_rules_then_publish() {
        let (fake, mut r) = setup();
        let out = r.reconcile(C, &desired(&["a", "b"]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                Call::Add("a".into()),
                Call::Install("a".into()),
                Call::Add("b".into()),
                Call::Install("b".into()),
                publish(&["a", "b"]),
            ]
        );
        assert_eq!(out.enrolled, vec!["a", "b"]);
        assert!(out.failures.is_empty());
        assert_eq!(r.published(), 2);

        // A second pass with nothing new only republishes.
        let out = r.reconcile(C, &desired(&["a", "b"]), false).await;
        assert_eq!(fake.take_journal(), vec![publish(&["a", "b"])]);
        assert_eq!(out, Outcome::default());
    }

    #[tokio::test]
    async fn unenroll_order_is_unpublish_then_remove_rules_then_del() {
        let (fake, mut r) = setup();
        r.reconcile(C, &desired(&["a", "b"]), false).await;
        fake.take_journal();

        let out = r.reconcile(C, &desired(&["b"]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                publish(&["b"]),
                Call::Remove("a".into()),
                Call::Del("a".into()),
                publish(&["b"])
            ]
        );
        assert_eq!(out.unenrolled, vec!["a"]);
        assert_eq!(stages(&r), vec![("b".to_owned(), Stage::Published)]);
    }

    #[tokio::test]
    async fn del_is_sent_when_the_netns_is_already_gone() {
        let (fake, mut r) = setup();
        r.reconcile(C, &desired(&["a"]), false).await;
        fake.world().netns_gone.insert("a".into());
        fake.take_journal();
        let out = r.reconcile(C, &desired(&[]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                publish(&[]),
                Call::Remove("a".into()),
                Call::Del("a".into()),
                publish(&[])
            ]
        );
        assert_eq!(out.unenrolled, vec!["a"]);
        assert!(r.tracked().next().is_none());
    }

    #[tokio::test]
    async fn failed_add_installs_no_rules_and_publishes_nothing() {
        let (fake, mut r) = setup();
        fake.world()
            .fail_add
            .insert("a".into(), Cause::ProxyUnavailable);
        let out = r.reconcile(C, &desired(&["a", "b"]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                Call::Add("a".into()),
                Call::Add("b".into()),
                Call::Install("b".into()),
                publish(&["b"]),
            ]
        );
        assert_eq!(out.failures.len(), 1);
        assert_eq!(out.failures[0].0, "a");
        assert_eq!(out.failures[0].1.cause, Cause::ProxyUnavailable);

        // The proxy comes back: the next pass retries from the start.
        fake.world().fail_add.clear();
        let out = r.reconcile(C, &desired(&["a", "b"]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                Call::Add("a".into()),
                Call::Install("a".into()),
                publish(&["a", "b"])
            ]
        );
        assert_eq!(out.enrolled, vec!["a"]);
    }

    #[tokio::test]
    async fn unacknowledged_pod_that_leaves_is_still_deleted() {
        let (fake, mut r) = setup();
        fake.world()
            .fail_add
            .insert("a".into(), Cause::ProxyUnavailable);
        r.reconcile(C, &desired(&["a"]), false).await;
        assert_eq!(stages(&r), vec![("a".to_owned(), Stage::Offered)]);
        assert!(r.with_rules().is_empty());
        fake.take_journal();
        let out = r.reconcile(C, &desired(&[]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![Call::Del("a".into()), publish(&[])]
        );
        assert_eq!(out.unenrolled, vec!["a"]);
        assert!(r.tracked().next().is_none());
    }

    #[tokio::test]
    async fn failed_rule_install_is_retried_without_a_second_add() {
        let (fake, mut r) = setup();
        fake.world().fail_install.insert("a".into());
        let out = r.reconcile(C, &desired(&["a"]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                Call::Add("a".into()),
                Call::InstallFailed("a".into()),
                publish(&[])
            ]
        );
        assert_eq!(out.failures[0].1.cause, Cause::RulesInstall);
        assert_eq!(stages(&r), vec![("a".to_owned(), Stage::HandedOver)]);

        fake.world().fail_install.clear();
        r.reconcile(C, &desired(&["a"]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![Call::Install("a".into()), publish(&["a"])]
        );
    }

    #[tokio::test]
    async fn pod_that_never_got_rules_is_released_without_removal() {
        let (fake, mut r) = setup();
        fake.world().fail_install.insert("a".into());
        r.reconcile(C, &desired(&["a"]), false).await;
        fake.take_journal();
        r.reconcile(C, &desired(&[]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![Call::Del("a".into()), publish(&[])]
        );
    }

    #[tokio::test]
    async fn failed_rule_removal_keeps_the_pod_at_the_proxy() {
        let (fake, mut r) = setup();
        r.reconcile(C, &desired(&["a"]), false).await;
        fake.world().fail_remove.insert("a".into());
        fake.take_journal();

        let out = r.reconcile(C, &desired(&[]), false).await;
        // No Del: the rules still redirect to the proxy's listeners.
        assert_eq!(
            fake.take_journal(),
            vec![publish(&[]), Call::RemoveFailed("a".into()), publish(&[])]
        );
        assert_eq!(out.failures[0].1.cause, Cause::RulesRemove);
        assert_eq!(stages(&r), vec![("a".to_owned(), Stage::RulesInstalled)]);

        fake.world().fail_remove.clear();
        let out = r.reconcile(C, &desired(&[]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                Call::Remove("a".into()),
                Call::Del("a".into()),
                publish(&[])
            ]
        );
        assert_eq!(out.unenrolled, vec!["a"]);
    }

    #[tokio::test]
    async fn failed_del_is_retried_without_touching_rules_again() {
        let (fake, mut r) = setup();
        r.reconcile(C, &desired(&["a"]), false).await;
        fake.world().fail_del.insert("a".into());
        fake.take_journal();
        r.reconcile(C, &desired(&[]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                publish(&[]),
                Call::Remove("a".into()),
                Call::Del("a".into()),
                publish(&[])
            ]
        );
        assert_eq!(stages(&r), vec![("a".to_owned(), Stage::HandedOver)]);
        fake.world().fail_del.clear();
        r.reconcile(C, &desired(&[]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![Call::Del("a".into()), publish(&[])]
        );
        assert!(r.tracked().next().is_none());
    }

    #[tokio::test]
    async fn changed_pod_is_unenrolled_then_enrolled_again() {
        let (fake, mut r) = setup();
        r.reconcile(C, &desired(&["a"]), false).await;
        fake.take_journal();
        let mut d = desired(&["a"]);
        d.get_mut("a").unwrap().netns = PathBuf::from("/var/run/netns/new");
        let out = r.reconcile(C, &d, false).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                publish(&[]),
                Call::Remove("a".into()),
                Call::Del("a".into()),
                Call::Add("a".into()),
                Call::Install("a".into()),
                publish(&["a"]),
            ]
        );
        assert_eq!(out.unenrolled, vec!["a"]);
        assert_eq!(out.enrolled, vec!["a"]);
        assert_eq!(
            r.tracked().next().unwrap().0.netns,
            PathBuf::from("/var/run/netns/new")
        );
    }

    #[tokio::test]
    async fn periodic_check_repairs_drift_and_resends_lost_pods() {
        let (fake, mut r) = setup();
        fake.world().held = Some(BTreeSet::new());
        r.reconcile(C, &desired(&["a", "b"]), false).await;
        fake.take_journal();

        // Without the periodic flag nothing is checked.
        r.reconcile(C, &desired(&["a", "b"]), false).await;
        assert_eq!(fake.take_journal(), vec![publish(&["a", "b"])]);

        // In sync: only checks.
        let out = r.reconcile(C, &desired(&["a", "b"]), true).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                publish(&["a", "b"]),
                Call::Check("a".into()),
                Call::Check("b".into())
            ]
        );
        assert_eq!(out, Outcome::default());

        // Drift on a, proxy lost b.
        fake.world().drifted.insert("a".into());
        fake.world().held.as_mut().unwrap().remove("b");
        let out = r.reconcile(C, &desired(&["a", "b"]), true).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                publish(&["a", "b"]),
                Call::Check("a".into()),
                Call::Repair("a".into()),
                Call::Check("b".into()),
                Call::Add("b".into()),
            ]
        );
        assert_eq!(out.repaired, vec!["a"]);
        assert_eq!(out.resent, vec!["b"]);

        // No proxy connected: nothing is re-sent (its snapshot will carry the pods).
        fake.world().held = None;
        r.reconcile(C, &desired(&["a", "b"]), true).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                publish(&["a", "b"]),
                Call::Check("a".into()),
                Call::Check("b".into())
            ]
        );
    }

    #[tokio::test]
    async fn lost_pods_are_resent_on_every_pass_rules_checked_only_periodically() {
        let (fake, mut r) = setup();
        fake.world().held = Some(BTreeSet::new());
        r.reconcile(C, &desired(&["a", "b"]), false).await;
        fake.take_journal();

        // The proxy's snapshot answer dropped b (e.g. it NACKed it): the pass the snapshot
        // wakes re-sends it at once, without touching the rules.
        fake.world().held.as_mut().unwrap().remove("b");
        let out = r.reconcile(C, &desired(&["a", "b"]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![publish(&["a", "b"]), Call::Add("b".into())]
        );
        assert_eq!(out.resent, vec!["b"]);
        let out = r.reconcile(C, &desired(&["a", "b"]), false).await;
        assert_eq!(fake.take_journal(), vec![publish(&["a", "b"])]);
        assert_eq!(out, Outcome::default());
    }

    #[tokio::test]
    async fn a_namespace_recreated_under_the_same_path_is_handed_over_then_gets_rules() {
        let (fake, mut r) = setup();
        r.reconcile(C, &desired(&["a", "b"]), false).await;
        fake.take_journal();
        {
            let mut w = fake.world();
            w.replaced.insert("a".into());
            // The new namespace has no rules yet.
            w.drifted.insert("a".into());
        }
        // Only the periodic check looks.
        r.reconcile(C, &desired(&["a", "b"]), false).await;
        assert_eq!(fake.take_journal(), vec![publish(&["a", "b"])]);
        let out = r.reconcile(C, &desired(&["a", "b"]), true).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                publish(&["a", "b"]),
                Call::Add("a".into()),
                Call::Check("a".into()),
                Call::Repair("a".into()),
                Call::Check("b".into()),
            ]
        );
        assert_eq!(out.resent, vec!["a"]);
        assert_eq!(out.repaired, vec!["a"]);

        // If the proxy refuses the new namespace, no rules go into it.
        fake.world().replaced.insert("b".into());
        fake.world().drifted.insert("b".into());
        fake.world().fail_add.insert("b".into(), Cause::ProxyNack);
        let out = r.reconcile(C, &desired(&["a", "b"]), true).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                publish(&["a", "b"]),
                Call::Check("a".into()),
                Call::Add("b".into()),
            ]
        );
        assert_eq!(out.failures.len(), 1);
    }

    #[tokio::test]
    async fn restored_pods_are_handed_over_again_or_cleaned_up() {
        let (fake, mut r) = setup();
        r.restore([pod("keep"), pod("gone")]);
        assert_eq!(r.with_rules().len(), 2, "restored pods may have rules");
        let out = r.reconcile(C, &desired(&["keep"]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                Call::Remove("gone".into()),
                Call::Del("gone".into()),
                Call::Add("keep".into()),
                Call::Install("keep".into()),
                publish(&["keep"]),
            ]
        );
        assert_eq!(out.unenrolled, vec!["gone"]);
        assert_eq!(out.enrolled, vec!["keep"]);
    }

    #[tokio::test]
    async fn restored_pods_stay_advertised_until_the_proxy_is_back() {
        let (fake, mut r) = setup();
        r.restore([pod("keep")]);
        fake.world()
            .fail_add
            .insert("keep".into(), Cause::ProxyUnavailable);
        r.reconcile(C, &desired(&["keep"]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![Call::Add("keep".into()), publish(&["keep"])]
        );
        assert_eq!(stages(&r), vec![("keep".to_owned(), Stage::Restored)]);
        assert_eq!(r.with_rules().len(), 1, "still remembered as having rules");

        // Unlabelled while the proxy is away: withdrawn first, then rules removed, then Del.
        r.reconcile(C, &desired(&[]), false).await;
        assert_eq!(
            fake.take_journal(),
            vec![
                publish(&[]),
                Call::Remove("keep".into()),
                Call::Del("keep".into()),
                publish(&[])
            ]
        );
    }

    #[tokio::test]
    async fn hbone_is_never_published_for_a_pod_without_rules() {
        // Over a sequence of desired sets with failing installs and removals: every Publish
        // lists only pods the proxy holds and whose rules are installed, rules are installed
        // only for pods the proxy holds, and no Del is sent while rules may be installed.
        let (fake, mut r) = setup();
        let sets: [&[&str]; 6] = [
            &["a", "b", "c"],
            &["b", "c"],
            &["a", "c"],
            &[],
            &["a", "b", "c"],
            &["c"],
        ];
        for (i, set) in sets.iter().enumerate() {
            {
                let mut w = fake.world();
                w.fail_install = if i % 2 == 0 {
                    BTreeSet::from(["b".to_owned()])
                } else {
                    BTreeSet::new()
                };
                w.fail_remove = if i == 3 {
                    BTreeSet::from(["c".to_owned()])
                } else {
                    BTreeSet::new()
                };
            }
            r.reconcile(C, &desired(set), i % 3 == 0).await;
        }
        let journal = fake.take_journal();
        assert!(journal.contains(&Call::InstallFailed("b".into())));
        assert!(journal.contains(&Call::RemoveFailed("c".into())));
        let mut rules: BTreeSet<String> = BTreeSet::new();
        let mut at_proxy: BTreeSet<String> = BTreeSet::new();
        let mut advertised: Vec<String> = Vec::new();
        for call in &journal {
            match call {
                Call::Add(u) => {
                    at_proxy.insert(u.clone());
                }
                Call::Del(u) => {
                    assert!(
                        !rules.contains(u),
                        "Del of {u} while its rules may be installed: {journal:#?}"
                    );
                    at_proxy.remove(u);
                }
                Call::Install(u) => {
                    assert!(
                        at_proxy.contains(u),
                        "rules for {u} before the proxy took it"
                    );
                    rules.insert(u.clone());
                }
                Call::Remove(u) => {
                    assert!(
                        !advertised.contains(u),
                        "rules of {u} removed while advertised"
                    );
                    rules.remove(u);
                }
                Call::Publish(list) => {
                    advertised.clone_from(list);
                    for u in list {
                        assert!(
                            rules.contains(u),
                            "{u} published without rules: {journal:#?}"
                        );
                        assert!(at_proxy.contains(u), "{u} published but not at the proxy");
                    }
                }
                Call::InstallFailed(_)
                | Call::RemoveFailed(_)
                | Call::Check(_)
                | Call::Repair(_) => {}
            }
        }
    }
}
