//! Typed errors of the conversion boundary, the client and the server.

use std::net::IpAddr;

/// Why an `istio.workload.Address` resource was rejected at the [`TryFrom`] boundary.
///
/// Each variant names the offending field so that the text sent back to the server in a
/// NACK points at the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The `Address` had neither a workload nor a service set.
    #[error("unknown address type")]
    MissingType,
    /// An IP address field did not hold 4 or 16 bytes.
    #[error("{field}: invalid IP address length {len} (want 4 or 16 bytes)")]
    InvalidIpLength {
        /// The proto field the bytes came from.
        field: &'static str,
        /// The number of bytes found.
        len: usize,
    },
    /// A prefix length was larger than the address family allows.
    #[error("{field}: prefix length {len} is invalid for {addr}")]
    InvalidPrefixLength {
        /// The proto field.
        field: &'static str,
        /// The address the prefix belongs to.
        addr: IpAddr,
        /// The length found.
        len: u32,
    },
    /// An enum field held a number this schema does not define.
    #[error("{field}: unknown enum value {value}")]
    UnknownEnumValue {
        /// The proto field.
        field: &'static str,
        /// The number found.
        value: i32,
    },
    /// The workload asks for the legacy Istio mTLS tunnel, which is not supported.
    #[error("tunnel_protocol: LEGACY_ISTIO_MTLS is not supported")]
    LegacyIstioMtls,
    /// A gateway (waypoint or network gateway) had no destination.
    #[error("{field}: gateway address without destination")]
    MissingGatewayDestination {
        /// The proto field.
        field: &'static str,
    },
    /// A key of `Workload.services` was not of the form `namespace/hostname`.
    #[error("services: key {key:?} is not of the form namespace/hostname")]
    InvalidServiceKey {
        /// The key found.
        key: String,
    },
    /// A load-balancing routing preference was `UNSPECIFIED_SCOPE`.
    #[error("load_balancing.routing_preference: UNSPECIFIED_SCOPE is not allowed")]
    UnspecifiedRoutingPreference,
    /// A port number did not fit in 16 bits.
    #[error("{field}: port {value} is out of range")]
    InvalidPort {
        /// The proto field.
        field: &'static str,
        /// The number found.
        value: u32,
    },
}

/// Why an `istio.security.Authorization` resource was rejected at the [`TryFrom`] boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizationError {
    /// An enum field held a number this schema does not define.
    #[error("{field}: unknown enum value {value}")]
    UnknownEnumValue {
        /// The proto field.
        field: &'static str,
        /// The number found.
        value: i32,
    },
}

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

/// A client configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientConfigError {
    /// A header name is not valid gRPC metadata.
    #[error("invalid header name {0:?}")]
    InvalidHeaderName(String),
    /// A header value is not valid gRPC metadata.
    #[error("invalid value for header {0:?}")]
    InvalidHeaderValue(String),
    /// No type URL is configured, so there is nothing to subscribe to.
    #[error("no type URL to subscribe to")]
    NoTypeUrls,
}

/// The convenience `serve` functions failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The gRPC transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}
