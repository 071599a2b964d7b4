//! `hbone` (work in progress).
#![forbid(unsafe_code)]

mod authority;
mod baggage;
mod forwarded;
mod request;
mod traceparent;

pub use authority::{Authority, AuthorityError, HostPort, MAX_AUTHORITY_LEN};
pub use baggage::{
    BAGGAGE_CLUSTER, BAGGAGE_NAMESPACE, BAGGAGE_REGION, BAGGAGE_SERVICE_NAME,
    BAGGAGE_SERVICE_VERSION, BAGGAGE_ZONE, Baggage, BaggageError, BaggageMember,
    MAX_BAGGAGE_LEN, MAX_BAGGAGE_MEMBERS, WorkloadBaggage, WorkloadKind,
};
pub use forwarded::{
    Forwarded, ForwardedElement, ForwardedError, MAX_FORWARDED_ELEMENTS, MAX_FORWARDED_LEN, Node,
    NodeName, NodePort,
};
pub use request::{
    BAGGAGE, BuildError, ConnectRequest, ConnectResponse, FORWARDED, MAX_NETWORK_LEN, Rejection,
    RequestError, TRACEPARENT, X_FORWARDED_NETWORK,
};
pub use traceparent::{MAX_TRACEPARENT_LEN, TraceParent, TraceParentError};
