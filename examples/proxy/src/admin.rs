//! The admin endpoint (127.0.0.1:15000): `GET /config_dump` (pods held, the whole xDS
//! workload store, certificates) and `POST /quitquitquit` (graceful shutdown).

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use meshwire_xds_workload::authorization::AuthorizationPolicy;
use meshwire_xds_workload::workload::{HealthStatus, Port, TunnelProtocol};
use meshwire_xds_workload::{Service, Workload};
use tokio_util::sync::CancellationToken;

use crate::dataplane::DataPlane;
use crate::http::{Body, text};
use crate::pods::{Pod, Supervisor};
use crate::readiness::Readiness;

/// Produces the JSON document served on `/config_dump`.
pub(crate) type DumpFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// The `/config_dump` of the running proxy: [`config_dump`] plus its readiness.
pub(crate) fn dump_fn(
    dataplane: Arc<DataPlane>,
    supervisor: Arc<Supervisor>,
    readiness: Arc<Readiness>,
) -> DumpFn {
    Arc::new(move || {
        let mut v = config_dump(&dataplane, &supervisor.pods());
        v["ready"] = serde_json::json!({
            "xds_synced": readiness.xds_synced(),
            "zds_snapshot": readiness.zds_snapshot(),
        });
        v
    })
}

/// Answers one request on the admin port.
pub(crate) fn handle(
    req: &Request<Incoming>,
    dump: &DumpFn,
    shutdown: &CancellationToken,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/config_dump") => {
            let body = serde_json::to_vec_pretty(&dump()).unwrap_or_default();
            let mut resp = text(StatusCode::OK, body);
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        (&Method::POST, "/quitquitquit") => {
            tracing::info!("shutdown requested on /quitquitquit");
            shutdown.cancel();
            text(StatusCode::OK, "shutting down\n")
        }
        (_, "/quitquitquit") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        (_, "/") => text(StatusCode::OK, "GET /config_dump\nPOST /quitquitquit\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The JSON of `/config_dump`: pods held (from the supervisor), workloads and policies
/// (xDS), certificates.
pub(crate) fn config_dump(dp: &DataPlane, pods: &[Arc<Pod>]) -> serde_json::Value {
    let pods: Vec<_> = pods
        .iter()
        .map(|p| {
            let local = dp.find_local(p);
            let pool = dp.pool_stats(&p.info.uid).map(|st| {
                serde_json::json!({
                    "opened": st.opened, "reused": st.reused, "closed": st.closed,
                    "dial_failures": st.dial_failures, "pooled": st.pooled,
                })
            });
            serde_json::json!({
                "uid": p.info.uid,
                "name": p.info.name,
                "namespace": p.info.namespace,
                "service_account": p.info.service_account,
                "netns": p.net.id(),
                "since": crate::tls::certs::unix(p.since),
                "listeners": p.listeners.iter().map(|(k, a)| (format!("{k:?}"), a.to_string())).collect::<BTreeMap<_, _>>(),
                "workload_uid": local.as_ref().map(|w| w.uid.clone()),
                "identity": local.as_ref().map(|w| w.identity().to_string()),
                "hbone_pool": pool,
            })
        })
        .collect();
    // One consistent listing of the whole store.
    let store = dp.store().snapshot();
    let mut endpoints: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for w in &store.workloads {
        for service in w.services.keys() {
            endpoints
                .entry(service.to_string())
                .or_default()
                .push(&w.uid);
        }
    }
    serde_json::json!({
        "node": dp.node_name(),
        "pods": pods,
        "workloads": store.workloads.iter().map(|w| workload_json(w)).collect::<Vec<_>>(),
        "services": store
            .services
            .iter()
            .map(|s| service_json(s, endpoints.get(&s.key().to_string())))
            .collect::<Vec<_>>(),
        "policies": store.policies.iter().map(|p| policy_json(p)).collect::<Vec<_>>(),
        "workload_count": store.workloads.len(),
        "service_count": store.services.len(),
        "policy_count": store.policies.len(),
        "certificates": dp.certs().held(),
    })
}

fn ports_json(ports: &[Port]) -> serde_json::Value {
    ports
        .iter()
        .map(|p| serde_json::json!({"service_port": p.service_port, "target_port": p.target_port}))
        .collect()
}

fn workload_json(w: &Workload) -> serde_json::Value {
    serde_json::json!({
        "uid": w.uid,
        "name": w.name,
        "namespace": w.namespace,
        "node": w.node,
        "addresses": w.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "network": w.network,
        "protocol": if w.protocol == TunnelProtocol::Hbone { "HBONE" } else { "NONE" },
        "hbone_pending": w.hbone_pending,
        "identity": w.identity().to_string(),
        "status": if w.status == HealthStatus::Healthy { "healthy" } else { "unhealthy" },
        "services": w.services.iter().map(|(k, ports)| (k.to_string(), ports_json(ports))).collect::<BTreeMap<_, _>>(),
        "authorization_policies": w.authorization_policies,
    })
}

fn service_json(s: &Service, endpoints: Option<&Vec<&str>>) -> serde_json::Value {
    serde_json::json!({
        "name": s.name,
        "namespace": s.namespace,
        "hostname": s.hostname,
        "vips": s.vips.iter().map(|v| format!("{}/{}", v.network, v.prefix)).collect::<Vec<_>>(),
        "ports": ports_json(&s.ports),
        "subject_alt_names": s.subject_alt_names,
        "endpoints": endpoints.cloned().unwrap_or_default(),
    })
}

fn policy_json(p: &AuthorizationPolicy) -> serde_json::Value {
    serde_json::json!({
        "key": p.key(),
        "scope": format!("{:?}", p.scope),
        "action": format!("{:?}", p.action),
        "rules": p.rules.len(),
        "dry_run": p.dry_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::tests::{
        Env, add_endpoint_of, deny_principal, pb_service, pb_workload, port, put_service,
        put_workload,
    };
    use crate::http::Endpoint;
    use crate::http::tests::{request, start};

    #[tokio::test]
    async fn admin_dump_and_quit() {
        let shutdown = CancellationToken::new();
        let dump: DumpFn = Arc::new(|| serde_json::json!({"pods": [{"uid": "u1"}]}));
        let (addr, stop, task) = start(Endpoint::Admin {
            dump,
            shutdown: shutdown.clone(),
        })
        .await;
        let (code, body) = request(addr, "GET", "/config_dump").await;
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["pods"][0]["uid"], "u1");
        assert_eq!(request(addr, "GET", "/quitquitquit").await.0, 405);
        assert!(!shutdown.is_cancelled());
        assert_eq!(request(addr, "POST", "/quitquitquit").await.0, 200);
        assert!(shutdown.is_cancelled());
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn config_dump_lists_the_whole_store() {
        let mut env = Env::new().await;
        env.pod("dump-0", "shop", "web", [127, 0, 0, 141], true)
            .await;
        // A workload on another node, endpoint of a service; a policy.
        let mut remote = pb_workload("remote-0", "shop", "db", [10, 1, 0, 7], true);
        remote.node = "node-2".into();
        add_endpoint_of(&mut remote, "db", "shop", vec![port(5432, 15432)]);
        put_workload(&env.store, remote);
        let service = pb_service("db", "shop", &[[10, 96, 0, 20]], vec![port(5432, 0)]);
        put_service(&env.store, service);
        deny_principal(&env.store, "shop", "cluster.local/ns/shop/sa/bad");

        let dump = config_dump(&env.dp, &env.supervisor.pods());
        let workloads = dump["workloads"].as_array().unwrap();
        let uids: Vec<&str> = workloads
            .iter()
            .map(|w| w["uid"].as_str().unwrap())
            .collect();
        assert_eq!(
            uids,
            [
                "Kubernetes//Pod/shop/dump-0",
                "Kubernetes//Pod/shop/remote-0"
            ]
        );
        let remote = &workloads[1];
        assert_eq!(remote["node"], "node-2");
        assert_eq!(remote["hbone_pending"], false);
        assert_eq!(remote["addresses"], serde_json::json!(["10.1.0.7"]));
        assert_eq!(remote["identity"], "spiffe://cluster.local/ns/shop/sa/db");
        assert_eq!(
            remote["services"]["shop/db.shop.svc.cluster.local"],
            serde_json::json!([{"service_port": 5432, "target_port": 15432}])
        );
        assert_eq!(
            dump["services"],
            serde_json::json!([{
                "name": "db",
                "namespace": "shop",
                "hostname": "db.shop.svc.cluster.local",
                "vips": ["/10.96.0.20/32"],
                "ports": [{"service_port": 5432, "target_port": 0}],
                "subject_alt_names": [],
                "endpoints": ["Kubernetes//Pod/shop/remote-0"],
            }])
        );
        assert_eq!(dump["policies"][0]["key"], "shop/deny-one");
        assert_eq!(dump["policies"][0]["action"], "Deny");
        assert_eq!(
            (
                &dump["workload_count"],
                &dump["service_count"],
                &dump["policy_count"]
            ),
            (
                &serde_json::json!(2),
                &serde_json::json!(1),
                &serde_json::json!(1)
            )
        );
        assert_eq!(
            dump["pods"][0]["workload_uid"],
            "Kubernetes//Pod/shop/dump-0"
        );
    }
}
