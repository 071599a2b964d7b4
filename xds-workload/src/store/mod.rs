//! The workload store: every known workload, service and authorization policy, indexed
//! for the lookups a node proxy makes, and where a connection goes ([`Upstream`]).
//!
//! ```
//! use std::sync::Arc;
//! use meshwire_xds_workload::store::{StoreBatch, Upstream};
//! use meshwire_xds_workload::workload::{Address, Port, Service, ServiceVip, Workload};
//! use meshwire_xds_workload::{NetworkAddress, WorkloadStore};
//!
//! let mut web = Service::new("web", "shop", "web.shop.svc.cluster.local");
//! web.vips = vec![ServiceVip::host("", "10.96.0.10".parse().unwrap())];
//! web.ports = vec![Port::new(80, 8080)];
//! let mut pod = Workload::new("cluster1//Pod/shop/web-0", "web-0", "shop");
//! pod.addresses = vec!["10.0.0.7".parse().unwrap()];
//! pod.services.insert(web.key(), vec![Port::new(80, 8080)]);
//!
//! let store = WorkloadStore::new();
//! let mut batch = StoreBatch::new();
//! batch
//!     .upsert_address("shop/web.shop.svc.cluster.local", Address::Service(Arc::new(web)))
//!     .upsert_address("cluster1//Pod/shop/web-0", Address::Workload(Arc::new(pod)));
//! store.apply(batch);
//!
//! let by_ip = store.workload_by_address(&NetworkAddress::new("", "10.0.0.7".parse().unwrap()));
//! assert_eq!(by_ip.map(|w| w.name.clone()).as_deref(), Some("web-0"));
//! let upstream = store.resolve_upstream("", "10.96.0.10:80".parse().unwrap());
//! assert!(matches!(upstream, Upstream::ServiceEndpoint { .. }));
//! assert_eq!(upstream.address(), Some("10.0.0.7:8080".parse().unwrap()));
//! ```

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

use crate::authorization::{AuthorizationPolicy, AuthorizationResult, ConnectionInfo, evaluate};
use crate::workload::{Address, NamespacedHostname, NetworkAddress, Service, Workload};

mod batch;
mod state;
mod upstream;

pub use batch::StoreBatch;
use state::State;
pub use upstream::{ServiceHostTarget, Upstream};

/// The whole content of a [`WorkloadStore`] at one instant, from
/// [`WorkloadStore::snapshot`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StoreSnapshot {
    /// Every workload, ordered by uid.
    pub workloads: Vec<Arc<Workload>>,
    /// Every service, ordered by `namespace/hostname`.
    pub services: Vec<Arc<Service>>,
    /// Every authorization policy, ordered by key (`namespace/name`).
    pub policies: Vec<Arc<AuthorizationPolicy>>,
}

fn sorted_workloads(state: &State) -> Vec<Arc<Workload>> {
    let mut list: Vec<_> = state.workloads.values().cloned().collect();
    list.sort_by(|a, b| a.uid.cmp(&b.uid));
    list
}

fn sorted_services(state: &State) -> Vec<Arc<Service>> {
    let mut list: Vec<_> = state.services.iter().collect();
    list.sort_by(|a, b| a.0.cmp(b.0));
    list.into_iter().map(|(_, s)| s.clone()).collect()
}

fn sorted_policies(state: &State) -> Vec<Arc<AuthorizationPolicy>> {
    let mut list: Vec<_> = state.policies.iter().collect();
    list.sort_by(|a, b| a.0.cmp(b.0));
    list.into_iter().map(|(_, p)| p.clone()).collect()
}

/// Every known workload, service and authorization policy, with the indexes a node proxy
/// looks things up by.
///
/// The store is safe to share (`Arc<WorkloadStore>`): readers take a shared lock briefly and
/// get `Arc`s back; writers take the lock once per call, so a [`StoreBatch`] of any size
/// costs one lock and one change notification. Every change costs time proportional to the
/// size of the resource, never to the size of the store.
///
/// Lookups by address skip workloads with [`NetworkMode::HostNetwork`](crate::workload::NetworkMode::HostNetwork). When several
/// workloads share an address (an IP reused while the old record is still present), the
/// most recently inserted one is returned; removing the old one leaves the new one in
/// place.
#[derive(Debug)]
pub struct WorkloadStore {
    state: RwLock<State>,
    generation: watch::Sender<u64>,
    /// Round-robin position of [`WorkloadStore::resolve_upstream`].
    next_endpoint: AtomicUsize,
}

impl Default for WorkloadStore {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkloadStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: RwLock::new(State::default()),
            generation: watch::Sender::new(0),
            next_endpoint: AtomicUsize::new(0),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// A receiver whose value (a generation counter) changes after every write.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Inserts or replaces the address resource `name`.
    pub fn insert_address(&self, name: impl Into<String>, address: Address) {
        self.write().upsert_address(name.into(), address);
        self.changed();
    }

    /// Removes the address resource `name`. A name the store has not seen is read as a
    /// workload uid, then as `namespace/hostname`. Returns whether anything was removed.
    pub fn remove_address(&self, name: &str) -> bool {
        let removed = self.write().remove_address(name);
        if removed {
            self.changed();
        }
        removed
    }

    /// Inserts or replaces the policy resource `name`.
    pub fn insert_policy(
        &self,
        name: impl Into<String>,
        policy: impl Into<Arc<AuthorizationPolicy>>,
    ) {
        self.write().upsert_policy(name.into(), policy.into());
        self.changed();
    }

    /// Removes the policy resource `name` (or, if unknown, the policy with key `name`).
    pub fn remove_policy(&self, name: &str) -> bool {
        let removed = self.write().remove_policy(name);
        if removed {
            self.changed();
        }
        removed
    }

    /// Applies every change of `batch` in order, under one lock.
    pub fn apply(&self, batch: StoreBatch) {
        if batch.is_empty() {
            return;
        }
        {
            let mut state = self.write();
            state.reserve(batch.ops.len());
            for op in batch.ops {
                state.apply(op);
            }
        }
        self.changed();
    }

    /// The workload with this uid.
    pub fn workload_by_uid(&self, uid: &str) -> Option<Arc<Workload>> {
        self.read().workloads.get(uid).cloned()
    }

    /// The workload at this network address.
    pub fn workload_by_address(&self, address: &NetworkAddress) -> Option<Arc<Workload>> {
        self.read().workload_by_address(address)
    }

    /// The service with this VIP: an exact host VIP, else the range VIP with the longest
    /// prefix containing the address. Among several services with the same host VIP, a
    /// canonical one is preferred.
    pub fn service_by_vip(&self, address: &NetworkAddress) -> Option<Arc<Service>> {
        self.read().service_by_vip(address)
    }

    /// The service `namespace/hostname`.
    pub fn service_by_hostname(&self, namespace: &str, hostname: &str) -> Option<Arc<Service>> {
        self.read()
            .services
            .get(&NamespacedHostname::new(namespace, hostname))
            .cloned()
    }

    /// What an address is: the workload there, else the service with that VIP.
    pub fn lookup_address(&self, address: &NetworkAddress) -> Option<Address> {
        if let Some(w) = self.workload_by_address(address) {
            return Some(Address::Workload(w));
        }
        self.service_by_vip(address).map(Address::Service)
    }

    /// Where a connection to `destination`, sent from a workload on `network`, goes:
    ///
    /// 1. The destination IP is a VIP of a service on `network` (see
    ///    [`service_by_vip`](Self::service_by_vip)):
    ///    * in [`LoadBalancingMode::Passthrough`](crate::workload::LoadBalancingMode::Passthrough): [`Upstream::ServicePassthrough`];
    ///    * else one of its endpoints (the workloads that list the service in their
    ///      `services`) that is eligible: [`HealthStatus::Healthy`](crate::workload::HealthStatus::Healthy) (any health under
    ///      [`HealthPolicy::AllowAll`](crate::workload::HealthPolicy::AllowAll)), with an address (the first of the destination's IP
    ///      family, else its first), and with a target port for the destination port (the
    ///      endpoint's own mapping for the service first, else the service's non-zero
    ///      target port). The endpoints are taken in turn, in uid order, with one counter
    ///      per store: [`Upstream::ServiceEndpoint`]. None eligible:
    ///      [`Upstream::NoEndpoint`].
    /// 2. Else the workload with that IP on `network` (port unchanged):
    ///    [`Upstream::Workload`].
    /// 3. Else [`Upstream::Unknown`].
    ///
    /// Everything is read under one lock. Routing preferences (locality) and capacities
    /// are not applied, and the chosen endpoint may be on another network than `network`
    /// (its `network` says so; reaching it needs its network gateway). Waypoints are the
    /// caller's concern. IPv4-mapped IPv6 destinations are looked up as given: pass the
    /// canonical form.
    pub fn resolve_upstream(&self, network: &str, destination: SocketAddr) -> Upstream {
        self.read()
            .resolve_upstream(network, destination, &self.next_endpoint)
    }

    /// The service and port an HBONE `CONNECT <hostname>:<service_port>` names on
    /// `endpoint` (the workload receiving it): among the services `endpoint` lists in its
    /// `services` whose host name is `hostname` (ASCII case-insensitive), one of its own
    /// namespace first; the port is the endpoint's own mapping of `service_port`, else the
    /// service's non-zero target port (when the store holds the service). `None` when
    /// `endpoint` is not an endpoint of such a service or no non-zero port is named.
    pub fn resolve_service_host(
        &self,
        endpoint: &Workload,
        hostname: &str,
        service_port: u16,
    ) -> Option<ServiceHostTarget> {
        self.read()
            .resolve_service_host(endpoint, hostname, service_port)
    }

    /// Workloads whose `node` is `node`, ordered by uid.
    pub fn workloads_on_node(&self, node: &str) -> Vec<Arc<Workload>> {
        let state = self.read();
        let mut list: Vec<_> = state
            .workloads_by_node
            .get(node)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        list.sort_by(|a, b| a.uid.cmp(&b.uid));
        list
    }

    /// Workloads that list `service` in their `services`, ordered by uid.
    pub fn endpoints(&self, service: &NamespacedHostname) -> Vec<Arc<Workload>> {
        let state = self.read();
        let mut list: Vec<_> = state
            .endpoints
            .get(service)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        list.sort_by(|a, b| a.uid.cmp(&b.uid));
        list
    }

    /// The policy with key `namespace/name`.
    pub fn policy(&self, key: &str) -> Option<Arc<AuthorizationPolicy>> {
        self.read().policies.get(key).cloned()
    }

    /// The policies that apply to `workload`: global ones, namespace-scoped ones of its
    /// namespace, and the ones it names. Unknown names are skipped with a warning.
    pub fn policies_for(&self, workload: &Workload) -> Vec<Arc<AuthorizationPolicy>> {
        self.read().policies_for(workload)
    }

    /// Evaluates the policies that apply to `destination` for `conn`.
    pub fn authorize(&self, conn: &ConnectionInfo, destination: &Workload) -> AuthorizationResult {
        let policies = self.policies_for(destination);
        evaluate(policies.iter().map(|p| p.as_ref()), conn)
    }

    /// Whether `workload` is in strict mutual-TLS mode: a policy that applies to it
    /// [requires mutual TLS](AuthorizationPolicy::requires_mtls). Plaintext connections to
    /// it are denied, and as a source it must not send plain TCP to a workload that is
    /// [`hbone_pending`](Workload::hbone_pending).
    pub fn requires_mtls(&self, workload: &Workload) -> bool {
        self.policies_for(workload)
            .iter()
            .any(|p| p.requires_mtls())
    }

    /// Every workload, ordered by uid.
    ///
    /// A snapshot: the `Arc`s are the store's own, and later changes to the store do not
    /// show in the returned list. Costs one shared lock and time proportional to the number
    /// of workloads; meant for dumps and diagnostics, not for each connection.
    pub fn workloads(&self) -> Vec<Arc<Workload>> {
        sorted_workloads(&self.read())
    }

    /// Every service, ordered by `namespace/hostname`. A snapshot, like
    /// [`workloads`](Self::workloads).
    pub fn services(&self) -> Vec<Arc<Service>> {
        sorted_services(&self.read())
    }

    /// Every authorization policy, ordered by key (`namespace/name`). A snapshot, like
    /// [`workloads`](Self::workloads).
    pub fn policies(&self) -> Vec<Arc<AuthorizationPolicy>> {
        sorted_policies(&self.read())
    }

    /// Every workload, service and policy, taken under one lock so the three lists are
    /// consistent with each other (every workload, service and policy present at one
    /// instant). Ordered like [`workloads`](Self::workloads),
    /// [`services`](Self::services) and [`policies`](Self::policies).
    pub fn snapshot(&self) -> StoreSnapshot {
        let state = self.read();
        StoreSnapshot {
            workloads: sorted_workloads(&state),
            services: sorted_services(&state),
            policies: sorted_policies(&state),
        }
    }

    /// Number of workloads.
    pub fn workload_count(&self) -> usize {
        self.read().workloads.len()
    }

    /// Number of services.
    pub fn service_count(&self) -> usize {
        self.read().services.len()
    }

    /// Number of policies.
    pub fn policy_count(&self) -> usize {
        self.read().policies.len()
    }
}
