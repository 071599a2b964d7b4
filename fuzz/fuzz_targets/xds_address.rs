//! Arbitrary bytes as an `istio.workload.Address` payload: decode, convert to the domain
//! type, convert back (which must give the same domain value), and index it in a store.
//! Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwire_xds_workload::pb::istio::workload as pb;
use meshwire_xds_workload::workload::NamespacedHostname;
use meshwire_xds_workload::{Address, WorkloadStore};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    // The path the client takes for every resource.
    let _ = meshwire_xds_workload::resource::address_from_bytes(data);

    let Ok(message) = pb::Address::decode(data) else {
        return;
    };
    // Decoding what we encode gives the same message back.
    let again = pb::Address::decode(message.encode_to_vec().as_slice()).expect("re-decode");
    assert_eq!(again, message);

    let Ok(address) = Address::try_from(&message) else {
        return;
    };
    // The domain value converts back to a message that reads as the same value.
    let back = pb::Address::from(&address);
    assert_eq!(Address::try_from(&back).as_ref(), Ok(&address));
    let store = WorkloadStore::new();
    store.insert_address("fuzz", address.clone());
    match &address {
        Address::Workload(w) => {
            for addr in w.network_addresses() {
                let _ = store.lookup_address(&addr);
            }
            let _ = store.workload_by_uid(&w.uid);
            let _ = store.workloads_on_node(&w.node);
            for service in w.services.keys() {
                let _ = store.endpoints(service);
            }
            let _ = store.policies_for(w);
        }
        Address::Service(s) => {
            for vip in &s.vips {
                let _ = store.service_by_vip(&meshwire_xds_workload::NetworkAddress::new(
                    vip.network.clone(),
                    vip.prefix.addr(),
                ));
            }
            let _ = store.service_by_hostname(&s.namespace, &s.hostname);
            let _ = NamespacedHostname::parse(&s.key().to_string());
        }
        _ => {}
    }
    // Inserting again under another name and removing both leaves an empty store.
    store.insert_address("fuzz-2", address);
    store.remove_address("fuzz");
    store.remove_address("fuzz-2");
    assert_eq!(store.workload_count() + store.service_count(), 0);
});
