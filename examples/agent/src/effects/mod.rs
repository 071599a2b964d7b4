//! The real side effects behind the reconciler's traits.

pub(crate) mod rules;
pub(crate) mod xds;
pub(crate) mod zds;
