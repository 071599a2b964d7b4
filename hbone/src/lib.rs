//! `hbone` (work in progress).
#![forbid(unsafe_code)]

mod authority;
mod baggage;
mod client;
mod config;
mod driver;
mod forwarded;
mod pool;
mod request;
mod server;
mod traceparent;
mod tunnel;

pub use authority::{Authority, AuthorityError, HostPort, MAX_AUTHORITY_LEN};
pub use baggage::{
    BAGGAGE_CLUSTER, BAGGAGE_NAMESPACE, BAGGAGE_REGION, BAGGAGE_SERVICE_NAME,
    BAGGAGE_SERVICE_VERSION, BAGGAGE_ZONE, Baggage, BaggageError, BaggageMember,
    MAX_BAGGAGE_LEN, MAX_BAGGAGE_MEMBERS, WorkloadBaggage, WorkloadKind,
};
pub use client::{ClientConnection, ClientError};
pub use config::{Http2Config, PoolConfig, ServeConfig};
pub use forwarded::{
    Forwarded, ForwardedElement, ForwardedError, MAX_FORWARDED_ELEMENTS, MAX_FORWARDED_LEN, Node,
    NodeName, NodePort,
};
pub use pool::{
    ClientTlsProvider, Connector, Pool, PoolKey, PoolStats, SvidClientTls, SvidClientTlsError,
    TcpConnector,
};
pub use request::{
    BAGGAGE, BuildError, ConnectRequest, ConnectResponse, FORWARDED, MAX_NETWORK_LEN, Rejection,
    RequestError, TRACEPARENT, X_FORWARDED_NETWORK,
};
pub use server::{
    ConnectionInfo, Handler, IncomingTunnel, Server, ServerError, ServerStats, ServerTlsProvider,
};
pub use traceparent::{MAX_TRACEPARENT_LEN, TraceParent, TraceParentError};
pub use tunnel::{CopyStats, Tunnel, TunnelRecv, TunnelSend, copy_bidirectional};

/// Re-exports of crates whose types appear in this API.
pub use {h2, http, rustls, svid};
