//! Service ports and their application protocols.

/// Application protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum AppProtocol {
    /// Not known (also used for unknown values).
    #[default]
    Unknown,
    /// HTTP/1.1.
    Http11,
    /// HTTP/2.
    Http2,
    /// gRPC.
    Grpc,
    /// Opaque TCP.
    Tcp,
    /// TLS.
    Tls,
}

/// A service port and the port it forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Port {
    /// Port the service is reached at.
    pub service_port: u16,
    /// Port on the endpoint; 0 means a named port resolved per endpoint.
    pub target_port: u16,
    /// Application protocol (informational).
    pub app_protocol: AppProtocol,
}

impl Port {
    /// A port mapping with an unknown application protocol.
    pub fn new(service_port: u16, target_port: u16) -> Self {
        Self {
            service_port,
            target_port,
            app_protocol: AppProtocol::Unknown,
        }
    }
}
