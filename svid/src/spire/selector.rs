//! SPIRE selectors (`type:value`), shared by the registrar and the certificate source.

use std::fmt;

use crate::id::SpiffeId;

/// One SPIRE selector: a type (`k8s`, `unix` …) and a value (`ns:default`, `uid:1000` …).
/// Selector types are only checked for syntax by SPIRE: a non-empty type without `:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct Selector {
    /// The selector type, e.g. `k8s`.
    pub kind: String,
    /// The value, e.g. `ns:default`.
    pub value: String,
}

impl Selector {
    /// A selector of `kind` with `value`.
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }

    /// `k8s:ns:<namespace>`.
    pub fn k8s_namespace(namespace: &str) -> Self {
        Self::new("k8s", format!("ns:{namespace}"))
    }

    /// `k8s:sa:<service account>`.
    pub fn k8s_service_account(service_account: &str) -> Self {
        Self::new("k8s", format!("sa:{service_account}"))
    }

    /// `unix:uid:<uid>`.
    pub fn unix_uid(uid: u32) -> Self {
        Self::new("unix", format!("uid:{uid}"))
    }

    /// The selectors the Cilium operator registers for an Istio-shaped ID
    /// (`ns/<ns>/sa/<sa>`): `k8s:ns:<ns>` and `k8s:sa:<sa>`. `None` for another path shape.
    pub fn for_istio_id(id: &SpiffeId) -> Option<Vec<Self>> {
        let istio = id.istio()?;
        Some(vec![
            Self::k8s_namespace(istio.namespace()),
            Self::k8s_service_account(istio.service_account()),
        ])
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl From<&Selector> for super::pb::types::Selector {
    fn from(s: &Selector) -> Self {
        Self {
            r#type: s.kind.clone(),
            value: s.value.clone(),
        }
    }
}

impl From<&super::pb::types::Selector> for Selector {
    fn from(s: &super::pb::types::Selector) -> Self {
        Self::new(s.r#type.clone(), s.value.clone())
    }
}

impl From<&Selector> for spire_api::pb::spire::api::types::Selector {
    fn from(s: &Selector) -> Self {
        Self {
            r#type: s.kind.clone(),
            value: s.value.clone(),
        }
    }
}
