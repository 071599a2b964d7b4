//! SPIRE as the identity provider (feature `spire`).
//!
//! In production a node needs no CA key: SPIRE is the cluster's CA.
//!
//! - [`registrar::Registrar`] writes registration entries over the SPIRE **server**'s Entry
//!   API: one entry per service account of every enrolled namespace, parented to the node
//!   proxy's SPIFFE ID, with selectors `k8s:ns:<ns>` and `k8s:sa:<sa>`
//!   ([`registrar::EntrySpec::for_service_account`]), reconciled to a desired set.
//! - [`source::SpireSource`] is a [`CertificateSource`](crate::manager::CertificateSource)
//!   for the certificate manager over the SPIRE **agent**'s Delegated Identity API (its
//!   admin socket; the caller must be one of the agent's `authorized_delegates`). It
//!   subscribes per identity, by selectors or by PID ([`source::Subject`]), takes rotations
//!   from the stream, follows the trust bundle stream ([`source::SpireSource::bundles`]),
//!   re-subscribes with back-off when the agent restarts, and keeps serving a still-valid
//!   SVID while the agent is unreachable.
//!
//! Every call has a deadline. The library reads no environment: endpoints and timeouts are
//! arguments. Values cross the boundary as the `spiffe` crate's types (see
//! [`crate::spiffe`]).

use std::time::Duration;

use tonic::transport::Channel;

use crate::id::SpiffeId;
use crate::spiffe::ConversionError;

pub mod pb;
pub mod registrar;
mod selector;
pub mod source;
mod stream;

pub use selector::Selector;

/// The default admin socket of the SPIRE agent (ztunnel's `SPIRE_ADMIN_ENDPOINT_SOCKET`
/// default).
pub const DEFAULT_ADMIN_ENDPOINT: &str = "unix:///run/spire/sockets/admin.sock";

/// Why a SPIRE call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpireError {
    /// The endpoint is not a unix socket path or `unix://` URI.
    #[error("invalid SPIRE endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The call failed or SPIRE refused it.
    #[error("SPIRE {call}: {status}")]
    Status {
        /// The RPC.
        call: &'static str,
        /// The gRPC status.
        status: Box<tonic::Status>,
    },
    /// The call did not finish within its deadline.
    #[error("SPIRE {call} did not answer within {after:?}")]
    Timeout {
        /// The RPC.
        call: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// The spire-api client failed (transport, status, or an answer it refused).
    #[error("SPIRE {call}: {source}")]
    Agent {
        /// The RPC.
        call: &'static str,
        /// The client's error.
        #[source]
        source: spire_api::DelegatedIdentityError,
    },
    /// The stream ended (the agent or server closed it, e.g. while restarting).
    #[error("SPIRE {call} stream ended")]
    StreamEnded {
        /// The RPC.
        call: &'static str,
    },
    /// SPIRE answered something this crate cannot use.
    #[error("SPIRE {call} returned an unusable answer: {reason}")]
    BadResponse {
        /// The RPC.
        call: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No registration entry matches the workload: SPIRE issues it no SVID.
    #[error(
        "no SPIRE registration entry matches {subject} (wanted {id}); the workload gets no SVID"
    )]
    NoEntry {
        /// The identity wanted.
        id: SpiffeId,
        /// The PID or selectors the agent was asked about.
        subject: String,
    },
    /// The agent issued SVIDs for the workload, but none for the identity wanted.
    #[error("SPIRE issued {returned:?} for {subject}, not {id}")]
    OtherIdentity {
        /// The identity wanted.
        id: SpiffeId,
        /// The PID or selectors the agent was asked about.
        subject: String,
        /// The SPIFFE IDs it returned.
        returned: Vec<String>,
    },
    /// The identity has no subject (PID or selectors) and no Istio-shaped path to derive
    /// selectors from.
    #[error("no SPIRE subject (PID or selectors) is known for {0}")]
    NoSubject(SpiffeId),
    /// The agent's trust bundles lack the identity's trust domain.
    #[error("the SPIRE agent sent no trust bundle for {0}")]
    NoBundle(String),
    /// An SVID or bundle could not be converted.
    #[error("SPIRE answer: {0}")]
    Conversion(#[from] ConversionError),
    /// The error the identity's subscription last saw (shared by every fetch that reports
    /// it); [`SpireError::root`] unwraps it.
    #[error(transparent)]
    Subscription(std::sync::Arc<Self>),
    /// The certificate source was shut down.
    #[error("the SPIRE certificate source has shut down")]
    Closed,
}

impl SpireError {
    pub(crate) fn status(call: &'static str, status: tonic::Status) -> Self {
        Self::Status {
            call,
            status: Box::new(status),
        }
    }

    /// The gRPC code, for a [`SpireError::Status`].
    pub fn code(&self) -> Option<tonic::Code> {
        match self.root() {
            Self::Status { status, .. } => Some(status.code()),
            _ => None,
        }
    }

    /// The error itself, looking through [`SpireError::Subscription`].
    pub fn root(&self) -> &Self {
        match self {
            Self::Subscription(inner) => inner.root(),
            other => other,
        }
    }
}

/// Runs `fut` with a deadline of `after`; a timeout becomes [`SpireError::Timeout`] and a
/// gRPC error [`SpireError::Status`].
pub(crate) async fn deadline<T>(
    call: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, SpireError> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(status)) => Err(SpireError::status(call, status)),
        Err(_) => Err(SpireError::Timeout { call, after }),
    }
}

/// A lazily connecting gRPC channel to a SPIRE unix socket: `unix:///abs/path`,
/// `unix:/abs/path` or `/abs/path`. Connections are made on first use and re-made after
/// failures (so a restarted agent or server is reached again), each within
/// `connect_timeout`. Must be called inside a tokio runtime.
pub fn unix_channel(endpoint: &str, connect_timeout: Duration) -> Result<Channel, SpireError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if !path.starts_with('/') {
        return Err(SpireError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason: "not an absolute unix socket path (unix:///path/to/socket)".to_owned(),
        });
    }
    Ok(crate::uds::channel(path, connect_timeout))
}
