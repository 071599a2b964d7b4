//! The agent as a certificate authority: its CA material on disk, who may have which
//! certificate, and the authorizer the certificate service asks.

pub(crate) mod auth;
pub(crate) mod files;
pub(crate) mod service;
