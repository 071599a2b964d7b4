//! The objects a test puts into the API server, as the scheduler, the kubelet and a user
//! would: namespaces and their labels, service accounts, running pods with their
//! addresses, custom resource definitions, and a node proxy's pod-bound token.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::AdminClient;
use crate::error::Error;

/// The audience of the node proxies' tokens (what the agent reviews them for).
pub const TOKEN_AUDIENCE: &str = "istio-ca";

/// How long a freshly created custom resource definition may take to be served.
const CRD_TIMEOUT: Duration = Duration::from_secs(30);

/// The service account the node proxies run as (as in `deploy/`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyAccount {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Default for ProxyAccount {
    fn default() -> Self {
        Self {
            namespace: "meshwire-system".to_owned(),
            name: "meshwire-proxy".to_owned(),
        }
    }
}

impl ProxyAccount {
    /// `<namespace>/<name>`, as the agent's `--ca-trusted-node-accounts` lists it.
    pub fn qualified(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn json_err(context: &str) -> impl FnOnce(serde_json::Error) -> Error + '_ {
    move |e| Error::Io {
        context: context.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl AdminClient {
    /// Sends a request and returns the JSON body of a 2xx answer; anything else is
    /// [`Error::Api`].
    fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> Result<Value, Error> {
        let (status, text) = self.request_as(method, path, content_type, Some(body))?;
        if !(200..300).contains(&status) {
            return Err(Error::Api {
                method: method.to_owned(),
                path: path.to_owned(),
                status,
                body: text,
            });
        }
        serde_json::from_str(&text).map_err(json_err("reading the API server's answer"))
    }

    /// Creates `object` (JSON) by a POST to `path`; an object that already exists is left
    /// as it is. Returns the object as the server has it.
    pub fn create(&self, path: &str, object: &Value) -> Result<Value, Error> {
        match self.call("POST", path, "application/json", &object.to_string()) {
            Err(Error::Api { status: 409, .. }) => {
                let name = object["metadata"]["name"].as_str().unwrap_or_default();
                let item = format!("{path}/{name}");
                let (status, text) = self.request("GET", &item, None)?;
                if status != 200 {
                    return Err(Error::Api {
                        method: "GET".to_owned(),
                        path: item,
                        status,
                        body: text,
                    });
                }
                serde_json::from_str(&text).map_err(json_err("reading an existing object"))
            }
            other => other,
        }
    }

    /// Merge-patches the object at `path` (a JSON merge patch: `null` removes a key).
    pub fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, Error> {
        self.call(
            "PATCH",
            path,
            "application/merge-patch+json",
            &patch.to_string(),
        )
    }

    /// Deletes the object at `path` at once (grace period 0: no kubelet confirms a pod's
    /// end); one that does not exist counts as deleted.
    pub fn delete(&self, path: &str) -> Result<(), Error> {
        match self.call(
            "DELETE",
            path,
            "application/json",
            &json!({"gracePeriodSeconds": 0}).to_string(),
        ) {
            Ok(_) | Err(Error::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates the Namespace `name` (if it does not exist).
    pub fn create_namespace(&self, name: &str) -> Result<(), Error> {
        self.create("/api/v1/namespaces", &json!({"metadata": {"name": name}}))
            .map(drop)
    }

    /// Sets the label `key` of Namespace `namespace` to `value`, or removes it (`None`).
    pub fn label_namespace(
        &self,
        namespace: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), Error> {
        self.merge_patch(
            &format!("/api/v1/namespaces/{namespace}"),
            &json!({"metadata": {"labels": {key: value}}}),
        )
        .map(drop)
    }

    /// Creates the ServiceAccount `namespace/name` (if it does not exist).
    pub fn create_service_account(&self, namespace: &str, name: &str) -> Result<(), Error> {
        self.create(
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts"),
            &json!({"metadata": {"name": name}}),
        )
        .map(drop)
    }

    /// Creates a running pod `namespace/name` of `service_account` on `node` with the
    /// address `ip` (labelled `app: <name>`), as the scheduler and the kubelet would;
    /// returns its uid.
    pub fn create_pod(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
        node: &str,
        ip: IpAddr,
    ) -> Result<String, Error> {
        let pods = format!("/api/v1/namespaces/{namespace}/pods");
        let pod = self.create(
            &pods,
            &json!({
                "metadata": {"name": name, "labels": {"app": name}},
                "spec": {
                    "nodeName": node,
                    "serviceAccountName": service_account,
                    "containers": [{"name": "app", "image": "example.invalid/app:1"}]
                }
            }),
        )?;
        self.merge_patch(
            &format!("{pods}/{name}/status"),
            &json!({"status": {
                "phase": "Running",
                "podIP": ip.to_string(),
                "podIPs": [{"ip": ip.to_string()}]
            }}),
        )?;
        pod["metadata"]["uid"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Api {
                method: "POST".to_owned(),
                path: pods,
                status: 201,
                body: format!("no uid in {pod}"),
            })
    }

    /// Creates the custom resource definition in `yaml` and waits until `list_path` (the
    /// collection of its resources in some namespace) is served.
    pub fn install_crd(&self, yaml: &str, list_path: &str) -> Result<(), Error> {
        let path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
        match self.call("POST", path, "application/yaml", yaml) {
            Ok(_) | Err(Error::Api { status: 409, .. }) => {}
            Err(e) => return Err(e),
        }
        let start = Instant::now();
        loop {
            let (status, body) = self.request("GET", list_path, None)?;
            if status == 200 {
                return Ok(());
            }
            if start.elapsed() > CRD_TIMEOUT {
                return Err(Error::Api {
                    method: "GET".to_owned(),
                    path: list_path.to_owned(),
                    status,
                    body,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Plays the node proxy of `node` as Kubernetes knows it: the `account` (created if
    /// missing), a host-network pod `proxy-<node>` of it on `node` (likewise), and a fresh
    /// token of that account bound to the pod, for the audience [`TOKEN_AUDIENCE`] — what
    /// the proxy's projected token volume holds.
    pub fn proxy_token(&self, account: &ProxyAccount, node: &str) -> Result<String, Error> {
        let ns = &account.namespace;
        self.create_namespace(ns)?;
        self.create_service_account(ns, &account.name)?;
        let name = format!("proxy-{node}");
        let pod = self.create(
            &format!("/api/v1/namespaces/{ns}/pods"),
            &json!({
                "metadata": {"name": name},
                "spec": {
                    "nodeName": node,
                    "hostNetwork": true,
                    "serviceAccountName": account.name,
                    "containers": [{"name": "proxy", "image": "example.invalid/proxy:1"}]
                }
            }),
        )?;
        let issued = self.call(
            "POST",
            &format!(
                "/api/v1/namespaces/{ns}/serviceaccounts/{}/token",
                account.name
            ),
            "application/json",
            &json!({"spec": {
                "audiences": [TOKEN_AUDIENCE],
                "expirationSeconds": 3600,
                "boundObjectRef": {
                    "kind": "Pod", "apiVersion": "v1", "name": name,
                    "uid": pod["metadata"]["uid"]
                },
            }})
            .to_string(),
        )?;
        issued["status"]["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Api {
                method: "POST".to_owned(),
                path: "token request".to_owned(),
                status: 201,
                body: issued.to_string(),
            })
    }
}
