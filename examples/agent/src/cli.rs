//! Command line and environment configuration.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::ca::tokenreview::Account;

/// Node agent: enrolls pods by namespace label, hands their network namespace to the node
/// proxy over ZDS, installs the in-pod redirection rules, serves workload xDS and signs
/// workload certificates.
#[derive(Debug, Clone, Parser)]
#[command(name = "agent", version, about, long_about = None)]
pub(crate) struct Args {
    /// Where the cluster is read from: the workloads file, or a Kubernetes API server.
    #[arg(long, env = "AGENT_SOURCE", value_enum, default_value_t = SourceKind::File)]
    pub(crate) source: SourceKind,

    /// Cluster-wide workloads file (YAML: namespaces, pods, policies); re-read when it changes.
    /// Required with `--source file`.
    #[arg(long, env = "AGENT_WORKLOADS", value_name = "FILE")]
    pub(crate) workloads: Option<PathBuf>,

    /// Kubeconfig of the API server (`--source kubernetes`). Unset: `KUBECONFIG`,
    /// `~/.kube/config`, then the in-cluster service account.
    #[arg(long, value_name = "FILE")]
    pub(crate) kubeconfig: Option<PathBuf>,

    /// Unix socket the CNI plugin reports new pod sandboxes on (`--source kubernetes`).
    #[arg(
        long,
        env = "CNI_SOCKET",
        value_name = "PATH",
        default_value = "/var/run/meshwire/cni.sock"
    )]
    pub(crate) cni_socket: PathBuf,

    /// The host's `/proc` (`--source kubernetes`): the network namespaces of pods that run
    /// before the agent starts are found there (mount the host's at e.g. `/host/proc`).
    #[arg(long, env = "HOST_PROC", value_name = "DIR", default_value = "/proc")]
    pub(crate) host_proc: PathBuf,

    /// DNS domain of service host names, `<service>.<namespace>.svc.<domain>`
    /// (`--source kubernetes`).
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub(crate) cluster_domain: String,

    /// Namespace whose AuthorizationPolicies without selector apply to the whole mesh
    /// (`--source kubernetes`).
    #[arg(long, env = "ROOT_NAMESPACE", default_value = "istio-system")]
    pub(crate) root_namespace: String,

    /// Name of the node this agent runs on; pods whose `node` equals it are enrolled here.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub(crate) node_name: String,

    /// Trust domain of the SPIFFE identities this agent publishes and signs.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub(crate) trust_domain: String,

    /// Namespace label that enrolls a namespace when its value is exactly "true".
    #[arg(long, env = "MTLS_LABEL_KEY", default_value = "io.cilium/mtls-enabled")]
    pub(crate) label_key: String,

    /// ZDS socket (SOCK_SEQPACKET) the node proxy connects to.
    #[arg(
        long,
        env = "ZDS_SOCKET",
        value_name = "PATH",
        default_value = "/var/run/ztunnel/ztunnel.sock"
    )]
    pub(crate) zds_socket: PathBuf,

    /// Address of the TLS gRPC endpoint serving workload xDS and the certificate service
    /// (not opened with `--ca none`).
    #[arg(
        long,
        env = "XDS_LISTEN_ADDRESS",
        value_name = "ADDR",
        default_value = "127.0.0.1:15012"
    )]
    pub(crate) xds_address: SocketAddr,

    /// Also serve workload xDS (plaintext gRPC, no CA) on this unix socket, created with mode
    /// 0600: only its owner (the agent's user) can connect.
    #[arg(long, env = "XDS_UNIX_SOCKET", value_name = "PATH")]
    pub(crate) xds_unix_socket: Option<PathBuf>,

    /// The certificate authority built into the agent. `builtin`: it signs workload
    /// certificates on the TLS endpoint (`--xds-address`), its root is written to
    /// `<state-dir>/root-cert.pem`. `none`: no CA at all, for when SPIRE issues the
    /// certificates: no key is generated, read or written, no root file, no TLS endpoint;
    /// workload xDS is served only on `--xds-unix-socket`, which is then required.
    #[arg(long, env = "AGENT_CA", value_enum, default_value_t = CaMode::Builtin)]
    pub(crate) ca: CaMode,

    /// Directory for agent state; the CA root is written to `<state-dir>/root-cert.pem`.
    #[arg(
        long,
        env = "AGENT_STATE_DIR",
        value_name = "DIR",
        default_value = "/var/run/meshwire/agent"
    )]
    pub(crate) state_dir: PathBuf,

    /// CA certificate (PEM). Unset: a root is generated. Set but missing: generated and written here.
    #[arg(long, env = "CA_CERT_FILE", value_name = "FILE", requires = "ca_key")]
    pub(crate) ca_cert: Option<PathBuf>,

    /// CA private key (PEM), used together with --ca-cert.
    #[arg(long, env = "CA_KEY_FILE", value_name = "FILE", requires = "ca_cert")]
    pub(crate) ca_key: Option<PathBuf>,

    /// In-pod redirection rule preset.
    #[arg(long, env = "RULES_PRESET", value_enum, default_value_t = RulesPreset::Istio)]
    pub(crate) rules: RulesPreset,

    /// Interval of the periodic check that repairs rule drift and re-sends lost pods
    /// (e.g. 500ms, 10s, 1m).
    #[arg(long, env = "RECONCILE_INTERVAL", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) reconcile_interval: Duration,

    /// Address of the Prometheus endpoint (`/metrics`).
    #[arg(
        long,
        env = "AGENT_METRICS_ADDRESS",
        value_name = "ADDR",
        default_value = "127.0.0.1:9964"
    )]
    pub(crate) metrics_address: SocketAddr,

    /// Connections the metrics endpoint holds at once; beyond it the oldest connection still
    /// waiting for its request headers is closed.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 256)]
    pub(crate) http_max_connections: usize,

    /// How long the metrics endpoint waits for a request's headers (e.g. 10s).
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) http_header_read_timeout: Duration,

    /// SPIRE server API socket (`unix:///path` or `/path`). Set: this agent registers one
    /// SPIRE entry per service account of every enrolled namespace (selectors `k8s:ns`,
    /// `k8s:sa`; parent `--spire-parent-id`) and deletes those of unenrolled namespaces and
    /// of accounts gone. With Kubernetes, the accounts are the ServiceAccount objects.
    #[arg(long, env = "SPIRE_SERVER_SOCKET", value_name = "SOCKET")]
    pub(crate) spire_server_socket: Option<String>,

    /// Parent SPIFFE ID of the registered entries: the node proxies' own ID, which their
    /// SPIRE agents list in `authorized_delegates`. Default: `spiffe://<trust domain>/ztunnel`.
    #[arg(long, env = "SPIRE_PARENT_ID", value_name = "SPIFFE_ID")]
    pub(crate) spire_parent_id: Option<String>,

    /// Deadline of each call to the SPIRE server (e.g. 10s).
    #[arg(long, env = "SPIRE_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) spire_timeout: Duration,

    /// Cluster id of the workloads this agent publishes.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub(crate) cluster_id: String,

    /// Bearer tokens of node proxies, for the CA and xDS: one `<node-name> <token>` per line.
    #[arg(long, env = "PROXY_TOKENS_FILE", value_name = "FILE")]
    pub(crate) proxy_tokens: Option<PathBuf>,

    /// Take any caller on this netns's loopback to be this node's proxy, for the CA and xDS
    /// (demo mode). Default: on with the file source, off with Kubernetes, which refuses it.
    #[arg(long, env = "CA_TRUST_LOOPBACK", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub(crate) ca_trust_loopback: Option<bool>,

    /// Audiences proxy service-account tokens are reviewed for (`--source kubernetes`),
    /// comma separated.
    #[arg(
        long,
        env = "TOKEN_AUDIENCES",
        value_delimiter = ',',
        default_value = crate::ca::tokenreview::DEFAULT_AUDIENCE
    )]
    pub(crate) token_audiences: Vec<String>,

    /// Service accounts of node proxies, `<namespace>/<name>` comma separated
    /// (`--source kubernetes`): a token that a TokenReview admits must be one of them, bound
    /// to a pod; the pod's node is the caller's. Empty: service-account tokens are refused.
    #[arg(
        long,
        env = "CA_TRUSTED_NODE_ACCOUNTS",
        value_name = "NS/SA,...",
        default_value = "",
        value_parser = crate::ca::tokenreview::parse_accounts
    )]
    pub(crate) ca_trusted_node_accounts: BTreeSet<Account>,

    /// Directory of the nodes' pod status files (`--source file`): this agent writes
    /// `<node-name>.json` (the pods of this node that are fully enrolled) and advertises a
    /// pod of another node as HBONE only while that node's file lists it. Default:
    /// `<workloads-file-dir>/<workloads-file-name>.status`; `none` turns this off (pods of
    /// other nodes are HBONE as soon as their namespace is enrolled). With Kubernetes the
    /// pods' `ambient.istio.io/redirection` annotation plays this part.
    #[arg(long, env = "POD_STATUS_DIR", value_name = "DIR")]
    pub(crate) pod_status_dir: Option<PathBuf>,

    /// Log output format.
    #[arg(long, env = "AGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

impl Args {
    /// Parses the command line and checks what clap cannot (`--workloads` with the file
    /// source, also when that is the default); exits with a usage error otherwise.
    pub(crate) fn parse_checked() -> Self {
        match Self::try_parse_checked(std::env::args_os()) {
            Ok(args) => args,
            Err(e) => e.exit(),
        }
    }

    /// [`Self::parse_checked`] over `args`, returning the error.
    pub(crate) fn try_parse_checked<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::CommandFactory;
        let parsed = Self::try_parse_from(args)?;
        if parsed.source == SourceKind::File && parsed.workloads.is_none() {
            return Err(Self::command().error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--workloads <FILE> is required with the file source (the default; or use --source kubernetes)",
            ));
        }
        if parsed.ca == CaMode::None {
            if parsed.xds_unix_socket.is_none() {
                return Err(Self::command().error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "--ca none needs --xds-unix-socket <PATH>: without the CA there is no TLS endpoint, so workload xDS is served only on that unix socket",
                ));
            }
            if parsed.ca_cert.is_some() {
                return Err(Self::command().error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--ca-cert and --ca-key load the built-in CA: drop them, or drop --ca none",
                ));
            }
            if parsed.proxy_tokens.is_some() || parsed.ca_trust_loopback.is_some() {
                return Err(Self::command().error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--proxy-tokens and --ca-trust-loopback decide who may call the CA and xDS over TLS; with --ca none there is neither (xDS is served on the unix socket only, to its owner): drop them, or drop --ca none",
                ));
            }
        }
        if parsed.source == SourceKind::Kubernetes && parsed.ca_trust_loopback == Some(true) {
            return Err(Self::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "--ca-trust-loopback is for the file-source demo: with Kubernetes, proxies authenticate with their service-account token",
            ));
        }
        Ok(parsed)
    }

    /// Whether loopback callers are this node's proxy: as set, else only with the file
    /// source.
    pub(crate) fn trust_loopback(&self) -> bool {
        self.ca_trust_loopback
            .unwrap_or(self.source == SourceKind::File)
    }

    /// The pod status directory, or `None` when turned off with `none` (or without a
    /// workloads file).
    pub(crate) fn pod_status_dir(&self) -> Option<PathBuf> {
        match &self.pod_status_dir {
            Some(dir) if dir.as_os_str() == "none" => None,
            Some(dir) => Some(dir.clone()),
            None => {
                let workloads = self.workloads.as_ref()?;
                let parent = workloads
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or_else(|| std::path::Path::new("."));
                let mut name = workloads
                    .file_name()
                    .map(std::ffi::OsStr::to_os_string)
                    .unwrap_or_else(|| "workloads".into());
                name.push(".status");
                Some(parent.join(name))
            }
        }
    }
}

/// Whether the agent runs its own certificate authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CaMode {
    /// The built-in CA, with xDS and the certificate service on the TLS endpoint.
    Builtin,
    /// No CA (SPIRE issues the certificates): xDS on the unix socket only.
    None,
}

/// Where the agent reads the cluster from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SourceKind {
    /// The YAML workloads file (`--workloads`).
    File,
    /// A Kubernetes API server.
    Kubernetes,
}

/// How logs are written (to standard error; filter with `RUST_LOG`, default `info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which in-pod redirection rule set the agent installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RulesPreset {
    /// Istio-style chains (`ISTIO_*`).
    Istio,
    /// Cilium-style chains (`CILIUM_*`).
    Cilium,
}

impl RulesPreset {
    /// The rule set of this preset.
    pub(crate) fn rule_set(self) -> meshwire_netns::rules::RuleSet {
        match self {
            Self::Istio => meshwire_netns::rules::RuleSet::istio(),
            Self::Cilium => meshwire_netns::rules::RuleSet::cilium(),
        }
    }
}

/// Parses a duration as `humantime` does (`500ms`, `10s`, `2m`, `1h`, `1m 30s` …) or a bare
/// number of seconds; zero is refused.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))?
        }
    };
    if d.is_zero() {
        return Err(format!("duration {s:?} must be greater than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Parses the required flags (`--workloads w.yaml --node-name n1`) followed by `extra`.
    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let required = ["agent", "--workloads", "w.yaml", "--node-name", "n1"];
        Args::try_parse_from(required.iter().chain(extra))
    }

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_contract() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.trust_domain, "cluster.local");
        assert_eq!(a.label_key, "io.cilium/mtls-enabled");
        assert_eq!(a.zds_socket, PathBuf::from("/var/run/ztunnel/ztunnel.sock"));
        assert_eq!(
            a.xds_address,
            "127.0.0.1:15012".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(a.xds_unix_socket, None);
        assert_eq!(a.ca, CaMode::Builtin);
        assert_eq!(a.state_dir, PathBuf::from("/var/run/meshwire/agent"));
        assert_eq!(a.ca_cert, None);
        assert_eq!(a.rules, RulesPreset::Istio);
        assert_eq!(a.reconcile_interval, Duration::from_secs(10));
        assert_eq!(
            a.metrics_address,
            "127.0.0.1:9964".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(a.cluster_id, "Kubernetes");
        assert_eq!(a.proxy_tokens, None);
        assert!(a.trust_loopback(), "on for the file source");
        assert_eq!(a.token_audiences, ["istio-ca"]);
        assert!(a.ca_trusted_node_accounts.is_empty());
        assert_eq!(a.log_format, LogFormat::Text);
        assert_eq!(a.source, SourceKind::File);
        assert_eq!(a.workloads, Some(PathBuf::from("w.yaml")));
        assert_eq!(a.kubeconfig, None);
        assert_eq!(a.cni_socket, PathBuf::from("/var/run/meshwire/cni.sock"));
        assert_eq!(a.cluster_domain, "cluster.local");
        assert_eq!(a.host_proc, PathBuf::from("/proc"));
        assert_eq!(a.root_namespace, "istio-system");
        assert_eq!(
            a.pod_status_dir(),
            Some(PathBuf::from("./w.yaml.status")),
            "next to the workloads file"
        );
        let a = Args::try_parse_from([
            "agent",
            "--workloads",
            "/etc/mesh/w.yaml",
            "--node-name",
            "n1",
        ])
        .unwrap();
        assert_eq!(
            a.pod_status_dir(),
            Some(PathBuf::from("/etc/mesh/w.yaml.status"))
        );
        let with = |dir: &str| parse(&["--pod-status-dir", dir]).unwrap().pod_status_dir();
        assert_eq!(with("none"), None, "`none` turns the gating off");
        assert_eq!(with("/run/s"), Some(PathBuf::from("/run/s")));
        let a = parse(&["--ca-trust-loopback", "false"]).unwrap();
        assert!(!a.trust_loopback());
    }

    #[test]
    fn flags_and_env_names_match_the_contract() {
        let cmd = Args::command();
        let arg = |long: &str| {
            cmd.get_arguments()
                .find(|a| a.get_long() == Some(long))
                .unwrap_or_else(|| panic!("--{long} missing"))
        };
        for (long, env) in [
            ("workloads", "AGENT_WORKLOADS"),
            ("node-name", "NODE_NAME"),
            ("trust-domain", "TRUST_DOMAIN"),
            ("label-key", "MTLS_LABEL_KEY"),
            ("zds-socket", "ZDS_SOCKET"),
            ("xds-address", "XDS_LISTEN_ADDRESS"),
            ("xds-unix-socket", "XDS_UNIX_SOCKET"),
            ("ca", "AGENT_CA"),
            ("state-dir", "AGENT_STATE_DIR"),
            ("ca-cert", "CA_CERT_FILE"),
            ("ca-key", "CA_KEY_FILE"),
            ("rules", "RULES_PRESET"),
            ("reconcile-interval", "RECONCILE_INTERVAL"),
            ("metrics-address", "AGENT_METRICS_ADDRESS"),
            ("cluster-id", "CLUSTER_ID"),
            ("pod-status-dir", "POD_STATUS_DIR"),
            ("source", "AGENT_SOURCE"),
            ("cni-socket", "CNI_SOCKET"),
            ("host-proc", "HOST_PROC"),
            ("cluster-domain", "CLUSTER_DOMAIN"),
            ("root-namespace", "ROOT_NAMESPACE"),
            ("ca-trust-loopback", "CA_TRUST_LOOPBACK"),
            ("token-audiences", "TOKEN_AUDIENCES"),
            ("ca-trusted-node-accounts", "CA_TRUSTED_NODE_ACCOUNTS"),
            ("proxy-tokens", "PROXY_TOKENS_FILE"),
        ] {
            assert_eq!(
                arg(long).get_env().and_then(|e| e.to_str()),
                Some(env),
                "--{long}"
            );
        }
    }

    #[test]
    fn required_flags_and_pairs() {
        assert!(Args::try_parse_checked(["agent", "--node-name", "n1"]).is_err());
        assert!(Args::try_parse_checked(["agent", "--workloads", "w"]).is_err());
        // --ca-cert without --ca-key is refused.
        assert!(parse(&["--ca-cert", "c"]).is_err());
        assert!(parse(&["--ca-cert", "c", "--ca-key", "k"]).is_ok());
        let a = parse(&["--rules", "cilium", "--reconcile-interval", "250ms"]).unwrap();
        assert_eq!(a.rules, RulesPreset::Cilium);
        assert_eq!(a.reconcile_interval, Duration::from_millis(250));

        // Kubernetes needs no workloads file; the file source does, also by default.
        let a = Args::try_parse_checked([
            "agent",
            "--source",
            "kubernetes",
            "--node-name",
            "n",
            "--kubeconfig",
            "/etc/k",
        ])
        .unwrap();
        assert_eq!(a.source, SourceKind::Kubernetes);
        assert_eq!(a.workloads, None);
        assert_eq!(a.pod_status_dir(), None);
        assert_eq!(a.kubeconfig, Some(PathBuf::from("/etc/k")));
        assert!(!a.trust_loopback(), "off with Kubernetes");
        let kube = ["agent", "--source", "kubernetes", "--node-name", "n"];
        let with = |extra: &[&str]| Args::try_parse_checked(kube.iter().chain(extra));
        assert!(
            with(&["--ca-trust-loopback", "true"]).is_err(),
            "loopback trust is for the file-source demo only"
        );
        assert!(
            !with(&["--ca-trust-loopback", "false"])
                .unwrap()
                .trust_loopback()
        );
        let a = with(&[
            "--token-audiences",
            "istio-ca,other",
            "--ca-trusted-node-accounts",
            "meshwire-system/meshwire-proxy, istio-system/ztunnel",
        ])
        .unwrap();
        assert_eq!(a.token_audiences, ["istio-ca", "other"]);
        assert_eq!(
            a.ca_trusted_node_accounts.into_iter().collect::<Vec<_>>(),
            [
                ("istio-system".to_owned(), "ztunnel".to_owned()),
                ("meshwire-system".to_owned(), "meshwire-proxy".to_owned())
            ]
        );
        for bad in ["meshwire-proxy", "ns/", "/sa", "a/b/c"] {
            assert!(with(&["--ca-trusted-node-accounts", bad]).is_err(), "{bad}");
        }
        assert!(
            Args::try_parse_checked(["agent", "--source", "file", "--node-name", "n"]).is_err()
        );
    }

    #[test]
    fn the_ca_can_be_turned_off_with_xds_on_the_unix_socket_only() {
        let base = ["agent", "--workloads", "w.yaml", "--node-name", "n1"];
        let with = |extra: &[&str]| Args::try_parse_checked(base.iter().chain(extra));
        let a = with(&["--ca", "none", "--xds-unix-socket", "/run/xds.sock"]).unwrap();
        assert_eq!(a.ca, CaMode::None);
        let e = with(&["--ca", "none"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(e.to_string().contains("--xds-unix-socket"), "{e}");
        let e = with(&[
            "--ca",
            "none",
            "--xds-unix-socket",
            "/run/xds.sock",
            "--ca-cert",
            "c",
            "--ca-key",
            "k",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        for unused in [
            &["--proxy-tokens", "/etc/tokens"][..],
            &["--ca-trust-loopback", "true"][..],
            &["--ca-trust-loopback", "false"][..],
        ] {
            let none = ["--ca", "none", "--xds-unix-socket", "/run/xds.sock"];
            let e = with(&[&none[..], unused].concat()).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{unused:?}"
            );
            assert!(e.to_string().contains("--ca none"), "{e}");
            assert!(with(unused).is_ok(), "{unused:?} with the built-in CA");
        }
        assert!(with(&["--ca", "builtin"]).is_ok());
        assert!(with(&["--ca", "spire"]).is_err(), "only builtin or none");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }
}
