//! Generated protobuf and gRPC types, one module per protobuf package.
//!
//! The code is generated from the vendored `proto/` folder and checked in, so building
//! needs no `protoc`. Unknown fields sent by newer peers are skipped. The gRPC stubs
//! (`aggregated_discovery_service_client` / `_server`) are transport-agnostic; the `ads`
//! module (features `client` and `server`) puts them to work.
//!
//! The checked domain types of [`workload`](crate::workload) and
//! [`authorization`](crate::authorization) convert from these with [`TryFrom`] and back
//! with [`From`].
#![allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    missing_debug_implementations,
    clippy::all,
    clippy::use_self,
    clippy::or_fun_call
)]

/// `envoy.*`
pub mod envoy {
    /// `envoy.service.*`
    pub mod service {
        /// `envoy.service.discovery.*`
        pub mod discovery {
            /// `envoy.service.discovery.v3`: Delta ADS messages and service.
            #[rustfmt::skip]
            pub mod v3 {
                include!("generated/envoy.service.discovery.v3.rs");
            }
        }
    }
}

/// `google.*`
pub mod google {
    /// `google.rpc`: the gRPC status message.
    #[rustfmt::skip]
    pub mod rpc {
        include!("generated/google.rpc.rs");
    }
}

/// `istio.*`
pub mod istio {
    /// `istio.workload`: workloads and services.
    #[rustfmt::skip]
    pub mod workload {
        include!("generated/istio.workload.rs");
    }
    /// `istio.security`: L4 authorization policies.
    #[rustfmt::skip]
    pub mod security {
        include!("generated/istio.security.rs");
    }
}
