//! Arbitrary bytes as an `istio.security.Authorization` payload: decode, convert to the
//! domain type and evaluate it. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwire_xds_workload::Identity;
use meshwire_xds_workload::authorization::{AuthorizationPolicy, ConnectionInfo, evaluate};
use meshwire_xds_workload::pb::istio::security as pb;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let _ = meshwire_xds_workload::resource::authorization_from_bytes(data);

    let Ok(message) = pb::Authorization::decode(data) else {
        return;
    };
    let again = pb::Authorization::decode(message.encode_to_vec().as_slice()).expect("re-decode");
    assert_eq!(again, message);

    let Ok(policy) = AuthorizationPolicy::try_from(&message) else {
        return;
    };
    // The domain value converts back to a message that reads as the same value.
    let back = pb::Authorization::from(&policy);
    assert_eq!(AuthorizationPolicy::try_from(&back).as_ref(), Ok(&policy));
    let peers = [
        None,
        Some(Identity::new("cluster.local", "default", "default")),
        Some(Identity::new(
            &policy.namespace,
            &policy.namespace,
            &policy.name,
        )),
    ];
    let connections = [("10.0.0.1", "10.0.0.2:8080"), ("fd00::1", "[fd00::2]:443")];
    for peer in peers {
        for (src, dst) in connections {
            let conn = ConnectionInfo::new(
                src.parse().expect("ip"),
                dst.parse().expect("socket address"),
                peer.clone(),
            );
            let alone = evaluate([&policy], &conn);
            // A policy's own match result decides a lone non-dry-run policy.
            if !policy.dry_run {
                let matched = policy.matches(&conn);
                let denied = !alone.decision.is_allowed();
                match policy.action {
                    meshwire_xds_workload::authorization::PolicyAction::Deny => {
                        assert_eq!(denied, matched)
                    }
                    _ => assert_eq!(denied, !matched),
                }
            } else {
                assert!(alone.decision.is_allowed());
            }
        }
    }
});
