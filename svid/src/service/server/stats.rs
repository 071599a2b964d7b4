//! Counters of a certificate service, by how each request ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::{Code, Status};

/// How many requests a [`CertificateService`](super::CertificateService) answered, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceStats {
    /// Certificates signed.
    pub issued: u64,
    /// Callers refused by [`Authorizer::authenticate`](super::Authorizer::authenticate)
    /// (`UNAUTHENTICATED`): their requests were not read.
    pub unauthenticated: u64,
    /// Requests refused as malformed (`INVALID_ARGUMENT`): a CSR that is not PEM, does not
    /// parse, fails its self-signature, or names no single SPIFFE ID; bad metadata.
    pub malformed: u64,
    /// Requests the authorizer denied (`PERMISSION_DENIED`).
    pub denied: u64,
    /// Requests the authorizer could not decide now (`UNAVAILABLE`).
    pub unavailable: u64,
    /// Requests that failed inside the service (signing errors).
    pub failed: u64,
}

/// A live view of a service's [`ServiceStats`]; it stays valid after the service is turned
/// into a tonic server. Cloning shares the counters.
#[derive(Debug, Clone, Default)]
pub struct StatsHandle(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    issued: AtomicU64,
    unauthenticated: AtomicU64,
    malformed: AtomicU64,
    denied: AtomicU64,
    unavailable: AtomicU64,
    failed: AtomicU64,
}

impl StatsHandle {
    /// The counters now.
    pub fn get(&self) -> ServiceStats {
        let c = &self.0;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServiceStats {
            issued: n(&c.issued),
            unauthenticated: n(&c.unauthenticated),
            malformed: n(&c.malformed),
            denied: n(&c.denied),
            unavailable: n(&c.unavailable),
            failed: n(&c.failed),
        }
    }

    /// Counts the outcome of one request.
    pub(super) fn record<T>(&self, result: &Result<T, Status>) {
        let c = &self.0;
        let counter = match result {
            Ok(_) => &c.issued,
            Err(s) => match s.code() {
                Code::Unauthenticated => &c.unauthenticated,
                Code::InvalidArgument => &c.malformed,
                Code::PermissionDenied => &c.denied,
                Code::Unavailable => &c.unavailable,
                _ => &c.failed,
            },
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
