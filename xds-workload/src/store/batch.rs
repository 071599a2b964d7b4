//! A set of store changes applied under one lock.

use std::sync::Arc;

use crate::authorization::AuthorizationPolicy;
use crate::workload::Address;

/// A set of changes applied to a [`WorkloadStore`](super::WorkloadStore) under one lock, in order.
///
/// Names are xDS resource names; address names and policy names are separate name spaces
/// (they come from different type URLs).
#[derive(Debug, Default, Clone)]
pub struct StoreBatch {
    pub(super) ops: Vec<Op>,
}

#[derive(Debug, Clone)]
pub(super) enum Op {
    UpsertAddress(String, Address),
    RemoveAddress(String),
    UpsertPolicy(String, Arc<AuthorizationPolicy>),
    RemovePolicy(String),
}

impl StoreBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `n` changes.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            ops: Vec::with_capacity(n),
        }
    }

    /// Inserts or replaces the address resource `name`.
    pub fn upsert_address(&mut self, name: impl Into<String>, address: Address) -> &mut Self {
        self.ops.push(Op::UpsertAddress(name.into(), address));
        self
    }

    /// Removes the address resource `name`.
    pub fn remove_address(&mut self, name: impl Into<String>) -> &mut Self {
        self.ops.push(Op::RemoveAddress(name.into()));
        self
    }

    /// Inserts or replaces the policy resource `name`.
    pub fn upsert_policy(
        &mut self,
        name: impl Into<String>,
        policy: impl Into<Arc<AuthorizationPolicy>>,
    ) -> &mut Self {
        self.ops.push(Op::UpsertPolicy(name.into(), policy.into()));
        self
    }

    /// Removes the policy resource `name`.
    pub fn remove_policy(&mut self, name: impl Into<String>) -> &mut Self {
        self.ops.push(Op::RemovePolicy(name.into()));
        self
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}
