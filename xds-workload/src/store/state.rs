//! The store's indexes and the changes to them; callers go through
//! [`WorkloadStore`](super::WorkloadStore), which holds the lock.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::batch::Op;
use crate::authorization::{AuthorizationPolicy, PolicyScope};
use crate::workload::{
    Address, NamespacedHostname, NetworkAddress, NetworkMode, Service, Workload,
};

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
pub(super) struct State {
    /// Address resource name to what it stands for.
    address_names: HashMap<String, AddressKey>,
    /// Workload uid to the resource name that owns it.
    workload_owner: HashMap<String, String>,
    /// Service key to the resource name that owns it.
    service_owner: HashMap<NamespacedHostname, String>,
    pub(super) workloads: HashMap<String, Arc<Workload>>,
    /// Newest last; several workloads can briefly share an address (IP reuse).
    workloads_by_addr: HashMap<NetworkAddress, Vec<Arc<Workload>>>,
    pub(super) workloads_by_node: HashMap<String, HashMap<String, Arc<Workload>>>,
    pub(super) endpoints: HashMap<NamespacedHostname, HashMap<String, Arc<Workload>>>,
    pub(super) services: HashMap<NamespacedHostname, Arc<Service>>,
    services_by_vip: HashMap<NetworkAddress, Vec<Arc<Service>>>,
    /// Services with range VIPs (rare); searched linearly for the longest prefix.
    range_vip_services: Vec<Arc<Service>>,
    /// Policy resource name to policy key.
    policy_names: HashMap<String, String>,
    /// Policy key to the resource name that owns it.
    policy_owner: HashMap<String, String>,
    pub(super) policies: HashMap<String, Arc<AuthorizationPolicy>>,
    /// Namespace ("" for global policies) to policy keys.
    policies_by_namespace: HashMap<String, BTreeSet<String>>,
}

impl State {
    pub(super) fn reserve(&mut self, n: usize) {
        self.address_names.reserve(n);
        self.workload_owner.reserve(n);
        self.workloads.reserve(n);
        self.workloads_by_addr.reserve(n);
    }

    pub(super) fn apply(&mut self, op: Op) {
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

    pub(super) fn upsert_address(&mut self, name: String, address: Address) {
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

    pub(super) fn remove_address(&mut self, name: &str) -> bool {
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

    pub(super) fn upsert_policy(&mut self, name: String, policy: Arc<AuthorizationPolicy>) {
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

    pub(super) fn remove_policy(&mut self, name: &str) -> bool {
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

    pub(super) fn workload_by_address(&self, address: &NetworkAddress) -> Option<Arc<Workload>> {
        self.workloads_by_addr
            .get(address)
            .and_then(|list| list.last().cloned())
    }

    pub(super) fn service_by_vip(&self, address: &NetworkAddress) -> Option<Arc<Service>> {
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

    pub(super) fn policies_for(&self, workload: &Workload) -> Vec<Arc<AuthorizationPolicy>> {
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
