//! SPIRE in PID mode (`SPIRE_SUBJECT=pid`): the SPIRE agent attests each pod identity
//! through a process of a pod with that identity, found by scanning `/proc` for a process
//! whose network namespace is the pod's (the namespace descriptor ZDS gave the proxy).
//!
//! [`PidSource`] wraps the [`SpireSource`]: before each fetch it picks the process (keeping
//! the one picked before while it still lives in one of the identity's pods) and asks SPIRE
//! by exactly that [`Subject::Pid`]. When SPIRE has no entry of the identity for that
//! process (in Kubernetes the lowest PID is the sandbox's pause process, which entries may
//! not match), the next fetch asks by another process of the identity's pods; when every
//! process was refused, it starts over. When no process is found within the deadline, the
//! fetch fails with [`PidError::NoProcess`]; the certificate manager retries it later.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use meshwire_netns::ns::{self, NsId};
use meshwire_svid::SpiffeId;
use meshwire_svid::manager::CertificateSource;
use meshwire_svid::spire::SpireError;
use meshwire_svid::spire::source::{SpireSource, Subject};
use meshwire_svid::x509::FetchedSvid;

use crate::dataplane::DataPlane;

/// The network namespaces of the pods on this node that have an identity.
pub(crate) trait PodNamespaces: Send + Sync + 'static {
    /// The namespaces of the pods whose workload identity is `id`.
    fn namespaces_of(&self, id: &SpiffeId) -> Vec<NsId>;
}

/// The data plane, once it exists (it is made after the certificate source it uses).
impl PodNamespaces for OnceLock<Weak<DataPlane>> {
    fn namespaces_of(&self, id: &SpiffeId) -> Vec<NsId> {
        self.get()
            .and_then(Weak::upgrade)
            .map(|dp| dp.namespaces_of(id))
            .unwrap_or_default()
    }
}

/// Why a PID-mode fetch failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PidError {
    /// No pod of the identity has a process (yet): nothing for SPIRE to attest.
    #[error(
        "no process found in the network namespace of any pod with identity {id} \
         ({pods} pod(s) on this node) within {waited:?}; SPIRE cannot attest it by PID, retrying later"
    )]
    NoProcess {
        id: SpiffeId,
        pods: usize,
        waited: Duration,
    },
    /// `/proc` could not be read.
    #[error("scanning /proc: {0}")]
    Scan(#[from] meshwire_netns::Error),
    /// The blocking task scanning `/proc` did not finish.
    #[error("scanning /proc: {0}")]
    ScanTask(#[from] tokio::task::JoinError),
    /// The SPIRE agent issued no SVID for the process.
    #[error(transparent)]
    Spire(#[from] SpireError),
}

/// A [`CertificateSource`] that asks SPIRE by the PID of a process of the identity's pods.
pub(crate) struct PidSource<P> {
    spire: SpireSource,
    pods: Arc<P>,
    /// How long a fetch waits for a process to appear in a pod.
    wait: Duration,
    /// How often it looks meanwhile.
    poll: Duration,
    /// The processes of each identity: picked, and refused by SPIRE.
    picks: Mutex<HashMap<SpiffeId, Picks>>,
}

/// What the source knows of one identity's processes.
#[derive(Debug, Default)]
struct Picks {
    /// The process the identity was attested through last.
    picked: Option<u32>,
    /// Processes SPIRE issued no SVID of the identity for, while they live: passed over
    /// for another process of the identity's pods.
    refused: BTreeSet<u32>,
}

impl<P: PodNamespaces> PidSource<P> {
    pub(crate) fn new(spire: SpireSource, pods: Arc<P>, wait: Duration) -> Self {
        Self {
            spire,
            pods,
            wait,
            poll: Duration::from_millis(250),
            picks: Mutex::new(HashMap::new()),
        }
    }

    fn picks(&self) -> std::sync::MutexGuard<'_, HashMap<SpiffeId, Picks>> {
        self.picks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A process of one of `id`'s pods: the one picked before if it is still there, else
    /// the lowest process id found that SPIRE has not refused (all refused: the lowest,
    /// starting over); `None` if none of the pods has a process.
    async fn find(&self, id: &SpiffeId) -> Result<(Option<u32>, usize), PidError> {
        let namespaces = self.pods.namespaces_of(id);
        let pods = namespaces.len();
        let kept = self.picks().get(id).and_then(|p| p.picked);
        if let Some(pid) = kept
            && namespaces.iter().any(|ns| ns::is_in(pid, *ns))
        {
            return Ok((Some(pid), pods));
        }
        // One pass over /proc for all the identity's pods, off the runtime's workers.
        let pids = tokio::task::spawn_blocking(move || ns::processes_in_any(&namespaces)).await??;
        let mut picks = self.picks();
        let entry = picks.entry(id.clone()).or_default();
        entry.refused.retain(|pid| pids.contains(pid));
        let mut pick = pids
            .iter()
            .find(|pid| !entry.refused.contains(pid))
            .copied();
        if pick.is_none() && !pids.is_empty() {
            entry.refused.clear();
            pick = pids.first().copied();
        }
        entry.picked = pick;
        Ok((pick, pods))
    }

    /// SPIRE issued no SVID of `id` for `pid`: the next fetch asks by another process.
    fn refuse(&self, id: &SpiffeId, pid: u32) {
        let mut picks = self.picks();
        let entry = picks.entry(id.clone()).or_default();
        entry.refused.insert(pid);
        if entry.picked == Some(pid) {
            entry.picked = None;
        }
    }

    /// Waits up to the deadline for a process of one of `id`'s pods.
    async fn process_of(&self, id: &SpiffeId) -> Result<u32, PidError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let (found, pods) = self.find(id).await?;
            if let Some(pid) = found {
                return Ok(pid);
            }
            if tokio::time::Instant::now() + self.poll > deadline {
                return Err(PidError::NoProcess {
                    id: id.clone(),
                    pods,
                    waited: self.wait,
                });
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

impl<P: PodNamespaces> CertificateSource for PidSource<P> {
    type Error = PidError;

    async fn fetch(&self, id: &SpiffeId) -> Result<FetchedSvid, PidError> {
        let pid = self.process_of(id).await?;
        tracing::debug!(identity = %id, pid, "asking SPIRE by PID");
        // A new PID replaces the identity's subscription; the same one keeps it. Asked by
        // exactly this PID: never by the selectors the proxy would assert itself.
        match self.spire.fetch_as(id, Subject::Pid(pid)).await {
            Ok(fetched) => Ok(fetched),
            Err(e) => {
                if matches!(
                    e.root(),
                    SpireError::NoEntry { .. } | SpireError::OtherIdentity { .. }
                ) {
                    tracing::info!(identity = %id, pid, "SPIRE has no SVID of this identity for the process; the next attempt asks by another process of its pods");
                    self.refuse(id, pid);
                }
                Err(e.into())
            }
        }
    }

    fn forget(&self, id: &SpiffeId) {
        self.picks().remove(id);
        CertificateSource::forget(&self.spire, id);
    }

    /// The SVIDs SPIRE pushes for the process picked last (a new process means a new
    /// subscription, announced after the fetch that starts it).
    fn pushes(&self, id: &SpiffeId) -> Option<tokio::sync::watch::Receiver<()>> {
        CertificateSource::pushes(&self.spire, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    struct Fixed(Vec<NsId>);

    impl PodNamespaces for Fixed {
        fn namespaces_of(&self, _: &SpiffeId) -> Vec<NsId> {
            self.0.clone()
        }
    }

    fn source(namespaces: Vec<NsId>, wait: Duration) -> PidSource<Fixed> {
        // Never reached: the fetches below fail before asking SPIRE.
        let spire = SpireSource::connect_unix(
            "unix:///nonexistent/admin.sock",
            meshwire_svid::spire::source::SourceConfig::default(),
        )
        .unwrap();
        PidSource::new(spire, Arc::new(Fixed(namespaces)), wait)
    }

    /// A fresh pod namespace and a source that looks for processes in it (privileged).
    fn pod_source(
        test: &str,
        wait: Duration,
    ) -> Option<(testbed::Privileged, testbed::Namespace, PidSource<Fixed>)> {
        let privileged = testbed::require_privileged(test)?;
        let pod = testbed::Namespace::new().unwrap();
        let netns = meshwire_netns::NetNs::from_path(pod.path()).unwrap().id();
        Some((privileged, pod, source(vec![netns], wait)))
    }

    fn id() -> SpiffeId {
        SpiffeId::new("spiffe://cluster.local/ns/shop/sa/client").unwrap()
    }

    #[tokio::test]
    async fn no_process_is_a_clear_error_after_the_wait() {
        let Some((_p, _pod, src)) = pod_source("spire_pid::no_process", Duration::from_millis(300))
        else {
            return;
        };
        let err = src.fetch(&id()).await.unwrap_err();
        assert!(matches!(err, PidError::NoProcess { pods: 1, .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("spiffe://cluster.local/ns/shop/sa/client"),
            "{text}"
        );
        assert!(text.contains("no process found"), "{text}");
        // No pod at all: the same error.
        let err = source(Vec::new(), Duration::ZERO)
            .fetch(&id())
            .await
            .unwrap_err();
        assert!(matches!(err, PidError::NoProcess { pods: 0, .. }), "{err}");
    }

    #[tokio::test]
    async fn the_pods_process_is_picked_and_kept_while_it_lives() {
        let Some((_p, pod, src)) = pod_source("spire_pid::picked", Duration::from_secs(5)) else {
            return;
        };
        // A process that appears while the fetch waits is found.
        let spawner = {
            let pod_path = pod.path().to_owned();
            tokio::task::spawn_blocking(move || {
                std::thread::sleep(Duration::from_millis(400));
                let ns = meshwire_netns::NetNs::from_path(pod_path).unwrap();
                ns.run_on_thread(|| Command::new("sleep").arg("30").spawn().unwrap())
                    .unwrap()
            })
        };
        let pid = src.process_of(&id()).await.unwrap();
        let mut first = spawner.await.unwrap();
        assert_eq!(pid, first.id());
        // A second process does not displace the first while it lives …
        let second = pod.spawn(Command::new("sleep").arg("30")).unwrap();
        assert_eq!(src.process_of(&id()).await.unwrap(), first.id());
        // … and takes over once it is gone.
        first.kill().unwrap();
        first.wait().unwrap();
        assert_eq!(src.process_of(&id()).await.unwrap(), second.id());
    }

    #[tokio::test]
    async fn a_process_spire_refused_is_passed_over_for_another_of_the_pods() {
        let Some((_p, pod, src)) = pod_source("spire_pid::refused", Duration::from_secs(5)) else {
            return;
        };
        let first = pod.spawn(Command::new("sleep").arg("30")).unwrap();
        let second = pod.spawn(Command::new("sleep").arg("30")).unwrap();
        let (low, high) = if first.id() < second.id() {
            (first.id(), second.id())
        } else {
            (second.id(), first.id())
        };
        assert_eq!(src.process_of(&id()).await.unwrap(), low);
        // SPIRE has no entry for the lowest (e.g. the pause process): the next one is asked.
        src.refuse(&id(), low);
        assert_eq!(src.process_of(&id()).await.unwrap(), high);
        // Every process refused: start over from the lowest (an entry may have appeared).
        src.refuse(&id(), high);
        assert_eq!(src.process_of(&id()).await.unwrap(), low);
    }
}
