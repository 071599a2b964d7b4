//! A real SPIRE server and agent for tests: `spire-server` and `spire-agent` v1.13.3 built
//! from the Go module proxy (see [`crate::peers`]), started in a temporary directory and
//! stopped on drop.
//!
//! * The server keeps its entries in sqlite and its CA key on disk (so it survives a
//!   restart), attests nodes by join token, and listens on a loopback port for the agent
//!   and on a unix socket ([`Spire::server_socket`]) for the Entry API and the CLI.
//! * The agent keeps its key on disk (a restart needs no new token), attests workloads with
//!   the `unix` attestor, and serves the Delegated Identity API on its admin socket
//!   ([`Spire::admin_socket`]) to [`Spire::delegate_id`] (`spiffe://<td>/ztunnel`). The
//!   entry for that ID (parent [`Spire::node_id`], selector `unix:uid:<delegate uid>`) is
//!   created at start, so processes of that uid (by default: the test's) are authorized
//!   delegates.
//! * Entries for workloads are parented to the delegate's ID (as the Cilium operator does);
//!   the server hands them to the agent because the delegate's entry is parented to it.
//!
//! [`Spire::start`] returns once both are healthy and the delegate's SVID reached the agent.
//! Missing binaries are an error that names the build command.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::peers::{PeerGroup, peer_binary};
use crate::procs::{append_log, free_port, io_err, rand_u64, tail, terminate};

/// The default trust domain of the test SPIRE deployment.
pub const DEFAULT_TRUST_DOMAIN: &str = "example.org";
/// The path of the SPIFFE ID the agent's join token gives it an alias for (the node).
pub const NODE_PATH: &str = "/node1";
/// The path of the authorized delegate's SPIFFE ID (the node proxy), as in Cilium.
pub const DELEGATE_PATH: &str = "/ztunnel";

/// How long the server and agent may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a process may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Settings of a [`Spire`] deployment.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SpireConfig {
    /// The server's `default_x509_svid_ttl` (an entry may set its own). Default: 1 hour.
    pub default_x509_svid_ttl: Duration,
    /// The server's `ca_ttl`. Default: 24 hours.
    pub ca_ttl: Duration,
    /// The uid the delegate's entry selects (`unix:uid:<uid>`). Default: this process's
    /// effective uid.
    pub delegate_uid: u32,
    /// The trust domain. Default: [`DEFAULT_TRUST_DOMAIN`].
    pub trust_domain: String,
}

impl Default for SpireConfig {
    fn default() -> Self {
        Self {
            default_x509_svid_ttl: Duration::from_secs(3600),
            ca_ttl: Duration::from_secs(24 * 3600),
            delegate_uid: nix::unistd::geteuid().as_raw(),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
        }
    }
}

/// A registration entry as the server reports it ([`Spire::entries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The server's entry id.
    pub id: String,
    /// The SPIFFE ID it issues (`spiffe://…`).
    pub spiffe_id: String,
    /// Its parent ID (`spiffe://…`).
    pub parent_id: String,
    /// Its selectors as `type:value`, sorted.
    pub selectors: Vec<String>,
    /// The X.509-SVID lifetime in seconds (0: the server's default).
    pub x509_svid_ttl: i64,
}

/// A running SPIRE server and agent, stopped and removed on drop.
#[derive(Debug)]
pub struct Spire {
    dir: PathBuf,
    server: Option<Child>,
    agent: Option<Child>,
    startup: Duration,
    trust_domain: String,
}

impl Spire {
    /// Builds the peers if needed, writes the configurations, starts the server, creates a
    /// join token and the delegate's entry, starts the agent, and waits until the agent
    /// serves the delegate's SVID.
    pub fn start(config: SpireConfig) -> Result<Self, Error> {
        let started = Instant::now();
        peer_binary(PeerGroup::Spire, "spire-server")?;
        peer_binary(PeerGroup::Spire, "spire-agent")?;
        let dir = std::env::temp_dir().join(format!("meshwire-spire-{:08x}", rand_u64() as u32));
        for sub in [
            "server/private",
            "agent/public",
            "agent/admin",
            "agent/keys",
        ] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        let mut spire = Self {
            dir,
            server: None,
            agent: None,
            startup: Duration::ZERO,
            trust_domain: config.trust_domain.clone(),
        };
        spire.write_server_config(&config, free_port()?)?;
        spire.start_server()?;
        let bundle = spire.server_cli(&["bundle", "show"])?;
        std::fs::write(spire.dir.join("bundle.pem"), bundle).map_err(io_err("writing bundle"))?;
        let (node_id, delegate_id) = (spire.node_id(), spire.delegate_id());
        let token =
            spire.server_cli(&["token", "generate", "-spiffeID", &node_id, "-ttl", "600"])?;
        let token = token
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| Error::Io {
                context: format!("parsing the join token from {token:?}"),
                source: std::io::Error::from(std::io::ErrorKind::InvalidData),
            })?
            .to_owned();
        spire.server_cli(&[
            "entry",
            "create",
            "-parentID",
            &node_id,
            "-spiffeID",
            &delegate_id,
            "-selector",
            &format!("unix:uid:{}", config.delegate_uid),
        ])?;
        spire.write_agent_config()?;
        spire.spawn_agent(Some(&token))?;
        spire.wait_agent_ready()?;
        spire.startup = started.elapsed();
        Ok(spire)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The node's SPIFFE ID (the agent's alias), `spiffe://<td>/node1`.
    pub fn node_id(&self) -> String {
        format!("spiffe://{}{NODE_PATH}", self.trust_domain)
    }

    /// The authorized delegate's SPIFFE ID, `spiffe://<td>/ztunnel`.
    pub fn delegate_id(&self) -> String {
        format!("spiffe://{}{DELEGATE_PATH}", self.trust_domain)
    }

    /// How long [`Spire::start`] took (configuration, both processes, first delegate SVID).
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The unix socket of the server's API (Entry API, CLI).
    pub fn server_socket(&self) -> PathBuf {
        self.dir.join("server/private/api.sock")
    }

    /// The unix socket of the agent's admin API (Delegated Identity API).
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("agent/admin/admin.sock")
    }

    /// The admin socket as a `unix://` endpoint URI.
    pub fn admin_endpoint(&self) -> String {
        format!("unix://{}", self.admin_socket().display())
    }

    /// The unix socket of the agent's Workload API.
    pub fn workload_socket(&self) -> PathBuf {
        self.dir.join("agent/public/api.sock")
    }

    /// The directory with the configurations, data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last `lines` lines of the server's (`"server"`) or agent's (`"agent"`) log.
    pub fn log_tail(&self, which: &str, lines: usize) -> String {
        tail(&self.dir, &format!("{which}.log"), lines)
    }

    /// Runs `spire-server <args> -socketPath <server socket>` and returns its standard
    /// output.
    pub fn server_cli(&self, args: &[&str]) -> Result<String, Error> {
        let bin = peer_binary(PeerGroup::Spire, "spire-server")?;
        let socket = self.server_socket();
        let out = crate::namespace::run_checked(
            Command::new(bin).args(args).arg("-socketPath").arg(&socket),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The server's registration entries, as the JSON of `spire-server entry show -output
    /// json`.
    pub fn entries_json(&self) -> Result<serde_json::Value, Error> {
        let text = self.server_cli(&["entry", "show", "-output", "json"])?;
        serde_json::from_str(&text).map_err(|e| Error::Io {
            context: "parsing `spire-server entry show` output".to_owned(),
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// The server's registration entries, read with the CLI.
    pub fn entries(&self) -> Result<Vec<Entry>, Error> {
        let json = self.entries_json()?;
        let id = |v: &serde_json::Value| {
            format!(
                "spiffe://{}{}",
                v["trust_domain"].as_str().unwrap_or_default(),
                v["path"].as_str().unwrap_or_default()
            )
        };
        let entries = json["entries"].as_array().cloned().unwrap_or_default();
        Ok(entries
            .iter()
            .map(|e| {
                let mut selectors: Vec<String> = e["selectors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        format!(
                            "{}:{}",
                            s["type"].as_str().unwrap_or_default(),
                            s["value"].as_str().unwrap_or_default()
                        )
                    })
                    .collect();
                selectors.sort();
                Entry {
                    id: e["id"].as_str().unwrap_or_default().to_owned(),
                    spiffe_id: id(&e["spiffe_id"]),
                    parent_id: id(&e["parent_id"]),
                    selectors,
                    x509_svid_ttl: e["x509_svid_ttl"].as_i64().unwrap_or_default(),
                }
            })
            .collect())
    }

    /// The entries whose parent ID has the path `parent_path` (e.g. [`DELEGATE_PATH`]): their
    /// SPIFFE IDs (`spiffe://…`) and X.509-SVID lifetimes in seconds (0: the server's
    /// default), read with the CLI.
    pub fn entries_under(&self, parent_path: &str) -> Result<Vec<(String, i64)>, Error> {
        let parent = format!("spiffe://{}{parent_path}", self.trust_domain);
        Ok(self
            .entries()?
            .into_iter()
            .filter(|e| e.parent_id == parent)
            .map(|e| (e.spiffe_id, e.x509_svid_ttl))
            .collect())
    }

    /// Stops the agent (SIGTERM), as in an agent restart or crash; its key and SVID stay on
    /// disk.
    pub fn stop_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            terminate(&mut child, STOP_GRACE);
        }
    }

    /// Starts the agent again (after [`Self::stop_agent`]) with the key and SVID it kept on
    /// disk, and waits until it serves the delegate's SVID.
    pub fn restart_agent(&mut self) -> Result<(), Error> {
        self.stop_agent();
        self.spawn_agent(None)?;
        self.wait_agent_ready()
    }

    /// Stops the server (SIGTERM), as in an outage; sqlite and the CA key stay on disk.
    pub fn stop_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            terminate(&mut child, STOP_GRACE);
        }
    }

    /// Starts the server (again) and waits until it is healthy.
    pub fn start_server(&mut self) -> Result<(), Error> {
        self.stop_server();
        let bin = peer_binary(PeerGroup::Spire, "spire-server")?;
        let log = append_log(&self.dir, "server.log")?;
        self.server = Some(
            Command::new(&bin)
                .arg("run")
                .arg("-config")
                .arg(self.dir.join("server.conf"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(io_err("server log"))?)
                .stderr(log)
                .spawn()
                .map_err(io_err(format!("starting {}", bin.display())))?,
        );
        let socket = self.server_socket();
        self.wait("server", |s| {
            s.server_cli(&["healthcheck"]).is_ok() && socket.exists()
        })
    }

    fn spawn_agent(&mut self, token: Option<&str>) -> Result<(), Error> {
        let bin = peer_binary(PeerGroup::Spire, "spire-agent")?;
        let log = append_log(&self.dir, "agent.log")?;
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .arg("-config")
            .arg(self.dir.join("agent.conf"));
        if let Some(token) = token {
            cmd.arg("-joinToken").arg(token);
        }
        self.agent = Some(
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().map_err(io_err("agent log"))?)
                .stderr(log)
                .spawn()
                .map_err(io_err(format!("starting {}", bin.display())))?,
        );
        Ok(())
    }

    /// Waits until the agent is healthy and serves this process its (the delegate's) SVID
    /// on the Workload API, which means the delegate's entry has reached the agent.
    fn wait_agent_ready(&mut self) -> Result<(), Error> {
        let bin = peer_binary(PeerGroup::Spire, "spire-agent")?;
        let socket = self.workload_socket();
        let admin = self.admin_socket();
        self.wait("agent", |_| {
            admin.exists()
                && crate::namespace::run_checked(
                    Command::new(&bin)
                        .args(["api", "fetch", "x509", "-timeout", "2s", "-socketPath"])
                        .arg(&socket),
                )
                .is_ok()
        })
    }

    /// Polls `ready` until it holds; fails when `which` exited or the time is up.
    fn wait(&mut self, which: &str, mut ready: impl FnMut(&Self) -> bool) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let child = match which {
                "server" => self.server.as_mut(),
                _ => self.agent.as_mut(),
            };
            if let Some(child) = child
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(Error::Command {
                    command: format!("spire-{which} run"),
                    status: status.code(),
                    stderr: self.log_tail(which, 20),
                });
            }
            if ready(self) {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(Error::Io {
                    context: format!(
                        "spire-{which} not ready after {READY_TIMEOUT:?}; log tail:\n{}",
                        self.log_tail(which, 20)
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn write_server_config(&self, config: &SpireConfig, port: u16) -> Result<(), Error> {
        let d = self.dir.display();
        let text = format!(
            r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  trust_domain = "{td}"
  data_dir = "{d}/server"
  socket_path = "{d}/server/private/api.sock"
  log_level = "DEBUG"
  ca_ttl = "{ca_ttl}s"
  default_x509_svid_ttl = "{svid_ttl}s"
  experimental {{ cache_reload_interval = "1s" }}
}}
plugins {{
  DataStore "sql" {{ plugin_data {{
    database_type = "sqlite3"
    connection_string = "{d}/server/datastore.sqlite3"
  }} }}
  KeyManager "disk" {{ plugin_data {{ keys_path = "{d}/server/keys.json" }} }}
  NodeAttestor "join_token" {{ plugin_data {{}} }}
}}
"#,
            td = self.trust_domain,
            ca_ttl = config.ca_ttl.as_secs(),
            svid_ttl = config.default_x509_svid_ttl.as_secs(),
        );
        std::fs::write(self.dir.join("server.conf"), text).map_err(io_err("writing server.conf"))
    }

    fn write_agent_config(&self) -> Result<(), Error> {
        let d = self.dir.display();
        let port = std::fs::read_to_string(self.dir.join("server.conf"))
            .map_err(io_err("reading server.conf"))?
            .lines()
            .find_map(|l| l.trim().strip_prefix("bind_port = "))
            .map(|p| p.trim_matches('"').to_owned())
            .unwrap_or_default();
        let text = format!(
            r#"agent {{
  trust_domain = "{td}"
  server_address = "127.0.0.1"
  server_port = "{port}"
  data_dir = "{d}/agent"
  socket_path = "{d}/agent/public/api.sock"
  admin_socket_path = "{d}/agent/admin/admin.sock"
  trust_bundle_path = "{d}/bundle.pem"
  authorized_delegates = ["{delegate}"]
  log_level = "DEBUG"
  experimental {{ sync_interval = "1s" }}
}}
plugins {{
  NodeAttestor "join_token" {{ plugin_data {{}} }}
  KeyManager "disk" {{ plugin_data {{ directory = "{d}/agent/keys" }} }}
  WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
"#,
            td = self.trust_domain,
            delegate = self.delegate_id(),
        );
        std::fs::write(self.dir.join("agent.conf"), text).map_err(io_err("writing agent.conf"))
    }
}

impl Drop for Spire {
    fn drop(&mut self) {
        self.stop_agent();
        self.stop_server();
        if std::env::var_os("MESHWIRE_KEEP_TEST_CLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
