//! Workload certificates as the data plane sees them: one SVID per identity, with the roots
//! to verify peers against, and a summary for `/config_dump` and metrics.

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use meshwire_svid::{SpiffeId, TrustBundleSet, X509Svid};

/// A certificate and the trust bundles that came with it.
#[derive(Debug, Clone)]
pub(crate) struct Material {
    pub(crate) svid: X509Svid,
    pub(crate) roots: TrustBundleSet,
}

/// What `/config_dump` shows of a held certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct CertSummary {
    pub(crate) identity: String,
    pub(crate) state: &'static str,
    pub(crate) not_before: Option<u64>,
    pub(crate) not_after: Option<u64>,
    pub(crate) refresh_at: Option<u64>,
    pub(crate) chain_length: usize,
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl CertSummary {
    pub(crate) fn of(svid: &X509Svid) -> Self {
        Self {
            identity: svid.spiffe_id().to_string(),
            state: if svid.is_valid_at(SystemTime::now()) {
                "valid"
            } else {
                "expired"
            },
            not_before: Some(unix(svid.not_before())),
            not_after: Some(unix(svid.not_after())),
            refresh_at: Some(unix(svid.refresh_at())),
            chain_length: svid.cert_chain().len(),
        }
    }
}

/// Source of workload certificates.
pub(crate) trait Certificates: Send + Sync + 'static {
    /// The current certificate for `id`, fetching it if none is held (waits for the CA).
    fn fetch(&self, id: &SpiffeId) -> BoxFuture<'_, anyhow::Result<Arc<Material>>>;
    /// Starts fetching `id` in the background (a pod with that identity arrived).
    fn prefetch(&self, id: &SpiffeId);
    /// Stops holding and refreshing `id` (no pod on this node has it any more).
    fn forget(&self, id: &SpiffeId);
    /// Everything held now.
    fn held(&self) -> Vec<CertSummary>;
}

/// [`Certificates`] backed by the `svid` certificate manager (CA client in production, a local
/// CA in tests): one handle per identity a pod here needs, refreshed at half-life by the
/// manager; the expiry metric follows every refresh.
pub(crate) struct Managed<S> {
    manager: meshwire_svid::manager::CertificateManager<S>,
    metrics: Arc<crate::metrics::Metrics>,
    held: std::sync::Mutex<std::collections::HashMap<SpiffeId, Held>>,
}

struct Held {
    handle: meshwire_svid::manager::CertificateHandle,
    /// Material built from the manager's current certificate (rebuilt when it changes).
    material: Option<(Arc<meshwire_svid::x509::FetchedSvid>, Arc<Material>)>,
}

impl<S> std::fmt::Debug for Managed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Managed").finish_non_exhaustive()
    }
}

impl<S: meshwire_svid::manager::CertificateSource> Managed<S> {
    pub(crate) fn new(source: S, metrics: Arc<crate::metrics::Metrics>) -> Arc<Self> {
        Arc::new(Self {
            manager: meshwire_svid::manager::CertificateManager::new(
                source,
                meshwire_svid::manager::ManagerConfig::default(),
            ),
            metrics,
            held: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<SpiffeId, Held>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds `id` (at `priority`) if it is not held yet, and follows its certificate for the
    /// expiry metric and the log.
    fn ensure_held(&self, id: &SpiffeId, priority: meshwire_svid::manager::Priority) {
        let mut held = self.lock();
        if held.contains_key(id) {
            return;
        }
        let handle = self.manager.hold(id, priority);
        let mut changes = handle.subscribe();
        let metrics = self.metrics.clone();
        let identity = id.to_string();
        // Ends when the manager forgets the identity (its state sender is dropped).
        tokio::spawn(async move {
            loop {
                let state = changes.borrow_and_update().clone();
                match (&state.certificate, &state.last_error) {
                    (Some(c), _) => {
                        tracing::info!(
                            identity = %identity,
                            not_after = unix(c.svid.not_after()),
                            refresh_at = unix(c.svid.refresh_at()),
                            "workload certificate ready"
                        );
                        metrics.set_certificate_expiry(&identity, c.svid.not_after());
                    }
                    (None, Some(e)) => {
                        tracing::warn!(identity = %identity, error = %e, "fetching the workload certificate failed");
                    }
                    (None, None) => {}
                }
                if changes.changed().await.is_err() {
                    break;
                }
            }
        });
        held.insert(
            id.clone(),
            Held {
                handle,
                material: None,
            },
        );
    }

    fn material(
        &self,
        id: &SpiffeId,
        fetched: Arc<meshwire_svid::x509::FetchedSvid>,
    ) -> anyhow::Result<Arc<Material>> {
        let mut held = self.lock();
        if let Some(h) = held.get(id)
            && let Some((f, m)) = &h.material
            && Arc::ptr_eq(f, &fetched)
        {
            return Ok(m.clone());
        }
        let mut roots = TrustBundleSet::new();
        if !fetched.roots.is_empty() {
            roots.insert(meshwire_svid::TrustBundle::new(
                id.trust_domain().clone(),
                fetched.roots.clone(),
            )?);
        }
        let material = Arc::new(Material {
            svid: fetched.svid.clone(),
            roots,
        });
        if let Some(h) = held.get_mut(id) {
            h.material = Some((fetched, material.clone()));
        }
        Ok(material)
    }
}

impl<S: meshwire_svid::manager::CertificateSource> Certificates for Managed<S> {
    fn fetch(&self, id: &SpiffeId) -> BoxFuture<'_, anyhow::Result<Arc<Material>>> {
        self.ensure_held(id, meshwire_svid::manager::Priority::OnDemand);
        // A share of our own for the wait (released when done).
        let handle = self
            .manager
            .hold(id, meshwire_svid::manager::Priority::OnDemand);
        let id = id.clone();
        Box::pin(async move {
            let fetched = handle.get().await?;
            self.material(&id, fetched)
        })
    }

    fn prefetch(&self, id: &SpiffeId) {
        self.ensure_held(id, meshwire_svid::manager::Priority::Prefetch);
    }

    fn forget(&self, id: &SpiffeId) {
        if self.lock().remove(id).is_some() {
            tracing::info!(identity = %id, "workload certificate no longer needed");
        }
        self.metrics.remove_certificate(&id.to_string());
    }

    fn held(&self) -> Vec<CertSummary> {
        let mut out: Vec<CertSummary> = self
            .lock()
            .iter()
            .map(|(id, h)| {
                let state = h.handle.state();
                match &state.certificate {
                    Some(c) => CertSummary::of(&c.svid),
                    None => CertSummary {
                        identity: id.to_string(),
                        state: if state.last_error.is_some() {
                            "failed"
                        } else {
                            "pending"
                        },
                        not_before: None,
                        not_after: None,
                        refresh_at: None,
                        chain_length: 0,
                    },
                }
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}
