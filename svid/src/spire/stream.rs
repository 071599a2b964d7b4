//! The background tasks of [`SpireSource`](super::source::SpireSource): one follows the
//! X.509-SVID stream of one identity, one follows the trust bundle stream. Both
//! re-subscribe with back-off when the stream fails or ends (an agent restart).

use std::sync::Arc;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use spire_api::pb::spire::api::agent::delegatedidentity::v1::SubscribeToX509sviDsResponse;
use spire_api::pb::spire::api::agent::delegatedidentity::v1::delegated_identity_client::DelegatedIdentityClient as PbClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::source::{SourceConfig, Subject};
use super::{SpireError, deadline};
use crate::bundle::{SharedTrustBundles, TrustBundleSet};
use crate::id::SpiffeId;
use crate::x509::X509Svid;

/// What the SVID stream of one identity last said.
#[derive(Debug, Clone, Default)]
pub(super) struct SvidState {
    /// The latest SVID for the identity (kept across stream failures, so that a
    /// still-valid one is served while the agent is unreachable).
    pub(super) svid: Option<Arc<X509Svid>>,
    /// Why the last subscription or message failed; cleared by a usable message.
    pub(super) error: Option<Arc<SpireError>>,
}

fn backoff(config: &SourceConfig) -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(config.initial_backoff)
        .with_max_delay(config.max_backoff)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Follows the SVIDs of `id` for `subject` until aborted.
pub(super) async fn follow_svids(
    channel: Channel,
    id: SpiffeId,
    subject: Subject,
    config: SourceConfig,
    tx: watch::Sender<SvidState>,
    pushed: watch::Sender<()>,
) {
    const CALL: &str = "SubscribeToX509SVIDs";
    let mut delays = backoff(&config);
    loop {
        let request = subject.to_request();
        let mut client = PbClient::new(channel.clone());
        let failure = match deadline(
            CALL,
            config.timeout,
            client.subscribe_to_x509svi_ds(request),
        )
        .await
        {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            delays = backoff(&config);
                            apply(&tx, &pushed, &id, &subject, &message);
                        }
                        Ok(None) => break SpireError::StreamEnded { call: CALL },
                        Err(status) => break SpireError::status(CALL, status),
                    }
                }
            }
            Err(e) => e,
        };
        tracing::warn!(identity = %id, %subject, error = %failure, "SPIRE SVID stream failed; re-subscribing");
        let failure = Arc::new(failure);
        tx.send_modify(|s| s.error = Some(failure));
        let delay = delays.next().unwrap_or(config.max_backoff);
        tokio::time::sleep(delay).await;
    }
}

/// Takes one stream message: the SVID for `id`, or why there is none. A new SVID (not the
/// one held, which the agent sends again on each subscription) is announced on `pushed`
/// once it is in `tx`.
fn apply(
    tx: &watch::Sender<SvidState>,
    pushed: &watch::Sender<()>,
    id: &SpiffeId,
    subject: &Subject,
    message: &SubscribeToX509sviDsResponse,
) {
    match svid_for(id, subject, message) {
        Ok(svid) => {
            tracing::debug!(identity = %id, not_after = ?svid.not_after(), "SPIRE pushed an SVID");
            let mut new = false;
            tx.send_modify(|s| {
                new = s
                    .svid
                    .as_ref()
                    .is_none_or(|held| held.leaf() != svid.leaf());
                s.svid = Some(Arc::new(svid));
                s.error = None;
            });
            if new {
                pushed.send_replace(());
            }
        }
        // The entry is gone (or never existed): stop serving the identity.
        Err(e @ (SpireError::NoEntry { .. } | SpireError::OtherIdentity { .. })) => {
            tracing::warn!(identity = %id, %subject, error = %e, "SPIRE issues no SVID");
            tx.send_modify(|s| {
                s.svid = None;
                s.error = Some(Arc::new(e));
            });
        }
        Err(e) => {
            tracing::warn!(identity = %id, error = %e, "unusable SVID from SPIRE");
            tx.send_modify(|s| s.error = Some(Arc::new(e)));
        }
    }
}

fn svid_for(
    id: &SpiffeId,
    subject: &Subject,
    message: &SubscribeToX509sviDsResponse,
) -> Result<X509Svid, SpireError> {
    if message.x509_svids.is_empty() {
        return Err(SpireError::NoEntry {
            id: id.clone(),
            subject: subject.to_string(),
        });
    }
    let wanted = id.to_string();
    let mut returned = Vec::new();
    for item in &message.x509_svids {
        let Some(svid) = &item.x509_svid else {
            continue;
        };
        let got = svid.id.as_ref().map_or_else(String::new, |i| {
            format!("spiffe://{}{}", i.trust_domain, i.path)
        });
        if got != wanted {
            returned.push(got);
            continue;
        }
        let chain: Vec<u8> = svid
            .cert_chain
            .iter()
            .flat_map(|c| c.iter().copied())
            .collect();
        // The spiffe crate's type is the boundary; ours checks the X.509-SVID rules.
        let theirs = ::spiffe::X509Svid::parse_from_der(&chain, &item.x509_svid_key)
            .map_err(crate::spiffe::ConversionError::from)?;
        let ours = X509Svid::try_from(&theirs)?;
        if ours.spiffe_id() != id {
            return Err(SpireError::BadResponse {
                call: "SubscribeToX509SVIDs",
                reason: format!("the SVID for {id} carries {}", ours.spiffe_id()),
            });
        }
        return Ok(ours);
    }
    Err(SpireError::OtherIdentity {
        id: id.clone(),
        subject: subject.to_string(),
        returned,
    })
}

/// Follows the trust bundles until aborted: each push replaces `shared`, then is sent on
/// `tx`.
pub(super) async fn follow_bundles(
    channel: Channel,
    config: SourceConfig,
    tx: watch::Sender<Option<TrustBundleSet>>,
    shared: SharedTrustBundles,
) {
    const CALL: &str = "SubscribeToX509Bundles";
    let client = spire_api::DelegatedIdentityClient::new(channel);
    let mut delays = backoff(&config);
    loop {
        let failure = match tokio::time::timeout(config.timeout, client.stream_x509_bundles()).await
        {
            Ok(Ok(stream)) => {
                let mut stream = std::pin::pin!(stream);
                loop {
                    match futures_util::StreamExt::next(&mut stream).await {
                        Some(Ok(set)) => match TrustBundleSet::try_from(&set) {
                            Ok(ours) => {
                                delays = backoff(&config);
                                tracing::debug!(bundles = ours.len(), "SPIRE pushed trust bundles");
                                shared.replace(ours.clone());
                                tx.send_replace(Some(ours));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "unusable trust bundle from SPIRE");
                            }
                        },
                        Some(Err(source)) => {
                            break SpireError::Agent { call: CALL, source };
                        }
                        None => break SpireError::StreamEnded { call: CALL },
                    }
                }
            }
            Ok(Err(source)) => SpireError::Agent { call: CALL, source },
            Err(_) => SpireError::Timeout {
                call: CALL,
                after: config.timeout,
            },
        };
        tracing::warn!(error = %failure, "SPIRE bundle stream failed; re-subscribing");
        let delay = delays.next().unwrap_or(config.max_backoff);
        tokio::time::sleep(delay).await;
    }
}
