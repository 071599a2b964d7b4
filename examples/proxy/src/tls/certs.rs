//! Workload certificates as the data plane sees them: one certificate per identity, held by
//! the `svid` certificate manager and presented through its [`CertificateResolver`], with a
//! summary for `/config_dump` and metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use meshwire_svid::manager::{
    CertificateManager, CertificateResolver, CertificateSource, ManagerConfig, Priority,
};
use meshwire_svid::{
    IdentityPolicy, SharedTrustBundles, SpiffeId, TrustBundle, TrustBundleSet, X509Svid,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;

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

/// Source of the TLS configurations of workload identities.
pub(crate) trait Certificates: Send + Sync + 'static {
    /// A client configuration presenting `id`'s certificate to servers satisfying
    /// `expected`; fetches the certificate if none is held (waits for the CA).
    fn client_config(
        &self,
        id: &SpiffeId,
        expected: IdentityPolicy,
    ) -> BoxFuture<'_, anyhow::Result<Arc<rustls::ClientConfig>>>;
    /// A server configuration presenting `id`'s certificate to clients of its trust domain;
    /// fetches the certificate if none is held (waits for the CA).
    fn server_config(
        &self,
        id: &SpiffeId,
    ) -> BoxFuture<'_, anyhow::Result<Arc<rustls::ServerConfig>>>;
    /// Starts fetching `id` in the background (a pod with that identity arrived).
    fn prefetch(&self, id: &SpiffeId);
    /// Stops holding and refreshing `id` (no pod on this node has it any more).
    fn forget(&self, id: &SpiffeId);
    /// Everything held now.
    fn held(&self) -> Vec<CertSummary>;
}

/// [`Certificates`] backed by the `svid` certificate manager (CA client or SPIRE in
/// production, a local CA in tests): one resolver per identity a pod here needs, whose
/// certificate the manager refreshes at half-life (configurations present the new one without
/// being rebuilt); the expiry metric follows every refresh.
///
/// Peers are verified against the roots that came with the identity's certificate (so new
/// roots count from its next refresh), or, with [`Managed::with_live_roots`], against trust
/// bundles that change under the configurations (SPIRE's, as the agent pushes them).
pub(crate) struct Managed<S> {
    manager: CertificateManager<S>,
    crypto: Arc<CryptoProvider>,
    metrics: Arc<crate::metrics::Metrics>,
    live_roots: Option<SharedTrustBundles>,
    held: Mutex<HashMap<SpiffeId, Held>>,
}

struct Held {
    resolver: Arc<CertificateResolver>,
    /// The server configuration and the certificate's roots it trusts (rebuilt when the
    /// roots change; with live roots the key is empty and never changes).
    server: Option<(Vec<CertificateDer<'static>>, Arc<rustls::ServerConfig>)>,
}

impl<S> std::fmt::Debug for Managed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Managed").finish_non_exhaustive()
    }
}

impl<S: CertificateSource> Managed<S> {
    pub(crate) fn new(
        source: S,
        crypto: Arc<CryptoProvider>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        Self::build(source, crypto, metrics, None)
    }

    /// Like [`Managed::new`], but every configuration verifies peers against `roots` as they
    /// are at each handshake (SPIRE's trust bundles: a root added during a CA rotation is
    /// trusted at once, without a certificate refresh).
    pub(crate) fn with_live_roots(
        source: S,
        crypto: Arc<CryptoProvider>,
        metrics: Arc<crate::metrics::Metrics>,
        roots: SharedTrustBundles,
    ) -> Arc<Self> {
        Self::build(source, crypto, metrics, Some(roots))
    }

    fn build(
        source: S,
        crypto: Arc<CryptoProvider>,
        metrics: Arc<crate::metrics::Metrics>,
        live_roots: Option<SharedTrustBundles>,
    ) -> Arc<Self> {
        Arc::new(Self {
            manager: CertificateManager::new(source, ManagerConfig::default()),
            crypto,
            metrics,
            live_roots,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// What `id`'s configurations verify peers against, given the roots that came with its
    /// certificate; and the part of those roots a cached configuration depends on.
    fn verifier_roots(
        &self,
        id: &SpiffeId,
        roots: Vec<CertificateDer<'static>>,
    ) -> anyhow::Result<(SharedTrustBundles, Vec<CertificateDer<'static>>)> {
        match &self.live_roots {
            Some(live) => Ok((live.clone(), Vec::new())),
            None => Ok((bundles(id, &roots)?.into(), roots)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SpiffeId, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `id` (at `priority`) if it is not held yet, and follows its certificate for the
    /// expiry metric and the log.
    fn ensure_held(&self, id: &SpiffeId, priority: Priority) {
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
            // A source may hand out the same certificate again (SPIRE before it rotated):
            // log each certificate once.
            let mut logged: Option<CertificateDer<'static>> = None;
            loop {
                let state = changes.borrow_and_update().clone();
                match (&state.certificate, &state.last_error) {
                    (Some(c), _) if logged.as_ref() == Some(c.svid.leaf()) => {}
                    (Some(c), _) => {
                        logged = Some(c.svid.leaf().clone());
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
                resolver: CertificateResolver::new(handle, self.crypto.clone()),
                server: None,
            },
        );
    }

    /// Waits for a valid certificate of `id`; returns its resolver and the CA roots that came
    /// with the certificate.
    async fn ready(
        &self,
        id: &SpiffeId,
    ) -> anyhow::Result<(Arc<CertificateResolver>, Vec<CertificateDer<'static>>)> {
        self.ensure_held(id, Priority::OnDemand);
        // A share of our own for the wait (released when done).
        let handle = self.manager.hold(id, Priority::OnDemand);
        let fetched = handle.get().await?;
        let resolver = match self.lock().get(id) {
            Some(h) => h.resolver.clone(),
            // Forgotten meanwhile: the configuration keeps the identity held while it lives.
            None => CertificateResolver::new(handle, self.crypto.clone()),
        };
        Ok((resolver, fetched.roots.clone()))
    }
}

/// The trust bundle of `id`'s trust domain made of the CA `roots` (none if the CA sent none).
fn bundles(id: &SpiffeId, roots: &[CertificateDer<'static>]) -> anyhow::Result<TrustBundleSet> {
    let mut set = TrustBundleSet::new();
    if !roots.is_empty() {
        set.insert(TrustBundle::new(id.trust_domain().clone(), roots.to_vec())?);
    }
    Ok(set)
}

impl<S: CertificateSource> Certificates for Managed<S> {
    fn client_config(
        &self,
        id: &SpiffeId,
        expected: IdentityPolicy,
    ) -> BoxFuture<'_, anyhow::Result<Arc<rustls::ClientConfig>>> {
        let id = id.clone();
        Box::pin(async move {
            let (resolver, roots) = self.ready(&id).await?;
            let (verifier_roots, _) = self.verifier_roots(&id, roots)?;
            Ok(Arc::new(resolver.client_config(verifier_roots, expected)?))
        })
    }

    fn server_config(
        &self,
        id: &SpiffeId,
    ) -> BoxFuture<'_, anyhow::Result<Arc<rustls::ServerConfig>>> {
        let id = id.clone();
        Box::pin(async move {
            let (resolver, roots) = self.ready(&id).await?;
            let (verifier_roots, key) = self.verifier_roots(&id, roots)?;
            if let Some(h) = self.lock().get(&id)
                && let Some((r, cfg)) = &h.server
                && *r == key
                && Arc::ptr_eq(&h.resolver, &resolver)
            {
                return Ok(cfg.clone());
            }
            let policy = IdentityPolicy::SameTrustDomain(id.trust_domain().clone());
            let cfg = Arc::new(resolver.server_config(verifier_roots, policy)?);
            if let Some(h) = self.lock().get_mut(&id)
                && Arc::ptr_eq(&h.resolver, &resolver)
            {
                h.server = Some((key, cfg.clone()));
            }
            Ok(cfg)
        })
    }

    fn prefetch(&self, id: &SpiffeId) {
        self.ensure_held(id, Priority::Prefetch);
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
                let state = h.resolver.handle().state();
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

#[cfg(test)]
mod tests;
