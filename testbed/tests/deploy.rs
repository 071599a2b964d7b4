//! The manifests under `deploy/` against the test API server: every object is accepted
//! by a server-side dry run (`kubectl apply --dry-run=server`, as CI requires), and the
//! agent's RBAC is least privilege (what it needs, nothing more; the proxy gets nothing).

// Helpers outside #[test] functions: a failed step should abort the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use testbed::KubeApiServer;
use testbed::peers::workspace_root;

fn kubectl(kube: &KubeApiServer, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kube.kubeconfig())
        .args(args)
        .output()
        .expect("kubectl (Debian's kubernetes-client; scripts/test.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn must(kube: &KubeApiServer, args: &[&str]) -> String {
    let (ok, text) = kubectl(kube, args);
    assert!(ok, "kubectl {args:?} failed:\n{text}");
    text
}

#[test]
fn manifests_pass_a_server_side_dry_run_and_rbac_is_least_privilege() {
    let kube = KubeApiServer::start().unwrap();
    let deploy = workspace_root().join("deploy");
    let file = |name: &str| deploy.join(name).display().to_string();

    // Objects that others depend on exist for real first: the namespace (namespaced
    // objects cannot be dry-run into a missing one) and the CRD (its kind must be known).
    must(&kube, &["apply", "-f", &file("00-namespace.yaml")]);
    must(
        &kube,
        &["apply", "-f", &file("30-authorizationpolicy-crd.yaml")],
    );
    must(
        &kube,
        &[
            "wait",
            "--for=condition=established",
            "--timeout=30s",
            "crd/authorizationpolicies.security.istio.io",
        ],
    );

    let out = must(
        &kube,
        &[
            "apply",
            "--dry-run=server",
            "-f",
            &deploy.display().to_string(),
        ],
    );
    for object in [
        "namespace/meshwire-system",
        "serviceaccount/meshwire-agent",
        "serviceaccount/meshwire-proxy",
        "clusterrole.rbac.authorization.k8s.io/meshwire-agent",
        "clusterrolebinding.rbac.authorization.k8s.io/meshwire-agent",
        "customresourcedefinition.apiextensions.k8s.io/authorizationpolicies.security.istio.io",
        "daemonset.apps/meshwire-agent",
        "daemonset.apps/meshwire-proxy",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(object) && l.contains("(server dry run)")),
            "{object} missing from the dry run:\n{out}"
        );
    }

    // RBAC for real, then ask the authorizer as each service account.
    must(&kube, &["apply", "-f", &file("10-serviceaccounts.yaml")]);
    must(&kube, &["apply", "-f", &file("20-rbac.yaml")]);
    let can = |sa: &str, verb: &str, what: &str| {
        let who = format!("system:serviceaccount:meshwire-system:{sa}");
        let mut args = vec!["auth", "can-i", verb];
        match what.split_once('/') {
            Some((resource, sub)) if !resource.contains('.') => {
                args.extend([resource, "--subresource", sub]);
            }
            _ => args.push(what),
        }
        args.extend(["--as", &who]);
        // `can-i` exits 0 for yes and 1 for no.
        kubectl(&kube, &args).0
    };
    for (verb, what) in [
        ("watch", "pods"),
        ("get", "pods"),
        ("list", "namespaces"),
        ("list", "services"),
        ("watch", "serviceaccounts"),
        ("watch", "endpointslices.discovery.k8s.io"),
        ("watch", "authorizationpolicies.security.istio.io"),
        ("patch", "pods/status"),
        ("create", "tokenreviews.authentication.k8s.io"),
    ] {
        assert!(
            can("meshwire-agent", verb, what),
            "agent cannot {verb} {what}"
        );
    }
    for (verb, what) in [
        ("delete", "pods"),
        ("create", "pods"),
        ("patch", "pods"),
        ("get", "secrets"),
        ("update", "namespaces"),
        ("create", "serviceaccounts/token"),
    ] {
        assert!(
            !can("meshwire-agent", verb, what),
            "agent may {verb} {what}"
        );
    }
    for (verb, what) in [
        ("list", "pods"),
        ("get", "secrets"),
        ("create", "tokenreviews.authentication.k8s.io"),
    ] {
        assert!(
            !can("meshwire-proxy", verb, what),
            "proxy may {verb} {what}"
        );
    }
}
