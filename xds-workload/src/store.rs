//! The workload store: every known workload, service and authorization policy, indexed
//! for the lookups a node proxy makes.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

use crate::authorization::{
    AuthorizationPolicy, AuthorizationResult, ConnectionInfo, PolicyScope, evaluate,
};
use crate::upstream::{ServiceHostTarget, Upstream, endpoint_ip, target_port};
use crate::workload::{
    Address, HealthPolicy, HealthStatus, LoadBalancingMode, NamespacedHostname, NetworkAddress,
    NetworkMode, Service, Workload,
};

/// A set of changes applied to a [`WorkloadStore`] under one lock, in order.
///
/// Names are xDS resource names; address names and policy names are separate name spaces
/// (they come from different type URLs).
#[derive(Debug, Default, Clone)]
pub struct StoreBatch {
    ops: Vec<Op>,
}

#[derive(Debug, Clone)]
enum Op {
    UpsertAddress(String, Address),
    RemoveAddress(String),
    UpsertPolicy(String, Arc<AuthorizationPolicy>),
    RemovePolicy(String),
}

impl StoreBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `n` changes.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            ops: Vec::with_capacity(n),
        }
    }

    /// Inserts or replaces the address resource `name`.
    pub fn upsert_address(&mut self, name: impl Into<String>, address: Address) -> &mut Self {
        self.ops.push(Op::UpsertAddress(name.into(), address));
        self
    }

    /// Removes the address resource `name`.
    pub fn remove_address(&mut self, name: impl Into<String>) -> &mut Self {
        self.ops.push(Op::RemoveAddress(name.into()));
        self
    }

    /// Inserts or replaces the policy resource `name`.
    pub fn upsert_policy(
        &mut self,
        name: impl Into<String>,
        policy: impl Into<Arc<AuthorizationPolicy>>,
    ) -> &mut Self {
        self.ops.push(Op::UpsertPolicy(name.into(), policy.into()));
        self
    }

    /// Removes the policy resource `name`.
    pub fn remove_policy(&mut self, name: impl Into<String>) -> &mut Self {
        self.ops.push(Op::RemovePolicy(name.into()));
        self
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// What an address resource name currently stands for.
#[derive(Debug, Clone)]
enum AddressKey {
    Workload(String),
    Service(NamespacedHostname),
}

/// Runs `f` on the value at `key`, inserted empty if absent; clones the key only when
/// inserting.
fn with_slot<K, V, R>(map: &mut HashMap<K, V>, key: &K, f: impl FnOnce(&mut V) -> R) -> R
where
    K: std::hash::Hash + Eq + Clone,
    V: Default,
{
    if let Some(value) = map.get_mut(key) {
        return f(value);
    }
    f(map.entry(key.clone()).or_default())
}

/// Removes `item` (by pointer) from the vector stored at `key`, dropping the entry when it
/// becomes empty.
fn remove_ptr<K, T>(map: &mut HashMap<K, Vec<Arc<T>>>, key: &K, item: &Arc<T>)
where
    K: std::hash::Hash + Eq,
{
    if let Some(list) = map.get_mut(key) {
        list.retain(|x| !Arc::ptr_eq(x, item));
        if list.is_empty() {
            map.remove(key);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Address resource name to what it stands for.
    address_names: HashMap<String, AddressKey>,
    /// Workload uid to the resource name that owns it.
    workload_owner: HashMap<String, String>,
    /// Service key to the resource name that owns it.
    service_owner: HashMap<NamespacedHostname, String>,
    workloads: HashMap<String, Arc<Workload>>,
    /// Newest last; several workloads can briefly share an address (IP reuse).
    workloads_by_addr: HashMap<NetworkAddress, Vec<Arc<Workload>>>,
    workloads_by_node: HashMap<String, HashMap<String, Arc<Workload>>>,
    endpoints: HashMap<NamespacedHostname, HashMap<String, Arc<Workload>>>,
    services: HashMap<NamespacedHostname, Arc<Service>>,
    services_by_vip: HashMap<NetworkAddress, Vec<Arc<Service>>>,
    /// Services with range VIPs (rare); searched linearly for the longest prefix.
    range_vip_services: Vec<Arc<Service>>,
    /// Policy resource name to policy key.
    policy_names: HashMap<String, String>,
    /// Policy key to the resource name that owns it.
    policy_owner: HashMap<String, String>,
    policies: HashMap<String, Arc<AuthorizationPolicy>>,
    /// Namespace ("" for global policies) to policy keys.
    policies_by_namespace: HashMap<String, BTreeSet<String>>,
}

impl State {
    fn reserve(&mut self, n: usize) {
        self.address_names.reserve(n);
        self.workload_owner.reserve(n);
        self.workloads.reserve(n);
        self.workloads_by_addr.reserve(n);
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::UpsertAddress(name, address) => self.upsert_address(name, address),
            Op::RemoveAddress(name) => {
                self.remove_address(&name);
            }
            Op::UpsertPolicy(name, policy) => self.upsert_policy(name, policy),
            Op::RemovePolicy(name) => {
                self.remove_policy(&name);
            }
        }
    }

    fn upsert_address(&mut self, name: String, address: Address) {
        if let Some(old) = self.address_names.get(&name).cloned() {
            self.remove_address_key(&old);
        }
        // A different name may own the same key: the newer resource replaces it.
        let key = match address {
            Address::Workload(w) => {
                self.remove_address_key(&AddressKey::Workload(w.uid.clone()));
                self.workload_owner.insert(w.uid.clone(), name.clone());
                let key = AddressKey::Workload(w.uid.clone());
                self.index_workload(w);
                key
            }
            Address::Service(s) => {
                let key = s.key();
                self.remove_address_key(&AddressKey::Service(key.clone()));
                self.service_owner.insert(key.clone(), name.clone());
                self.index_service(s);
                AddressKey::Service(key)
            }
        };
        self.address_names.insert(name, key);
    }

    fn remove_address(&mut self, name: &str) -> bool {
        if let Some(key) = self.address_names.get(name).cloned() {
            return self.remove_address_key(&key);
        }
        // Not a name we know: read it as a workload uid, then as namespace/hostname.
        if self.workloads.contains_key(name) {
            return self.remove_address_key(&AddressKey::Workload(name.to_owned()));
        }
        match NamespacedHostname::parse(name) {
            Some(key) => self.remove_address_key(&AddressKey::Service(key)),
            None => false,
        }
    }

    /// Removes the resource with this key and forgets the name that owned it.
    fn remove_address_key(&mut self, key: &AddressKey) -> bool {
        match key {
            AddressKey::Workload(uid) => {
                let Some(w) = self.workloads.get(uid).cloned() else {
                    return false;
                };
                self.unindex_workload(&w);
                if let Some(owner) = self.workload_owner.remove(uid) {
                    self.address_names.remove(&owner);
                }
                true
            }
            AddressKey::Service(key) => {
                let Some(s) = self.services.get(key).cloned() else {
                    return false;
                };
                self.unindex_service(&s);
                if let Some(owner) = self.service_owner.remove(key) {
                    self.address_names.remove(&owner);
                }
                true
            }
        }
    }

    fn index_workload(&mut self, w: Arc<Workload>) {
        if w.network_mode != NetworkMode::HostNetwork {
            for addr in w.network_addresses() {
                self.workloads_by_addr
                    .entry(addr)
                    .or_default()
                    .push(w.clone());
            }
        }
        if !w.node.is_empty() {
            with_slot(&mut self.workloads_by_node, &w.node, |m| {
                m.insert(w.uid.clone(), w.clone())
            });
        }
        for service in w.services.keys() {
            with_slot(&mut self.endpoints, service, |m| {
                m.insert(w.uid.clone(), w.clone())
            });
        }
        self.workloads.insert(w.uid.clone(), w);
    }

    fn unindex_workload(&mut self, w: &Arc<Workload>) {
        for addr in w.network_addresses() {
            remove_ptr(&mut self.workloads_by_addr, &addr, w);
        }
        if let Some(on_node) = self.workloads_by_node.get_mut(&w.node) {
            on_node.remove(&w.uid);
            if on_node.is_empty() {
                self.workloads_by_node.remove(&w.node);
            }
        }
        for service in w.services.keys() {
            if let Some(eps) = self.endpoints.get_mut(service) {
                eps.remove(&w.uid);
                if eps.is_empty() {
                    self.endpoints.remove(service);
                }
            }
        }
        self.workloads.remove(&w.uid);
    }

    fn index_service(&mut self, s: Arc<Service>) {
        let mut has_range = false;
        for vip in &s.vips {
            if vip.is_host() {
                self.services_by_vip
                    .entry(NetworkAddress::new(vip.network.clone(), vip.prefix.addr()))
                    .or_default()
                    .push(s.clone());
            } else {
                has_range = true;
            }
        }
        if has_range {
            self.range_vip_services.push(s.clone());
        }
        self.services.insert(s.key(), s);
    }

    fn unindex_service(&mut self, s: &Arc<Service>) {
        for vip in &s.vips {
            if vip.is_host() {
                let key = NetworkAddress::new(vip.network.clone(), vip.prefix.addr());
                remove_ptr(&mut self.services_by_vip, &key, s);
            }
        }
        self.range_vip_services.retain(|x| !Arc::ptr_eq(x, s));
        self.services.remove(&s.key());
    }

    fn upsert_policy(&mut self, name: String, policy: Arc<AuthorizationPolicy>) {
        if let Some(old) = self.policy_names.get(&name).cloned() {
            self.remove_policy_key(&old);
        }
        let key = policy.key();
        self.remove_policy_key(&key);
        let index = match policy.scope {
            PolicyScope::Global => Some(String::new()),
            PolicyScope::Namespace => Some(policy.namespace.clone()),
            PolicyScope::WorkloadSelector => None,
        };
        if let Some(ns) = index {
            self.policies_by_namespace
                .entry(ns)
                .or_default()
                .insert(key.clone());
        }
        self.policies.insert(key.clone(), policy);
        self.policy_owner.insert(key.clone(), name.clone());
        self.policy_names.insert(name, key);
    }

    fn remove_policy(&mut self, name: &str) -> bool {
        match self.policy_names.get(name).cloned() {
            Some(key) => self.remove_policy_key(&key),
            None => self.remove_policy_key(name),
        }
    }

    /// Removes the policy with this key and forgets the name that owned it.
    fn remove_policy_key(&mut self, key: &str) -> bool {
        let Some(policy) = self.policies.remove(key) else {
            return false;
        };
        if let Some(owner) = self.policy_owner.remove(key) {
            self.policy_names.remove(&owner);
        }
        let ns = match policy.scope {
            PolicyScope::Global => "",
            PolicyScope::Namespace => policy.namespace.as_str(),
            PolicyScope::WorkloadSelector => return true,
        };
        if let Some(keys) = self.policies_by_namespace.get_mut(ns) {
            keys.remove(key);
            if keys.is_empty() {
                self.policies_by_namespace.remove(ns);
            }
        }
        true
    }

    fn workload_by_address(&self, address: &NetworkAddress) -> Option<Arc<Workload>> {
        self.workloads_by_addr
            .get(address)
            .and_then(|list| list.last().cloned())
    }

    fn service_by_vip(&self, address: &NetworkAddress) -> Option<Arc<Service>> {
        if let Some(list) = self.services_by_vip.get(address) {
            return list
                .iter()
                .rev()
                .find(|s| s.canonical)
                .or_else(|| list.last())
                .cloned();
        }
        self.range_vip_services
            .iter()
            .flat_map(|s| s.vips.iter().map(move |vip| (s, vip)))
            .filter(|(_, vip)| {
                !vip.is_host()
                    && vip.network == address.network
                    && vip.prefix.contains(&address.address)
            })
            .max_by_key(|(_, vip)| vip.prefix.prefix_len())
            .map(|(s, _)| s.clone())
    }

    fn resolve_upstream(&self, network: &str, dst: SocketAddr, turn: &AtomicUsize) -> Upstream {
        let addr = NetworkAddress::new(network, dst.ip());
        let Some(service) = self.service_by_vip(&addr) else {
            return match self.workload_by_address(&addr) {
                Some(workload) => Upstream::Workload {
                    workload,
                    address: dst,
                },
                None => Upstream::Unknown,
            };
        };
        let (mode, health) = match &service.load_balancing {
            Some(lb) => (lb.mode, lb.health_policy),
            None => (LoadBalancingMode::default(), HealthPolicy::default()),
        };
        if mode == LoadBalancingMode::Passthrough {
            return Upstream::ServicePassthrough { service };
        }
        let key = service.key();
        let mut eligible: Vec<(&Arc<Workload>, SocketAddr)> = self
            .endpoints
            .get(&key)
            .into_iter()
            .flat_map(HashMap::values)
            .filter(|w| health == HealthPolicy::AllowAll || w.status == HealthStatus::Healthy)
            .filter_map(|w| {
                let ip = endpoint_ip(w, dst.ip())?;
                let port = target_port(w, &key, Some(&service.ports), dst.port())?;
                Some((w, SocketAddr::new(ip, port)))
            })
            .collect();
        if eligible.is_empty() {
            return Upstream::NoEndpoint { service };
        }
        // Round robin over the eligible endpoints in uid order; the i-th is found without
        // sorting them all.
        let i = turn.fetch_add(1, Ordering::Relaxed) % eligible.len();
        let (_, &mut (workload, address), _) =
            eligible.select_nth_unstable_by(i, |a, b| a.0.uid.cmp(&b.0.uid));
        Upstream::ServiceEndpoint {
            workload: workload.clone(),
            address,
            service,
        }
    }

    fn resolve_service_host(
        &self,
        endpoint: &Workload,
        hostname: &str,
        service_port: u16,
    ) -> Option<ServiceHostTarget> {
        let key = endpoint
            .services
            .keys()
            .filter(|k| k.hostname.eq_ignore_ascii_case(hostname))
            .min_by_key(|k| k.namespace != endpoint.namespace)?;
        let service_ports = self.services.get(key).map(|s| s.ports.as_slice());
        let port = target_port(endpoint, key, service_ports, service_port)?;
        Some(ServiceHostTarget {
            service: key.clone(),
            port,
        })
    }

    fn policies_for(&self, workload: &Workload) -> Vec<Arc<AuthorizationPolicy>> {
        let mut keys: BTreeSet<&str> = BTreeSet::new();
        for ns in ["", workload.namespace.as_str()] {
            if let Some(set) = self.policies_by_namespace.get(ns) {
                keys.extend(set.iter().map(String::as_str));
            }
        }
        keys.extend(workload.authorization_policies.iter().map(String::as_str));
        keys.into_iter()
            .filter_map(|key| match self.policies.get(key) {
                Some(p) => Some(p.clone()),
                None => {
                    tracing::warn!(policy = key, workload = %workload.uid, "unknown authorization policy");
                    None
                }
            })
            .collect()
    }
}

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
/// Lookups by address skip workloads with [`NetworkMode::HostNetwork`]. When several
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
    ///    * in [`LoadBalancingMode::Passthrough`]: [`Upstream::ServicePassthrough`];
    ///    * else one of its endpoints (the workloads that list the service in their
    ///      `services`) that is eligible: [`HealthStatus::Healthy`] (any health under
    ///      [`HealthPolicy::AllowAll`]), with an address (the first of the destination's IP
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
