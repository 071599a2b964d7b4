//! What the agent's binary tests share.

use std::path::Path;

/// A workloads file of node `n1`: `client-1` (uid `uid-client`, namespace `shop`, enrolled
/// when `labelled`) in the netns `pods[0].1`, `old-1` (uid `uid-old`, namespace `legacy`,
/// never enrolled) in `pods[1].1`, and `server-1` (uid `uid-server`, `shop`) on node `n2`.
pub(crate) fn workloads(labelled: bool, pods: &[(&str, &Path)]) -> String {
    let label = if labelled {
        r#"{ io.cilium/mtls-enabled: "true" }"#
    } else {
        "{}"
    };
    format!(
        r#"
namespaces:
  - name: shop
    labels: {label}
  - name: legacy
    labels: {{}}
pods:
  - name: client-1
    namespace: shop
    serviceAccount: client
    uid: uid-client
    ip: 10.10.1.2
    node: n1
    netns: {}
  - name: old-1
    namespace: legacy
    uid: uid-old
    ip: 10.10.1.3
    node: n1
    netns: {}
  - name: server-1
    namespace: shop
    serviceAccount: server
    uid: uid-server
    ip: 10.10.2.2
    node: n2
"#,
        pods[0].1.display(),
        pods[1].1.display()
    )
}
