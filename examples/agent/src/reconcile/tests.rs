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

/// The journal entry of one effect on one pod: `add("a")` is `Call::Add("a".into())`.
macro_rules! call_constructors {
    ($($name:ident => $variant:ident),* $(,)?) => {
        $(fn $name(uid: &str) -> Call {
            Call::$variant(uid.into())
        })*
    };
}

call_constructors!(
    add => Add,
    del => Del,
    install => Install,
    install_failed => InstallFailed,
    check => Check,
    repair => Repair,
    remove => Remove,
    remove_failed => RemoveFailed,
);

fn stages<Z: ProxyChannel, R: RuleInstaller, P: Publisher>(
    r: &Reconciler<Z, R, P>,
) -> Vec<(String, Stage)> {
    r.tracked().map(|(p, s)| (p.uid.clone(), s)).collect()
}

const C: &Cluster = &Cluster {
    namespaces: BTreeMap::new(),
    pods: Vec::new(),
    policies: Vec::new(),
    services: Vec::new(),
    service_accounts: BTreeSet::new(),
};

#[tokio::test]
async fn enroll_order_is_add_then_rules_then_publish() {
    let (fake, mut r) = setup();
    let out = r.reconcile(C, &desired(&["a", "b"]), false).await;
    assert_eq!(
        fake.take_journal(),
        vec![
            add("a"),
            install("a"),
            add("b"),
            install("b"),
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
        vec![publish(&["b"]), remove("a"), del("a"), publish(&["b"])]
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
        vec![publish(&[]), remove("a"), del("a"), publish(&[])]
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
        vec![add("a"), add("b"), install("b"), publish(&["b"]),]
    );
    assert_eq!(out.failures.len(), 1);
    assert_eq!(out.failures[0].0, "a");
    assert_eq!(out.failures[0].1.cause, Cause::ProxyUnavailable);

    // The proxy comes back: the next pass retries from the start.
    fake.world().fail_add.clear();
    let out = r.reconcile(C, &desired(&["a", "b"]), false).await;
    assert_eq!(
        fake.take_journal(),
        vec![add("a"), install("a"), publish(&["a", "b"])]
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
    assert_eq!(fake.take_journal(), vec![del("a"), publish(&[])]);
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
        vec![add("a"), install_failed("a"), publish(&[])]
    );
    assert_eq!(out.failures[0].1.cause, Cause::RulesInstall);
    assert_eq!(stages(&r), vec![("a".to_owned(), Stage::HandedOver)]);

    fake.world().fail_install.clear();
    r.reconcile(C, &desired(&["a"]), false).await;
    assert_eq!(fake.take_journal(), vec![install("a"), publish(&["a"])]);
}

#[tokio::test]
async fn pod_that_never_got_rules_is_released_without_removal() {
    let (fake, mut r) = setup();
    fake.world().fail_install.insert("a".into());
    r.reconcile(C, &desired(&["a"]), false).await;
    fake.take_journal();
    r.reconcile(C, &desired(&[]), false).await;
    assert_eq!(fake.take_journal(), vec![del("a"), publish(&[])]);
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
        vec![publish(&[]), remove_failed("a"), publish(&[])]
    );
    assert_eq!(out.failures[0].1.cause, Cause::RulesRemove);
    assert_eq!(stages(&r), vec![("a".to_owned(), Stage::RulesInstalled)]);

    fake.world().fail_remove.clear();
    let out = r.reconcile(C, &desired(&[]), false).await;
    assert_eq!(
        fake.take_journal(),
        vec![remove("a"), del("a"), publish(&[])]
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
        vec![publish(&[]), remove("a"), del("a"), publish(&[])]
    );
    assert_eq!(stages(&r), vec![("a".to_owned(), Stage::HandedOver)]);
    fake.world().fail_del.clear();
    r.reconcile(C, &desired(&[]), false).await;
    assert_eq!(fake.take_journal(), vec![del("a"), publish(&[])]);
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
            remove("a"),
            del("a"),
            add("a"),
            install("a"),
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
        vec![publish(&["a", "b"]), check("a"), check("b")]
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
            check("a"),
            repair("a"),
            check("b"),
            add("b"),
        ]
    );
    assert_eq!(out.repaired, vec!["a"]);
    assert_eq!(out.resent, vec!["b"]);

    // No proxy connected: nothing is re-sent (its snapshot will carry the pods).
    fake.world().held = None;
    r.reconcile(C, &desired(&["a", "b"]), true).await;
    assert_eq!(
        fake.take_journal(),
        vec![publish(&["a", "b"]), check("a"), check("b")]
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
    assert_eq!(fake.take_journal(), vec![publish(&["a", "b"]), add("b")]);
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
            add("a"),
            check("a"),
            repair("a"),
            check("b"),
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
        vec![publish(&["a", "b"]), check("a"), add("b"),]
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
            remove("gone"),
            del("gone"),
            add("keep"),
            install("keep"),
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
    assert_eq!(fake.take_journal(), vec![add("keep"), publish(&["keep"])]);
    assert_eq!(stages(&r), vec![("keep".to_owned(), Stage::Restored)]);
    assert_eq!(r.with_rules().len(), 1, "still remembered as having rules");

    // Unlabelled while the proxy is away: withdrawn first, then rules removed, then Del.
    r.reconcile(C, &desired(&[]), false).await;
    assert_eq!(
        fake.take_journal(),
        vec![publish(&[]), remove("keep"), del("keep"), publish(&[])]
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
    assert!(journal.contains(&install_failed("b")));
    assert!(journal.contains(&remove_failed("c")));
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
            Call::InstallFailed(_) | Call::RemoveFailed(_) | Call::Check(_) | Call::Repair(_) => {}
        }
    }
}
