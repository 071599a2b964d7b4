//! One watch per kind: kube-rs's `watcher` (re-listing and back-off included) into a
//! reflector store.
//!
//! A watch error never empties a store: the reflector keeps the objects it has until a new
//! list has been read completely (`InitDone`), and then swaps them in at once. So an API
//! server outage leaves the agent with its last view, and reconnecting resyncs it.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures_util::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Where a watch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listing {
    /// Not listed yet.
    Waiting,
    /// Listed at least once: the store holds a complete view.
    Listed,
    /// The API server does not serve this kind (its CRD is not installed): there are
    /// none. The watch keeps retrying and lists them once the kind appears.
    Absent,
}

/// Runs a watch of `api` into `writer` until `shutdown`: bumps `changed` whenever the store
/// changed, and reports in `listing` once it holds a complete view.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run<K>(
    kind: &'static str,
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    trim: fn(&mut K),
    changed: watch::Sender<u64>,
    listing: watch::Sender<Listing>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let stream = watcher(api, config)
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    // Whether the last item was an error (errors are logged once per outage).
    let mut failing = false;
    loop {
        let item = tokio::select! {
            () = shutdown.cancelled() => return,
            item = stream.next() => item,
        };
        match item {
            None => return,
            Some(Ok(event)) => {
                if failing {
                    info!(kind, "watch resumed");
                    failing = false;
                }
                match event {
                    watcher::Event::Init | watcher::Event::InitApply(_) => {}
                    watcher::Event::InitDone => {
                        listing.send_if_modified(|s| {
                            let was = *s;
                            *s = Listing::Listed;
                            was != Listing::Listed
                        });
                        changed.send_modify(|g| *g += 1);
                    }
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                        changed.send_modify(|g| *g += 1);
                    }
                }
            }
            Some(Err(e)) => {
                if not_served(&e) {
                    let first = listing.send_if_modified(|s| {
                        let was = *s;
                        if was == Listing::Waiting {
                            *s = Listing::Absent;
                        }
                        was == Listing::Waiting
                    });
                    if first {
                        info!(
                            kind,
                            "the API server does not serve this kind: there are none (watching for it to appear)"
                        );
                    }
                    continue;
                }
                metrics.failure("kubernetes_watch");
                if !failing {
                    warn!(kind, error = %e, "watch failed; keeping the last view and retrying");
                    failing = true;
                }
            }
        }
    }
}

/// Whether the error says the API server has no such resource (404 on the list).
fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 404,
        _ => false,
    }
}
