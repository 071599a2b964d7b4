//! Command line and environment: every flag of the proxy, its environment variable and its
//! default, and the resolved [`Config`] the rest of the binary runs on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

/// Default ZDS socket path (the agent listens, the proxy connects).
pub(crate) const DEFAULT_ZDS_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";
/// Default xDS (and CA) endpoint: gRPC over TLS on the node's loopback.
pub(crate) const DEFAULT_XDS_ADDRESS: &str = "https://127.0.0.1:15012";
/// Default root certificate that signs the xDS/CA serving certificate.
pub(crate) const DEFAULT_XDS_ROOT_CA: &str = "/var/run/meshwire/agent/root-cert.pem";
/// Default `SO_MARK` on every socket the proxy makes inside a pod (0x539).
pub(crate) const DEFAULT_PACKET_MARK: u32 = 1337;

/// Node proxy: per-pod listeners inside each enrolled pod's network namespace (15001 outbound,
/// 15006 inbound plaintext, 15008 inbound HBONE), HBONE between pods with SPIFFE identities
/// checked on both ends, L4 authorization, Prometheus metrics, readiness and admin endpoints.
#[derive(Debug, Clone, Parser)]
#[command(name = "proxy", version, about, long_about = None)]
pub(crate) struct Cli {
    /// ZDS socket the node agent listens on (SOCK_SEQPACKET); the proxy connects to it.
    #[arg(long, env = "INPOD_UDS", default_value = DEFAULT_ZDS_SOCKET)]
    pub(crate) zds_socket: PathBuf,

    /// Uid the node agent runs as, when not root: the ZDS socket is refused unless the
    /// process that created it runs as root, as this proxy's uid, or as one of these (repeat
    /// the flag or separate with commas).
    #[arg(long = "zds-agent-uid", env = "ZDS_AGENT_UID", value_delimiter = ',')]
    pub(crate) zds_agent_uids: Vec<u32>,

    /// Workload xDS endpoint (Delta ADS): `https://host:port` (gRPC over TLS, the server
    /// verified against `XDS_ROOT_CA`), or `unix:///absolute/path` (plaintext gRPC on the node
    /// agent's unix socket, which its file mode guards; `XDS_ROOT_CA` is then not read). The
    /// bearer token and `clusterid` header are sent either way.
    #[arg(long, env = "XDS_ADDRESS", default_value = DEFAULT_XDS_ADDRESS)]
    pub(crate) xds_address: String,

    /// PEM root(s) that sign the xDS serving certificate: a file (waited for until it exists),
    /// or the PEM text itself. Not read with a `unix://` xDS address.
    #[arg(long, env = "XDS_ROOT_CA", default_value = DEFAULT_XDS_ROOT_CA)]
    pub(crate) xds_root_ca: String,

    /// Certificate service endpoint (IstioCertificateService over gRPC/TLS) [default: the xDS
    /// address; required with a `unix://` xDS address unless `SPIRE_ENABLED`].
    #[arg(long, env = "CA_ADDRESS")]
    pub(crate) ca_address: Option<String>,

    /// PEM root(s) that sign the CA serving certificate [default: the xDS root].
    #[arg(long, env = "CA_ROOT_CA")]
    pub(crate) ca_root_ca: Option<String>,

    /// Name of the node this proxy serves; only pods whose xDS workload names this node are
    /// proxied.
    #[arg(long, env = "NODE_NAME")]
    pub(crate) node_name: String,

    /// Cluster id sent to the control plane (`clusterid` header and node metadata).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub(crate) cluster_id: String,

    /// File holding a bearer token for the control plane (re-read per request); a value
    /// without `/` that names no existing file is used as the token itself.
    #[arg(long = "auth-token-file", env = "AUTH_TOKEN")]
    pub(crate) auth_token: Option<String>,

    /// SO_MARK put on every socket made inside a pod network namespace.
    #[arg(long, env = "PACKET_MARK", default_value_t = DEFAULT_PACKET_MARK)]
    pub(crate) packet_mark: u32,

    /// Prometheus metrics endpoint (`/metrics`, `/stats/prometheus`).
    #[arg(long, default_value = "[::]:15020")]
    pub(crate) metrics_address: SocketAddr,

    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, default_value = "[::]:15021")]
    pub(crate) readiness_address: SocketAddr,

    /// Admin endpoint (`/config_dump`, `/quitquitquit`).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub(crate) admin_address: SocketAddr,

    /// Requested validity of workload certificates (e.g. `24h`, `90m`, `3600s`).
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration)]
    pub(crate) secret_ttl: Duration,

    /// IP announced to the control plane in the xDS node id and metadata.
    #[arg(long, env = "INSTANCE_IP", default_value = "1.1.1.1")]
    pub(crate) instance_ip: std::net::IpAddr,

    /// Name announced to the control plane (the proxy's own pod name, if any).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub(crate) pod_name: String,

    /// Namespace announced to the control plane (the proxy's own namespace, if any).
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    pub(crate) pod_namespace: String,

    /// Connect to applications with the original client address as source (needs the in-pod
    /// policy routing: connmark 0x111, table 100); falls back to the pod address when the
    /// kernel refuses. `true` and `auto` both mean: try, and fall back; `false`: never.
    #[arg(long, env = "ENABLE_ORIG_SRC", default_value = "true", value_parser = parse_orig_src, action = clap::ArgAction::Set, value_name = "true|false|auto")]
    pub(crate) original_source: bool,

    /// How long in-flight connections may run after SIGTERM before they are cut.
    #[arg(
        long,
        env = "CONNECTION_TERMINATION_DEADLINE",
        default_value = "5s",
        value_parser = parse_duration
    )]
    pub(crate) drain_timeout: Duration,

    /// Connections one pod's 15008 may hold (in their handshake or established). Beyond it
    /// the oldest connection of the pod that has not authenticated yet is closed; when all
    /// are established, the newcomer is.
    #[arg(long, env = "HBONE_MAX_CONNECTIONS_PER_POD", default_value_t = 1024)]
    pub(crate) hbone_max_connections_per_pod: usize,

    /// Connections all pods' 15008 together may hold, with the same shedding.
    #[arg(long, env = "HBONE_MAX_CONNECTIONS", default_value_t = 16384)]
    pub(crate) hbone_max_connections: usize,

    /// Deadline on 15008 from the TCP accept to the first CONNECT request (TLS and HTTP/2
    /// handshakes included).
    #[arg(long, env = "HBONE_ACCEPT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) hbone_accept_timeout: Duration,

    /// How long an outbound connection from a pod in strict mutual-TLS mode waits for a
    /// destination that is enrolled but not ready for HBONE yet (xDS `hbone_pending`);
    /// past it the connection is reset, never sent as plain TCP.
    #[arg(long, env = "STRICT_HBONE_WAIT", default_value = "5s", value_parser = parse_duration)]
    pub(crate) strict_hbone_wait: Duration,

    /// Connections the metrics and readiness endpoints may hold together; beyond it the
    /// oldest connection still waiting for its request headers is closed.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 256)]
    pub(crate) http_max_connections: usize,

    /// How long the metrics, readiness and admin endpoints wait for a request's headers.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) http_header_read_timeout: Duration,

    /// Take workload certificates from the local SPIRE agent (Delegated Identity API, by the
    /// pod's selectors or a process of the pod, see `--spire-subject`) instead of the
    /// certificate service (`CA_ADDRESS`). The SPIRE agent must list this proxy's SPIFFE ID
    /// in `authorized_delegates`.
    #[arg(long, env = "SPIRE_ENABLED", default_value = "false", action = clap::ArgAction::Set, value_name = "true|false")]
    pub(crate) spire_enabled: bool,

    /// The SPIRE agent's admin socket (with `SPIRE_ENABLED`).
    #[arg(long, env = "SPIRE_ADMIN_ENDPOINT_SOCKET", default_value = meshwire_svid::spire::DEFAULT_ADMIN_ENDPOINT)]
    pub(crate) spire_admin_endpoint_socket: String,

    /// Deadline of every SPIRE call, and the longest wait for a pod's SVID.
    #[arg(long, env = "SPIRE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) spire_timeout: Duration,

    /// How pods are identified to SPIRE (with `SPIRE_ENABLED`): `selectors` sends the
    /// pod's `k8s:ns:<namespace>` and `k8s:sa:<service account>` (from ZDS/xDS), trusted as
    /// given; `pid` sends the PID of a process of the pod, found in `/proc` by the pod's
    /// network namespace, and the SPIRE agent's workload attestors find its selectors
    /// (e.g. `unix:uid:<uid>`). With `pid`, a pod with no process yet gets no certificate
    /// until one appears (looked for up to `SPIRE_TIMEOUT` per attempt, then retried).
    #[arg(long, env = "SPIRE_SUBJECT", default_value = "selectors", value_enum)]
    pub(crate) spire_subject: SpireSubject,

    /// Log output format (`plain` is taken as `text`).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "plain", "json"])]
    pub(crate) log_format: String,
}

/// Everything the proxy runs on, resolved from [`Cli`] (defaults that depend on other flags
/// filled in).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) zds_socket: PathBuf,
    pub(crate) zds_agent_uids: Vec<u32>,
    pub(crate) xds_address: XdsEndpoint,
    pub(crate) xds_root_ca: String,
    /// The certificate service; `None` only with SPIRE and a unix xDS socket (nothing to ask).
    pub(crate) ca_address: Option<String>,
    pub(crate) ca_root_ca: String,
    pub(crate) node_name: String,
    pub(crate) cluster_id: String,
    pub(crate) auth_token: Option<String>,
    pub(crate) packet_mark: u32,
    pub(crate) metrics_address: SocketAddr,
    pub(crate) readiness_address: SocketAddr,
    pub(crate) admin_address: SocketAddr,
    pub(crate) secret_ttl: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) instance_ip: std::net::IpAddr,
    pub(crate) pod_name: String,
    pub(crate) pod_namespace: String,
    pub(crate) original_source: bool,
    pub(crate) hbone_limit: meshwire_hbone::server::ConnectionLimitConfig,
    pub(crate) hbone_accept_timeout: Duration,
    pub(crate) strict_hbone_wait: Duration,
    pub(crate) http: crate::http::HttpLimits,
    /// SPIRE instead of the certificate service, when enabled.
    pub(crate) spire: Option<SpireSettings>,
}

/// Where workload xDS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum XdsEndpoint {
    /// gRPC over TLS to this `https://` URI, verified against `XDS_ROOT_CA`.
    Tls(String),
    /// Plaintext gRPC on this unix socket (`unix:///path`).
    Unix(PathBuf),
}

impl XdsEndpoint {
    /// Parses `XDS_ADDRESS`: `unix:///absolute/path`, or an `https://` address (the scheme
    /// may be left out).
    pub(crate) fn parse(address: &str) -> anyhow::Result<Self> {
        let address = address.trim();
        let Some(path) = address.strip_prefix("unix:") else {
            return normalize_address(address).map(Self::Tls);
        };
        let path = path.strip_prefix("//").unwrap_or_default();
        if !path.starts_with('/') || path.ends_with('/') || path.contains('\0') {
            bail!(
                "{address:?}: a unix socket address is unix:// followed by the socket's absolute path, e.g. unix:///var/run/cilium/xds.sock"
            );
        }
        Ok(Self::Unix(PathBuf::from(path)))
    }
}

impl std::fmt::Display for XdsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tls(uri) => f.write_str(uri),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// Where the SPIRE agent is, with `SPIRE_ENABLED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpireSettings {
    /// The admin socket (`unix:///path`).
    pub(crate) admin_socket: String,
    /// Deadline of every call.
    pub(crate) timeout: Duration,
    /// How pods are identified to the agent.
    pub(crate) subject: SpireSubject,
}

/// How pods are identified to the SPIRE agent (`SPIRE_SUBJECT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SpireSubject {
    /// The pod's `k8s:ns` and `k8s:sa` selectors.
    Selectors,
    /// The PID of a process in the pod's network namespace.
    Pid,
}

impl Cli {
    /// Resolves dependent defaults and checks values clap cannot check.
    pub(crate) fn into_config(self) -> anyhow::Result<Config> {
        if self.node_name.trim().is_empty() {
            bail!("--node-name must not be empty");
        }
        if self.packet_mark == 0 {
            bail!("--packet-mark must not be 0 (the in-pod rules exempt marked sockets)");
        }
        let xds_address = XdsEndpoint::parse(&self.xds_address).context("--xds-address")?;
        let ca_address = match (self.ca_address, &xds_address) {
            (Some(a), _) => Some(normalize_address(&a).context("--ca-address")?),
            (None, XdsEndpoint::Tls(uri)) => Some(uri.clone()),
            (None, XdsEndpoint::Unix(_)) if self.spire_enabled => None,
            (None, XdsEndpoint::Unix(_)) => bail!(
                "--ca-address is required with a unix:// --xds-address (the certificate service is served over TLS), unless --spire-enabled"
            ),
        };
        if self.secret_ttl.is_zero() {
            bail!("--secret-ttl must be positive");
        }
        if self.hbone_max_connections_per_pod == 0 || self.hbone_max_connections == 0 {
            bail!("--hbone-max-connections and --hbone-max-connections-per-pod must be positive");
        }
        if self.http_max_connections == 0 {
            bail!("--http-max-connections must be positive");
        }
        if self.hbone_accept_timeout.is_zero() || self.http_header_read_timeout.is_zero() {
            bail!("--hbone-accept-timeout and --http-header-read-timeout must be positive");
        }
        if self.spire_enabled && self.spire_timeout.is_zero() {
            bail!("--spire-timeout must be positive");
        }
        if !self.spire_enabled && self.spire_subject == SpireSubject::Pid {
            bail!("--spire-subject pid (SPIRE_SUBJECT) needs --spire-enabled true (SPIRE_ENABLED)");
        }
        let spire = self.spire_enabled.then(|| SpireSettings {
            admin_socket: self.spire_admin_endpoint_socket.clone(),
            timeout: self.spire_timeout,
            subject: self.spire_subject,
        });
        let mut hbone_limit = meshwire_hbone::server::ConnectionLimitConfig::default();
        hbone_limit.max_per_key = self.hbone_max_connections_per_pod;
        hbone_limit.max_total = self.hbone_max_connections;
        Ok(Config {
            zds_socket: self.zds_socket,
            zds_agent_uids: self.zds_agent_uids,
            ca_root_ca: self.ca_root_ca.unwrap_or_else(|| self.xds_root_ca.clone()),
            xds_root_ca: self.xds_root_ca,
            xds_address,
            ca_address,
            node_name: self.node_name,
            cluster_id: self.cluster_id,
            auth_token: self.auth_token,
            packet_mark: self.packet_mark,
            metrics_address: self.metrics_address,
            readiness_address: self.readiness_address,
            admin_address: self.admin_address,
            secret_ttl: self.secret_ttl,
            drain_timeout: self.drain_timeout,
            instance_ip: self.instance_ip,
            pod_name: self.pod_name,
            pod_namespace: self.pod_namespace,
            original_source: self.original_source,
            hbone_limit,
            hbone_accept_timeout: self.hbone_accept_timeout,
            strict_hbone_wait: self.strict_hbone_wait,
            http: crate::http::HttpLimits {
                max_connections: self.http_max_connections,
                header_read_timeout: self.http_header_read_timeout,
            },
            spire,
        })
    }
}

/// Adds `https://` when the address has no scheme (as the control-plane clients of the mesh do)
/// and rejects anything but `http`/`https` URIs with a host and port.
pub(crate) fn normalize_address(address: &str) -> anyhow::Result<String> {
    let address = address.trim();
    let with_scheme = if address.contains("://") {
        address.to_owned()
    } else {
        format!("https://{address}")
    };
    let uri: hyper::Uri = with_scheme
        .parse()
        .with_context(|| format!("{address:?} is not a URI"))?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        other => bail!("{address:?}: unsupported scheme {other:?} (use https://)"),
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("{address:?} has no host");
    }
    Ok(with_scheme.trim_end_matches('/').to_owned())
}

/// Parses `ENABLE_ORIG_SRC`: `true`/`auto` (try the original source, fall back to the pod
/// address) or `false`.
pub(crate) fn parse_orig_src(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "auto" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(format!("{other:?}: expected true, false or auto")),
    }
}

/// Parses a duration as the mesh's environment variables spell it: `24h`, `90m`, `1h30m`, `10s`,
/// `500ms`, `2d` (units may also be separated by spaces, as `humantime` reads them), or a bare
/// number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Parses like the binary does, but without reading the process environment so the tests
    /// do not depend on it.
    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        use clap::FromArgMatches;
        let cmd = Cli::command().mut_args(|a| a.env(None));
        let matches =
            cmd.try_get_matches_from(std::iter::once("proxy").chain(args.iter().copied()))?;
        Cli::from_arg_matches(&matches)
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_contract() {
        let cfg = parse(&["--node-name", "node-1"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(
            cfg.zds_socket,
            PathBuf::from("/var/run/ztunnel/ztunnel.sock")
        );
        assert_eq!(
            cfg.xds_address,
            XdsEndpoint::Tls("https://127.0.0.1:15012".to_owned())
        );
        assert_eq!(cfg.ca_address.as_deref(), Some("https://127.0.0.1:15012"));
        assert_eq!(cfg.xds_root_ca, "/var/run/meshwire/agent/root-cert.pem");
        assert_eq!(cfg.ca_root_ca, "/var/run/meshwire/agent/root-cert.pem");
        assert_eq!(cfg.node_name, "node-1");
        assert_eq!(cfg.cluster_id, "Kubernetes");
        assert_eq!(cfg.auth_token, None);
        assert_eq!(cfg.packet_mark, 0x539);
        assert_eq!(cfg.metrics_address, "[::]:15020".parse().unwrap());
        assert_eq!(cfg.readiness_address, "[::]:15021".parse().unwrap());
        assert_eq!(cfg.admin_address, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(cfg.secret_ttl, Duration::from_secs(24 * 3600));
        assert!(cfg.zds_agent_uids.is_empty());
        assert_eq!(cfg.hbone_limit.max_per_key, 1024);
        assert_eq!(cfg.hbone_limit.max_total, 16384);
        assert_eq!(cfg.hbone_accept_timeout, Duration::from_secs(10));
        assert_eq!(cfg.strict_hbone_wait, Duration::from_secs(5));
        assert_eq!(cfg.http.max_connections, 256);
        assert_eq!(cfg.http.header_read_timeout, Duration::from_secs(10));
    }

    #[test]
    fn zds_agent_uids_repeat_or_separate_with_commas() {
        let cfg = parse(&[
            "--node-name",
            "n",
            "--zds-agent-uid",
            "1000,1001",
            "--zds-agent-uid",
            "7",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(cfg.zds_agent_uids, vec![1000, 1001, 7]);
    }

    #[test]
    fn spire_is_chosen_by_one_flag() {
        let cfg = parse(&["--node-name", "n"]).unwrap().into_config().unwrap();
        assert_eq!(cfg.spire, None);
        let cfg = parse(&["--node-name", "n", "--spire-enabled", "true"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(
            cfg.spire,
            Some(SpireSettings {
                admin_socket: "unix:///run/spire/sockets/admin.sock".to_owned(),
                timeout: Duration::from_secs(10),
                subject: SpireSubject::Selectors,
            })
        );
        let cfg = parse(&[
            "--node-name",
            "n",
            "--spire-enabled",
            "true",
            "--spire-admin-endpoint-socket",
            "unix:///tmp/a.sock",
            "--spire-timeout",
            "3s",
            "--spire-subject",
            "pid",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(
            cfg.spire.map(|s| (s.admin_socket, s.timeout, s.subject)),
            Some((
                "unix:///tmp/a.sock".to_owned(),
                Duration::from_secs(3),
                SpireSubject::Pid
            ))
        );
        assert!(parse(&["--node-name", "n", "--spire-subject", "cgroup"]).is_err());
        // PID mode without SPIRE would be silently ignored: refused instead.
        let err = parse(&["--node-name", "n", "--spire-subject", "pid"])
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(err.to_string().contains("needs --spire-enabled"), "{err:#}");
    }

    #[test]
    fn node_name_is_required() {
        let err = parse(&[]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn env_names_match_the_contract() {
        let cmd = Cli::command();
        let env_of = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env_of("zds_socket").as_deref(), Some("INPOD_UDS"));
        assert_eq!(env_of("zds_agent_uids").as_deref(), Some("ZDS_AGENT_UID"));
        assert_eq!(env_of("xds_address").as_deref(), Some("XDS_ADDRESS"));
        assert_eq!(env_of("xds_root_ca").as_deref(), Some("XDS_ROOT_CA"));
        assert_eq!(env_of("ca_address").as_deref(), Some("CA_ADDRESS"));
        assert_eq!(env_of("ca_root_ca").as_deref(), Some("CA_ROOT_CA"));
        assert_eq!(env_of("node_name").as_deref(), Some("NODE_NAME"));
        assert_eq!(env_of("cluster_id").as_deref(), Some("CLUSTER_ID"));
        assert_eq!(env_of("auth_token").as_deref(), Some("AUTH_TOKEN"));
        assert_eq!(env_of("packet_mark").as_deref(), Some("PACKET_MARK"));
        assert_eq!(env_of("secret_ttl").as_deref(), Some("SECRET_TTL"));
        assert_eq!(
            env_of("original_source").as_deref(),
            Some("ENABLE_ORIG_SRC")
        );
        assert_eq!(
            env_of("drain_timeout").as_deref(),
            Some("CONNECTION_TERMINATION_DEADLINE")
        );
        for (id, env) in [
            (
                "hbone_max_connections_per_pod",
                "HBONE_MAX_CONNECTIONS_PER_POD",
            ),
            ("hbone_max_connections", "HBONE_MAX_CONNECTIONS"),
            ("hbone_accept_timeout", "HBONE_ACCEPT_TIMEOUT"),
            ("strict_hbone_wait", "STRICT_HBONE_WAIT"),
            ("http_max_connections", "HTTP_MAX_CONNECTIONS"),
            ("http_header_read_timeout", "HTTP_HEADER_READ_TIMEOUT"),
            ("spire_enabled", "SPIRE_ENABLED"),
            ("spire_admin_endpoint_socket", "SPIRE_ADMIN_ENDPOINT_SOCKET"),
            ("spire_timeout", "SPIRE_TIMEOUT"),
            ("spire_subject", "SPIRE_SUBJECT"),
        ] {
            assert_eq!(env_of(id).as_deref(), Some(env), "{id}");
        }
        assert_eq!(env_of("metrics_address"), None);
        assert_eq!(env_of("readiness_address"), None);
        assert_eq!(env_of("admin_address"), None);
        let long_of = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_long())
        };
        assert_eq!(long_of("auth_token"), Some("auth-token-file"));
        assert_eq!(long_of("zds_socket"), Some("zds-socket"));
        assert_eq!(long_of("zds_agent_uids"), Some("zds-agent-uid"));
        assert_eq!(long_of("metrics_address"), Some("metrics-address"));
    }

    #[test]
    fn explicit_ca_overrides_xds() {
        let cfg = parse(&[
            "--node-name",
            "n",
            "--xds-address",
            "localhost:15012",
            "--ca-address",
            "https://10.0.0.1:15012/",
            "--ca-root-ca",
            "/tmp/ca.pem",
            "--packet-mark",
            "4096",
            "--secret-ttl",
            "1h30m",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(cfg.xds_address.to_string(), "https://localhost:15012");
        assert_eq!(cfg.ca_address.as_deref(), Some("https://10.0.0.1:15012"));
        assert_eq!(cfg.ca_root_ca, "/tmp/ca.pem");
        assert_eq!(cfg.xds_root_ca, DEFAULT_XDS_ROOT_CA);
        assert_eq!(cfg.packet_mark, 4096);
        assert_eq!(cfg.secret_ttl, Duration::from_secs(5400));
    }

    #[test]
    fn xds_over_a_unix_socket() {
        let cfg = parse(&[
            "--node-name",
            "n",
            "--xds-address",
            "unix:///var/run/cilium/xds.sock",
            "--spire-enabled",
            "true",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(
            cfg.xds_address,
            XdsEndpoint::Unix(PathBuf::from("/var/run/cilium/xds.sock"))
        );
        assert_eq!(
            cfg.xds_address.to_string(),
            "unix:///var/run/cilium/xds.sock"
        );
        assert_eq!(cfg.ca_address, None, "SPIRE issues the certificates");

        // Without SPIRE the certificate service must be named: it is not on the socket.
        let unix = ["--node-name", "n", "--xds-address", "unix:///run/xds.sock"];
        let e = parse(&unix).unwrap().into_config().unwrap_err();
        assert!(
            format!("{e:#}").contains("--ca-address is required"),
            "{e:#}"
        );
        let with_ca = [&unix[..], &["--ca-address", "https://10.0.0.1:15012"]].concat();
        let cfg = parse(&with_ca).unwrap().into_config().unwrap();
        assert_eq!(cfg.ca_address.as_deref(), Some("https://10.0.0.1:15012"));

        for bad in [
            "unix://relative/xds.sock",
            "unix:/var/run/xds.sock",
            "unix:",
            "unix://",
            "unix:///var/run/",
        ] {
            let args = [
                "--node-name",
                "n",
                "--xds-address",
                bad,
                "--spire-enabled",
                "true",
            ];
            let e = parse(&args).unwrap().into_config().unwrap_err();
            let text = format!("{e:#}");
            assert!(
                text.contains("--xds-address") && text.contains("unix:///"),
                "{bad}: {text}"
            );
        }
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(parse(&["--node-name", "n", "--secret-ttl", "soon"]).is_err());
        assert!(parse(&["--node-name", "n", "--packet-mark", "-1"]).is_err());
        assert!(parse(&["--node-name", "n", "--metrics-address", "nowhere"]).is_err());
        let zero_mark = parse(&["--node-name", "n", "--packet-mark", "0"]).unwrap();
        assert!(zero_mark.into_config().is_err());
        let bad_scheme = parse(&["--node-name", "n", "--xds-address", "ftp://x:1"]).unwrap();
        assert!(bad_scheme.into_config().is_err());
        let blank = parse(&["--node-name", " "]).unwrap();
        assert!(blank.into_config().is_err());
    }

    #[test]
    fn original_source_accepts_the_upstream_values() {
        for (value, want) in [
            ("auto", true),
            ("true", true),
            ("FALSE", false),
            ("0", false),
        ] {
            let cli = parse(&["--node-name", "n", "--original-source", value]).unwrap();
            assert_eq!(cli.original_source, want, "{value}");
        }
        assert!(parse(&["--node-name", "n", "--original-source", "maybe"]).is_err());
        assert!(parse(&["--node-name", "n"]).unwrap().original_source);
        let cli = parse(&[
            "--node-name",
            "n",
            "--drain-timeout",
            "30s",
            "--log-format",
            "plain",
        ])
        .unwrap();
        assert_eq!(cli.drain_timeout, Duration::from_secs(30));
    }

    #[test]
    fn limits_take_humantime_durations_and_refuse_zero() {
        let cfg = parse(&[
            "--node-name",
            "n",
            "--hbone-accept-timeout",
            "1500ms",
            "--hbone-max-connections-per-pod",
            "8",
            "--http-header-read-timeout",
            "2s",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(cfg.hbone_accept_timeout, Duration::from_millis(1500));
        assert_eq!(cfg.hbone_limit.max_per_key, 8);
        assert_eq!(cfg.http.header_read_timeout, Duration::from_secs(2));
        for bad in [
            ["--hbone-max-connections", "0"],
            ["--http-max-connections", "0"],
            ["--hbone-accept-timeout", "0s"],
        ] {
            let args = ["--node-name", "n", bad[0], bad[1]];
            assert!(parse(&args).unwrap().into_config().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172800)));
        assert_eq!(parse_duration("86400"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(" 2m "), Ok(Duration::from_secs(120)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("5m3").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            normalize_address("127.0.0.1:15012").unwrap(),
            "https://127.0.0.1:15012"
        );
        assert_eq!(
            normalize_address("https://[::1]:15012").unwrap(),
            "https://[::1]:15012"
        );
        assert!(normalize_address("https://").is_err());
    }
}
