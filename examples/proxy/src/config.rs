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

    /// How long an outbound HBONE connection (pooled per source pod and destination) stays
    /// open without tunnels before it is closed; `0s` closes it as soon as its last tunnel
    /// ends, so that every new connection that does not overlap another one makes its own
    /// TLS handshake.
    #[arg(long, env = "POOL_UNUSED_RELEASE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub(crate) pool_unused_release_timeout: Duration,

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
    pub(crate) pool_unused_release_timeout: Duration,
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
            pool_unused_release_timeout: self.pool_unused_release_timeout,
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
mod tests;
