//! The Kubernetes workload source: the agent's view of the cluster read from an API server.
//!
//! | module | concern |
//! |---|---|
//! | `model` | API objects to the cluster model; other nodes' pod annotations to their readiness |
//! | `policy` | `AuthorizationPolicy` objects to L4 policies |

mod model;
mod policy;
