//! Tests of the command line and environment to the proxy's configuration.

use super::*;
use clap::CommandFactory;

/// Parses like the binary does, but without reading the process environment so the tests
/// do not depend on it.
fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    use clap::FromArgMatches;
    let cmd = Cli::command().mut_args(|a| a.env(None));
    let matches = cmd.try_get_matches_from(std::iter::once("proxy").chain(args.iter().copied()))?;
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
    assert_eq!(cfg.pool_unused_release_timeout, Duration::from_secs(300));
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
        ("pool_unused_release_timeout", "POOL_UNUSED_RELEASE_TIMEOUT"),
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
fn pool_unused_release_timeout_takes_zero() {
    for (value, want) in [
        ("0s", Duration::ZERO),
        ("0", Duration::ZERO),
        ("90s", Duration::from_secs(90)),
        ("1h", Duration::from_secs(3600)),
    ] {
        let cfg = parse(&["--node-name", "n", "--pool-unused-release-timeout", value])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(cfg.pool_unused_release_timeout, want, "{value}");
    }
    let err = parse(&["--node-name", "n", "--pool-unused-release-timeout", "never"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--pool-unused-release-timeout") && err.contains("never"),
        "{err}"
    );
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
