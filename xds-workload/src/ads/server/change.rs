//! Changes an owner publishes: [`ResourceChange`].

use prost::{Message, Name};

use crate::authorization::AuthorizationPolicy;
use crate::pb::istio::{security, workload};
use crate::workload::Address;

/// A change to the resources of one type URL.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ResourceChange {
    /// Insert or replace a resource.
    Upsert {
        /// Resource name.
        name: String,
        /// Payload.
        resource: prost_types::Any,
    },
    /// Remove a resource.
    Remove {
        /// Resource name.
        name: String,
    },
}

impl ResourceChange {
    /// Inserts or replaces `name` with `message`.
    pub fn upsert<M: Message + Name>(name: impl Into<String>, message: &M) -> Self {
        Self::Upsert {
            name: name.into(),
            resource: prost_types::Any {
                type_url: M::type_url(),
                value: message.encode_to_vec(),
            },
        }
    }

    /// Inserts or replaces `name` with an already encoded payload.
    pub fn upsert_any(name: impl Into<String>, resource: prost_types::Any) -> Self {
        Self::Upsert {
            name: name.into(),
            resource,
        }
    }

    /// Removes `name`.
    pub fn remove(name: impl Into<String>) -> Self {
        Self::Remove { name: name.into() }
    }

    /// A workload as an `Address` resource named by its uid (for
    /// [`ADDRESS_TYPE_URL`](crate::resource::ADDRESS_TYPE_URL)).
    pub fn workload(w: workload::Workload) -> Self {
        let name = w.uid.clone();
        Self::upsert(
            name,
            &workload::Address {
                r#type: Some(workload::address::Type::Workload(w)),
            },
        )
    }

    /// A service as an `Address` resource named `namespace/hostname` (for
    /// [`ADDRESS_TYPE_URL`](crate::resource::ADDRESS_TYPE_URL)).
    pub fn service(s: workload::Service) -> Self {
        let name = format!("{}/{}", s.namespace, s.hostname);
        Self::upsert(
            name,
            &workload::Address {
                r#type: Some(workload::address::Type::Service(s)),
            },
        )
    }

    /// A policy named `namespace/name` (for
    /// [`AUTHORIZATION_TYPE_URL`](crate::resource::AUTHORIZATION_TYPE_URL)).
    pub fn authorization(a: &security::Authorization) -> Self {
        Self::upsert(format!("{}/{}", a.namespace, a.name), a)
    }

    /// A checked workload or service as an `Address` resource named by
    /// [`Address::name`] (for [`ADDRESS_TYPE_URL`](crate::resource::ADDRESS_TYPE_URL)).
    pub fn address(address: &Address) -> Self {
        Self::upsert(address.name(), &workload::Address::from(address))
    }

    /// A checked policy named by its key, `namespace/name` (for
    /// [`AUTHORIZATION_TYPE_URL`](crate::resource::AUTHORIZATION_TYPE_URL)).
    pub fn policy(policy: &AuthorizationPolicy) -> Self {
        Self::upsert(policy.key(), &security::Authorization::from(policy))
    }

    /// The name and payload of an upsert (for [`AdsServer::replace`](super::AdsServer::replace));
    /// `None` for a removal.
    pub fn into_upsert(self) -> Option<(String, prost_types::Any)> {
        match self {
            Self::Upsert { name, resource } => Some((name, resource)),
            Self::Remove { .. } => None,
        }
    }
}
