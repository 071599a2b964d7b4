//! What a client does with the responses it receives: a [`DeltaHandler`], such as the
//! [`StoreHandler`] that applies them into a [`WorkloadStore`].

use std::sync::Arc;

use crate::pb::envoy::service::discovery::v3::Resource;
use crate::resource::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, decode_address, decode_authorization,
};
use crate::store::{StoreBatch, WorkloadStore};

/// One response, as given to a [`DeltaHandler`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct DeltaUpdate<'a> {
    /// Type URL of the response; payloads are decoded as this type.
    pub type_url: &'a str,
    /// Added or updated resources.
    pub resources: &'a [Resource],
    /// Names of removed resources.
    pub removed: &'a [String],
}

/// A resource the handler could not apply; it is reported in the NACK.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejection {
    /// Resource name.
    pub name: String,
    /// Why.
    pub reason: String,
}

impl Rejection {
    /// A rejection of `name` for `reason`.
    pub fn new(name: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self {
            name: name.into(),
            reason: reason.to_string(),
        }
    }
}

/// Applies the responses a client receives.
pub trait DeltaHandler: Send + 'static {
    /// Applies one response and returns the resources it rejected (empty to ACK). The
    /// accepted resources must be applied even when others are rejected.
    fn apply(&mut self, update: DeltaUpdate<'_>) -> Vec<Rejection>;
}

impl<F> DeltaHandler for F
where
    F: FnMut(DeltaUpdate<'_>) -> Vec<Rejection> + Send + 'static,
{
    fn apply(&mut self, update: DeltaUpdate<'_>) -> Vec<Rejection> {
        self(update)
    }
}

/// A [`DeltaHandler`] that decodes Address and Authorization resources into a
/// [`WorkloadStore`]; each response is applied as one [`StoreBatch`]. Other type URLs are
/// accepted and ignored.
#[derive(Debug, Clone)]
pub struct StoreHandler {
    store: Arc<WorkloadStore>,
}

impl StoreHandler {
    /// A handler that applies into `store`.
    pub fn new(store: Arc<WorkloadStore>) -> Self {
        Self { store }
    }

    /// The store.
    pub fn store(&self) -> &Arc<WorkloadStore> {
        &self.store
    }
}

impl DeltaHandler for StoreHandler {
    fn apply(&mut self, update: DeltaUpdate<'_>) -> Vec<Rejection> {
        let mut rejections = Vec::new();
        let mut batch = StoreBatch::with_capacity(update.resources.len() + update.removed.len());
        match update.type_url {
            ADDRESS_TYPE_URL => {
                for name in update.removed {
                    batch.remove_address(name.clone());
                }
                for resource in update.resources {
                    match decode_address(resource) {
                        Ok(address) => {
                            batch.upsert_address(resource.name.clone(), address);
                        }
                        Err(e) => rejections.push(Rejection::new(&resource.name, e)),
                    }
                }
            }
            AUTHORIZATION_TYPE_URL => {
                for name in update.removed {
                    batch.remove_policy(name.clone());
                }
                for resource in update.resources {
                    match decode_authorization(resource) {
                        Ok(policy) => {
                            batch.upsert_policy(resource.name.clone(), policy);
                        }
                        Err(e) => rejections.push(Rejection::new(&resource.name, e)),
                    }
                }
            }
            other => {
                tracing::debug!(type_url = other, "ignoring resources of an unknown type");
            }
        }
        self.store.apply(batch);
        rejections
    }
}
