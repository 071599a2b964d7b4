//! Type URLs, and decoding of xDS `Resource` payloads into domain types: the path every
//! received resource takes, with per-resource errors ([`ResourceError`]).

use prost::Message;

use crate::authorization::{AuthorizationError, AuthorizationPolicy};
use crate::pb::envoy::service::discovery::v3::Resource;
use crate::pb::istio::{security, workload};
use crate::workload::{Address, AddressError};

/// Type URL of `istio.workload.Address` resources (workloads and services).
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// Type URL of `istio.security.Authorization` resources (L4 policies).
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// Why one xDS resource of a response could not be applied.
///
/// Rejection is per resource: the other resources of the same response are still applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// The `Resource` carried no payload.
    #[error("XDS payload without resource")]
    MissingPayload,
    /// The payload was not a valid protobuf encoding of the expected message.
    #[error("decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The payload decoded but is not a valid address.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The payload decoded but is not a valid authorization policy.
    #[error(transparent)]
    Authorization(#[from] AuthorizationError),
}

fn payload(resource: &Resource) -> Result<&[u8], ResourceError> {
    // The payload is decoded as the response's type; `Any.type_url` is not checked.
    resource
        .resource
        .as_ref()
        .map(|any| any.value.as_slice())
        .ok_or(ResourceError::MissingPayload)
}

/// Decodes the payload of an `Address` resource and converts it to the domain type.
pub fn decode_address(resource: &Resource) -> Result<Address, ResourceError> {
    address_from_bytes(payload(resource)?)
}

/// Decodes the payload of an `Authorization` resource and converts it to the domain type.
pub fn decode_authorization(resource: &Resource) -> Result<AuthorizationPolicy, ResourceError> {
    authorization_from_bytes(payload(resource)?)
}

/// Decodes an encoded `istio.workload.Address` and converts it to the domain type.
pub fn address_from_bytes(bytes: &[u8]) -> Result<Address, ResourceError> {
    let message = workload::Address::decode(bytes)?;
    Ok(Address::try_from(&message)?)
}

/// Decodes an encoded `istio.security.Authorization` and converts it to the domain type.
pub fn authorization_from_bytes(bytes: &[u8]) -> Result<AuthorizationPolicy, ResourceError> {
    let message = security::Authorization::decode(bytes)?;
    Ok(AuthorizationPolicy::try_from(&message)?)
}
