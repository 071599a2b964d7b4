//! The agent as a certificate authority: its CA material on disk, who may have which
//! certificate, how callers are authenticated (for xDS too), and the authorizer the
//! certificate service asks.

pub(crate) mod auth;
pub(crate) mod authn;
pub(crate) mod files;
pub(crate) mod service;
pub(crate) mod tokenreview;
