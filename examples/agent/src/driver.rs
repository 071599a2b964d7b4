//! The reconcile loop: when to run a pass of the [`Reconciler`], and the bookkeeping of each
//! pass (logs, metrics, the pod state file).
//!
//! A pass runs when the workloads change, when another node's pod status changes, when a
//! proxy has answered its snapshot, every reconcile interval (these passes also verify the
//! rules), and after a failure, with back-off.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use tokio::sync::{Notify, watch};
use tracing::warn;

use crate::desired::{LocalPod, RemoteReady, Settings, local_desired};
use crate::metrics::Metrics;
use crate::reconcile::{Cause, Outcome, ProxyChannel, Publisher, Reconciler, RuleInstaller};
use crate::state::PodStateFile;
use crate::workloads::Cluster;

/// First retry delay after a pass with failures; doubles up to the reconcile interval.
const RETRY_MIN: Duration = Duration::from_millis(500);

/// What wakes the loop besides its timers.
#[derive(Debug)]
pub(crate) struct Inputs {
    /// The current workloads.
    pub(crate) cluster: watch::Receiver<Arc<Cluster>>,
    /// The other nodes' pod statuses; its sender must outlive the loop.
    pub(crate) remote: watch::Receiver<Arc<RemoteReady>>,
    /// Notified when a proxy has answered its snapshot.
    pub(crate) proxy_answered: Arc<Notify>,
}

/// Runs reconcile passes and keeps their bookkeeping.
#[derive(Debug)]
pub(crate) struct Driver<Z, R, P> {
    reconciler: Reconciler<Z, R, P>,
    settings: Settings,
    metrics: Arc<Metrics>,
    state_file: PodStateFile,
    /// The pods skipped in the last pass, so each reason is logged once.
    last_skipped: Vec<(String, String)>,
    /// The reconcile interval: periodic checks, and the longest retry delay.
    interval: Duration,
    /// The failed steps of the last pass: message by pod uid.
    failures: watch::Sender<Arc<BTreeMap<String, String>>>,
}

impl<Z: ProxyChannel, R: RuleInstaller, P: Publisher> Driver<Z, R, P> {
    pub(crate) fn new(
        reconciler: Reconciler<Z, R, P>,
        settings: Settings,
        metrics: Arc<Metrics>,
        state_file: PodStateFile,
        interval: Duration,
    ) -> Self {
        Self {
            reconciler,
            settings,
            metrics,
            state_file,
            last_skipped: Vec::new(),
            interval,
            failures: watch::Sender::new(Arc::default()),
        }
    }

    /// The failed steps of each pass (message by pod uid), updated after every pass.
    pub(crate) fn failures(&self) -> watch::Receiver<Arc<BTreeMap<String, String>>> {
        self.failures.subscribe()
    }

    /// One pass over `cluster`; with `periodic`, the rules are verified too.
    pub(crate) async fn pass(&mut self, cluster: &Cluster, periodic: bool) -> Outcome {
        let desired = local_desired(cluster, &self.settings);
        if desired.skipped != self.last_skipped {
            for (pod, reason) in &desired.skipped {
                warn!(%pod, %reason, "pod of an enrolled namespace cannot be enrolled");
            }
            self.last_skipped.clone_from(&desired.skipped);
        }
        let outcome = self
            .reconciler
            .reconcile(cluster, &desired.pods, periodic)
            .await;
        self.metrics.record(&outcome, self.reconciler.published());
        self.save();
        self.failures.send_replace(Arc::new(
            outcome
                .failures
                .iter()
                .map(|(uid, e)| (uid.clone(), e.to_string()))
                .collect(),
        ));
        outcome
    }

    /// Runs passes until `stop` resolves (the first one after `first`, the outcome of the
    /// pass run before), then saves the pod state file and returns what `stop` gave.
    pub(crate) async fn run_until<T>(
        mut self,
        mut inputs: Inputs,
        first: &Outcome,
        stop: impl Future<Output = T>,
    ) -> anyhow::Result<T> {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        let mut retry = next_retry(first, None, self.interval);
        tokio::pin!(stop);
        let stopped = loop {
            let sleep_retry = async {
                match retry {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            let periodic = tokio::select! {
                s = &mut stop => break s,
                r = inputs.cluster.changed() => {
                    if r.is_err() {
                        bail!("workloads watcher stopped");
                    }
                    false
                }
                _ = tick.tick() => true,
                () = inputs.proxy_answered.notified() => false,
                // The sender outlives the loop: this never fails.
                _ = inputs.remote.changed() => false,
                () = sleep_retry => false,
            };
            let cluster = inputs.cluster.borrow_and_update().clone();
            let outcome = self.pass(&cluster, periodic).await;
            retry = next_retry(&outcome, retry, self.interval);
        };
        self.save();
        Ok(stopped)
    }

    /// Writes the pods that may have rules to the pod state file.
    fn save(&mut self) {
        let with_rules: Vec<LocalPod> = self.reconciler.with_rules();
        if let Err(e) = self.state_file.store(with_rules) {
            warn!(error = %e, "cannot save the pod state file");
        }
    }
}

/// When to run again after a pass: soon (with back-off) if something failed.
///
/// A missing proxy is not retried on a timer: its connection wakes the loop.
fn next_retry(outcome: &Outcome, previous: Option<Duration>, max: Duration) -> Option<Duration> {
    if outcome
        .failures
        .iter()
        .all(|(_, e)| e.cause == Cause::ProxyUnavailable)
    {
        return None;
    }
    Some(previous.map_or(RETRY_MIN, |d| (d * 2).min(max)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::EffectError;

    #[test]
    fn retries_back_off_and_stop_when_clean() {
        let max = Duration::from_secs(10);
        let failed = Outcome {
            failures: vec![("a".into(), EffectError::new(Cause::RulesInstall, "x"))],
            ..Outcome::default()
        };
        assert_eq!(next_retry(&Outcome::default(), Some(RETRY_MIN), max), None);
        let mut d = next_retry(&failed, None, max);
        assert_eq!(d, Some(RETRY_MIN));
        for _ in 0..10 {
            d = next_retry(&failed, d, max);
        }
        assert_eq!(d, Some(max));
        let no_proxy = Outcome {
            failures: vec![("a".into(), EffectError::new(Cause::ProxyUnavailable, "x"))],
            ..Outcome::default()
        };
        assert_eq!(
            next_retry(&no_proxy, d, max),
            None,
            "a connecting proxy wakes the loop"
        );
    }
}
