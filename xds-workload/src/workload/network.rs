//! Addresses on a network, service keys and gateways.

use std::fmt;
use std::net::IpAddr;

/// An IP address on a named network. The empty network is the default network.
///
/// Displayed (and used as an xDS alias) as `<network>/<ip>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    /// Network name; empty for the default network.
    pub network: String,
    /// The address.
    pub address: IpAddr,
}

impl NetworkAddress {
    /// An address on `network`.
    pub fn new(network: impl Into<String>, address: IpAddr) -> Self {
        Self {
            network: network.into(),
            address,
        }
    }
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.address)
    }
}

/// A `namespace/hostname` pair: the key of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedHostname {
    /// Namespace of the service.
    pub namespace: String,
    /// Fully qualified host name of the service.
    pub hostname: String,
}

impl NamespacedHostname {
    /// A `namespace/hostname` pair.
    pub fn new(namespace: impl Into<String>, hostname: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            hostname: hostname.into(),
        }
    }

    /// Parses `namespace/hostname`. The text must contain exactly one `/`.
    pub fn parse(key: &str) -> Option<Self> {
        let (namespace, hostname) = key.split_once('/')?;
        if hostname.contains('/') {
            return None;
        }
        Some(Self::new(namespace, hostname))
    }
}

impl fmt::Display for NamespacedHostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.hostname)
    }
}

/// Where a gateway (waypoint or network gateway) can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GatewayDestination {
    /// A service, by namespace and hostname.
    Hostname(NamespacedHostname),
    /// A fixed address.
    Address(NetworkAddress),
}

/// A gateway: its destination and HBONE port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct GatewayAddress {
    /// Where the gateway is.
    pub destination: GatewayDestination,
    /// Port for mutual-TLS HBONE connections to the gateway.
    pub hbone_mtls_port: u16,
}

impl GatewayAddress {
    /// A gateway at `destination`, taking HBONE on `hbone_mtls_port`.
    pub fn new(destination: GatewayDestination, hbone_mtls_port: u16) -> Self {
        Self {
            destination,
            hbone_mtls_port,
        }
    }
}
