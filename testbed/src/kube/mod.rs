//! A real Kubernetes API server for tests: `etcd` and `kube-apiserver` built from the Go
//! module proxy (see [`crate::peers`]), started on loopback ports in a temporary
//! directory and stopped on drop.
//!
//! There are no controllers, scheduler or kubelet: tests play the kubelet's part (create
//! Pods with `spec.nodeName`, set their status). The server has:
//!
//! * a serving certificate for `127.0.0.1`/`localhost` from a CA written to `ca.crt`;
//! * an admin bearer token (group `system:masters`) from a static token file;
//! * service-account token signing (P-256), so `TokenRequest` and `TokenReview` work;
//! * RBAC authorization, so least-privilege roles can be tested for real;
//! * a kubeconfig file for `kubectl` and for the agent.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, ServerName};

use crate::error::Error;
use crate::peers::{PeerGroup, peer_binary};
use crate::procs::{append_log, free_port, io_err, log_file, rand_u64, tail};

pub mod objects;

pub use objects::ProxyAccount;

/// How long the API server may take to answer `/readyz` after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The service-account token issuer the API server is configured with.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The name prefix of this process's API server directories in the temporary directory
/// (for an emergency clean-up that cannot run the destructors).
pub fn dir_prefix() -> String {
    format!("meshwire-kube-{}-", std::process::id())
}

/// A running etcd + kube-apiserver pair, removed on drop.
#[derive(Debug)]
pub struct KubeApiServer {
    dir: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    port: u16,
    token: String,
    ca_pem: String,
    etcd_url: String,
}

fn cert_err(e: rcgen::Error) -> Error {
    Error::Io {
        context: "making the API server's certificates".to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Files of the API server's PKI, written into `dir`.
struct Pki {
    ca_pem: String,
}

fn write_pki(dir: &Path) -> Result<Pki, Error> {
    let ca_key = KeyPair::generate().map_err(cert_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "meshwire test cluster CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "kubernetes".to_owned()])
        .map_err(cert_err)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;

    let sa_key = KeyPair::generate().map_err(cert_err)?;

    let ca_pem = ca_cert.pem();
    for (name, text) in [
        ("ca.crt", ca_pem.as_str()),
        ("apiserver.crt", &cert.pem()),
        ("apiserver.key", &key.serialize_pem()),
        ("sa.key", &sa_key.serialize_pem()),
        ("sa.pub", &sa_key.public_key_pem()),
    ] {
        std::fs::write(dir.join(name), text).map_err(io_err(format!("writing {name}")))?;
    }
    Ok(Pki { ca_pem })
}

impl KubeApiServer {
    /// Builds the peers if needed, starts etcd and kube-apiserver, and waits until the
    /// API server is ready.
    pub fn start() -> Result<Self, Error> {
        let etcd_bin = peer_binary(PeerGroup::Kube, "etcd")?;
        let dir = std::env::temp_dir().join(format!("{}{}", dir_prefix(), free_port()?));
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut server = Self {
            dir: dir.clone(),
            etcd: None,
            apiserver: None,
            port: 0,
            token: format!("admin-{:016x}", rand_u64()),
            ca_pem: String::new(),
            etcd_url: String::new(),
        };
        let pki = write_pki(&dir)?;
        server.ca_pem = pki.ca_pem;
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{},admin,admin-uid,\"system:masters\"\n", server.token),
        )
        .map_err(io_err("writing the token file"))?;

        let (client_port, peer_port) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_log = log_file(&dir, "etcd.log")?;
        server.etcd = Some(
            Command::new(&etcd_bin)
                .arg(format!("--data-dir={}", dir.join("etcd").display()))
                .arg(format!("--listen-client-urls={etcd_url}"))
                .arg(format!("--advertise-client-urls={etcd_url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=default={peer_url}"))
                .arg("--unsafe-no-fsync")
                .arg("--log-level=warn")
                .stdin(Stdio::null())
                .stdout(etcd_log.try_clone().map_err(io_err("etcd log"))?)
                .stderr(etcd_log)
                .spawn()
                .map_err(io_err(format!("starting {}", etcd_bin.display())))?,
        );

        server.etcd_url = etcd_url;
        // The free port may be taken by another process before the API server binds it:
        // then try another one.
        let mut attempts = 0;
        loop {
            attempts += 1;
            server.port = free_port()?;
            server.spawn_apiserver()?;
            server.write_kubeconfig()?;
            match server.wait_ready() {
                Err(Error::Command { stderr, .. })
                    if attempts < 3 && stderr.contains("address already in use") =>
                {
                    server.apiserver = None;
                }
                other => break other.map(|()| server),
            }
        }
    }

    /// Starts the API server process (etcd must run).
    fn spawn_apiserver(&mut self) -> Result<(), Error> {
        let apiserver_bin = peer_binary(PeerGroup::Kube, "kube-apiserver")?;
        let dir = self.dir.clone();
        let p = |name: &str| dir.join(name).display().to_string();
        let apiserver_log = append_log(&dir, "kube-apiserver.log")?;
        self.apiserver = Some(
            Command::new(&apiserver_bin)
                .arg(format!("--etcd-servers={}", self.etcd_url))
                .arg(format!("--secure-port={}", self.port))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--cert-dir={}", p("certs")))
                .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
                .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
                .arg(format!("--client-ca-file={}", p("ca.crt")))
                .arg(format!("--token-auth-file={}", p("tokens.csv")))
                .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
                .arg(format!("--service-account-key-file={}", p("sa.pub")))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    p("sa.key")
                ))
                .arg("--service-cluster-ip-range=10.96.0.0/16")
                .arg("--allow-privileged=true")
                .arg("--authorization-mode=RBAC")
                .arg("--disable-admission-plugins=ServiceAccount")
                .arg("--enable-priority-and-fairness=false")
                .arg("--profiling=false")
                .arg("--v=1")
                .stdin(Stdio::null())
                .stdout(apiserver_log.try_clone().map_err(io_err("apiserver log"))?)
                .stderr(apiserver_log)
                .spawn()
                .map_err(io_err(format!("starting {}", apiserver_bin.display())))?,
        );
        Ok(())
    }

    /// Stops the API server process, as in an outage: clients lose their connections and
    /// nothing answers on its port; etcd keeps the objects.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the API server again on the same port (after [`Self::stop_apiserver`]) and
    /// waits until it is ready.
    pub fn start_apiserver(&mut self) -> Result<(), Error> {
        self.stop_apiserver();
        self.spawn_apiserver()?;
        self.wait_ready()
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The API server's loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin bearer token (`system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.token
    }

    /// The PEM of the CA that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The path of the CA certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A kubeconfig file that talks to this server as admin.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The directory with the server's files and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last `lines` lines of the API server's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir, "kube-apiserver.log", lines)
    }

    fn write_kubeconfig(&self) -> Result<(), Error> {
        let mut text = String::new();
        let _ = write!(
            text,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    \
             certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n\
             current-context: test\n",
            self.url(),
            self.ca_file().display(),
            self.token
        );
        std::fs::write(self.kubeconfig(), text).map_err(io_err("writing the kubeconfig"))
    }

    /// An admin client of this server (cheap to clone, usable from any thread while the
    /// server is restarted).
    pub fn admin(&self) -> AdminClient {
        AdminClient {
            port: self.port,
            token: self.token.clone(),
            ca_pem: self.ca_pem.clone(),
        }
    }

    /// Sends one HTTP/1.1 request as admin (see [`AdminClient::request`]).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), Error> {
        self.admin().request(method, path, body)
    }

    fn wait_ready(&mut self) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.apiserver.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(Error::Command {
                    command: "kube-apiserver".to_owned(),
                    status: status.code(),
                    stderr: self.log_tail(20),
                });
            }
            if let Ok((200, _)) = self.request("GET", "/readyz", None) {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(Error::Io {
                    context: format!(
                        "kube-apiserver not ready after {READY_TIMEOUT:?}; log tail:\n{}",
                        self.log_tail(20)
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A client of the test API server as admin (`system:masters`): one HTTP/1.1 request per
/// connection, enough for test set-up. The object helpers are in [`objects`].
#[derive(Debug, Clone)]
pub struct AdminClient {
    port: u16,
    token: String,
    ca_pem: String,
}

impl AdminClient {
    /// Sends one HTTP/1.1 request as admin (a JSON body, if any) and returns the status code
    /// and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), Error> {
        self.request_as(method, path, "application/json", body)
    }

    /// Like [`Self::request`] with the body's content type (`application/merge-patch+json`,
    /// `application/yaml`…).
    pub fn request_as(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), Error> {
        let mut roots = rustls::RootCertStore::empty();
        let der = pem_to_der(&self.ca_pem)?;
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| Error::Io {
                context: "trusting the test cluster CA".to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Io {
                context: "TLS client for the API server".to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").map_err(|e| Error::Io {
            context: "server name".to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let conn =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| Error::Io {
                context: "TLS to the API server".to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).map_err(io_err(format!(
            "connecting to the API server on {}",
            self.port
        )))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io_err("read timeout"))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
             Content-Type: {content_type}\r\nAccept: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.token,
            body.len()
        );
        tls.write_all(request.as_bytes())
            .map_err(io_err("sending a request to the API server"))?;
        let mut response = Vec::new();
        // The server closes the connection after the response (Connection: close); a
        // missing close_notify is not an error for this purpose.
        if let Err(e) = tls.read_to_end(&mut response)
            && e.kind() != std::io::ErrorKind::UnexpectedEof
        {
            return Err(Error::Io {
                context: "reading the API server's response".to_owned(),
                source: e,
            });
        }
        parse_response(&response)
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        for child in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("MESHWIRE_KEEP_TEST_CLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, Error> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| Error::Io {
            context: "decoding the CA PEM".to_owned(),
            source: std::io::Error::other(e.to_string()),
        })
}

/// Splits an HTTP/1.1 response into status and body (de-chunking a chunked body).
fn parse_response(raw: &[u8]) -> Result<(u16, String), Error> {
    let bad = || Error::Io {
        context: "parsing the API server's response".to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(bad)?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if !chunked {
        return Ok((status, String::from_utf8_lossy(body).into_owned()));
    }
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..eol]).map_err(|_| bad())?;
        let n = usize::from_str_radix(size.trim(), 16).map_err(|_| bad())?;
        let chunk = body.get(eol + 2..eol + 2 + n).ok_or_else(bad)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(chunk);
        body = body.get(eol + 4 + n..).unwrap_or_default();
    }
    Ok((status, String::from_utf8_lossy(&out).into_owned()))
}
