//! Why an `istio.workload.Address` resource was rejected.

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
