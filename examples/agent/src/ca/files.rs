//! Loading or creating the CA material, and writing the root file proxies trust.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshwire_svid::TrustDomain;
use meshwire_svid::ca::{CaConfig, CertificateAuthority};
use meshwire_svid::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::info;

use crate::safe_file;

/// The CA root's file in the state directory, for proxies that verify the TLS endpoint.
pub(crate) const ROOT_CERT_FILE: &str = "root-cert.pem";

/// Longest workload certificate the CA signs (the proxy asks for 24 h by default).
pub(crate) const MAX_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lifetime of the gRPC serving certificate.
const SERVING_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Names the serving certificate is valid for.
pub(crate) const SERVING_DNS: &[&str] = &["localhost", "istiod.istio-system.svc"];
/// Addresses the serving certificate is valid for.
pub(crate) const SERVING_IPS: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];
/// How long to wait for another agent that is writing the same CA files.
const RACE_WAIT: Duration = Duration::from_secs(5);

/// The CA and the serving identity of the gRPC endpoint.
#[derive(Debug)]
pub(crate) struct CaMaterial {
    /// Signs workload certificates (TTL capped at [`MAX_WORKLOAD_TTL`]).
    pub(crate) ca: CertificateAuthority,
    /// Serving certificate chain (leaf first) for the gRPC endpoint.
    pub(crate) serving_chain: Vec<CertificateDer<'static>>,
    /// Its key.
    pub(crate) serving_key: PrivateKeyDer<'static>,
    /// Where the root was written.
    pub(crate) root_file: PathBuf,
}

/// Loads the CA from `cert`/`key` (or `<state-dir>/ca-cert.pem` and `ca-key.pem` when unset),
/// creating and writing it when the files do not exist; writes `<state-dir>/root-cert.pem`.
pub(crate) fn load_or_create(
    cert: Option<&Path>,
    key: Option<&Path>,
    state_dir: &Path,
    trust_domain: &TrustDomain,
) -> anyhow::Result<CaMaterial> {
    load_or_create_waiting(cert, key, state_dir, trust_domain, RACE_WAIT)
}

fn load_or_create_waiting(
    cert: Option<&Path>,
    key: Option<&Path>,
    state_dir: &Path,
    trust_domain: &TrustDomain,
    race_wait: Duration,
) -> anyhow::Result<CaMaterial> {
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_owned(), k.to_owned()),
        (None, None) => (state_dir.join("ca-cert.pem"), state_dir.join("ca-key.pem")),
        _ => bail!("--ca-cert and --ca-key must be given together"),
    };
    let mut config = CaConfig::default();
    config.trust_domain = trust_domain.clone();
    config.max_ttl = MAX_WORKLOAD_TTL;
    let (cert_pem, key_pem) = read_or_generate(&cert, &key, trust_domain, &config, race_wait)?;
    let ca =
        CertificateAuthority::from_pem(&cert_pem, &key_pem, config.clone()).with_context(|| {
            format!(
                "loading the CA from {} and {}",
                cert.display(),
                key.display()
            )
        })?;
    if ca.trust_domain() != trust_domain {
        bail!(
            "the CA in {} is for trust domain {:?} but the agent serves {:?} (--trust-domain)",
            cert.display(),
            ca.trust_domain().as_str(),
            trust_domain.as_str()
        );
    }
    let mut serving_config = config;
    serving_config.max_ttl = SERVING_TTL;
    let serving_ca = CertificateAuthority::from_pem(&cert_pem, &key_pem, serving_config)?;
    let (serving_chain, serving_key) = serving_ca
        .issue_server_cert(SERVING_DNS, SERVING_IPS, SERVING_TTL)
        .context("issuing the gRPC serving certificate")?;

    let root_file = state_dir.join(ROOT_CERT_FILE);
    safe_file::replace(&root_file, ca.root_pem().as_bytes(), 0o644)
        .with_context(|| format!("writing {}", root_file.display()))?;
    info!(root = %root_file.display(), trust_domain = %trust_domain, "CA ready; root certificate written");
    Ok(CaMaterial {
        ca,
        serving_chain,
        serving_key,
        root_file,
    })
}

fn read_or_generate(
    cert: &Path,
    key: &Path,
    trust_domain: &TrustDomain,
    config: &CaConfig,
    race_wait: Duration,
) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    if !cert.exists() && !key.exists() {
        let ca = CertificateAuthority::generate_root(trust_domain, config.clone())?;
        // Publish the key first, then the certificate, each by an exclusive hard link: of two
        // agents starting together exactly one wins and the other loads what it wrote.
        let won_key = publish_exclusive(key, ca.private_key_pem().as_bytes(), 0o600)?;
        if won_key {
            publish_exclusive(cert, ca.cert_chain_pem().as_bytes(), 0o644)?;
            info!(cert = %cert.display(), key = %key.display(), "generated a new CA root");
        }
    }
    let deadline = Instant::now() + race_wait;
    loop {
        match (std::fs::read(cert), std::fs::read(key)) {
            (Ok(c), Ok(k)) if !c.is_empty() && !k.is_empty() => {
                info!(cert = %cert.display(), "loaded the CA");
                return Ok((c, k));
            }
            (c, _) => {
                if Instant::now() >= deadline {
                    let missing = if c.is_err() { cert } else { key };
                    bail!(
                        "CA file {} is missing or empty while its pair exists; give both files or neither",
                        missing.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Writes `data` to `path` only if `path` does not exist yet; `Ok(false)` if it did.
fn publish_exclusive(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<bool> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = safe_file::write_temp(path, data, mode)
        .with_context(|| format!("writing a temporary file next to {}", path.display()))?;
    let r = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn td() -> TrustDomain {
        TrustDomain::new("cluster.local").unwrap()
    }

    #[test]
    fn generates_then_loads_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let state1 = dir.path().join("node-1");
        let state2 = dir.path().join("node-2");
        std::fs::create_dir_all(&state1).unwrap();
        std::fs::create_dir_all(&state2).unwrap();
        let cert = dir.path().join("ca/ca.pem");
        let key = dir.path().join("ca/ca-key.pem");

        let a = load_or_create(Some(&cert), Some(&key), &state1, &td()).unwrap();
        assert!(cert.exists() && key.exists());
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = load_or_create(Some(&cert), Some(&key), &state2, &td()).unwrap();
        assert_eq!(
            a.ca.root_pem(),
            b.ca.root_pem(),
            "second agent loads the first one's CA"
        );
        let root1 = std::fs::read_to_string(state1.join("root-cert.pem")).unwrap();
        let root2 = std::fs::read_to_string(state2.join("root-cert.pem")).unwrap();
        assert_eq!(root1, root2);
        assert_eq!(root1, a.ca.root_pem());
        assert!(!a.serving_chain.is_empty());
    }

    #[test]
    fn unset_paths_persist_in_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(None, None, dir.path(), &td()).unwrap();
        assert!(dir.path().join("ca-key.pem").exists());
        let b = load_or_create(None, None, dir.path(), &td()).unwrap();
        assert_eq!(
            a.ca.root_pem(),
            b.ca.root_pem(),
            "a restarted agent keeps its CA"
        );
    }

    #[test]
    fn trust_domain_mismatch_and_half_pairs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(None, None, dir.path(), &td()).unwrap();
        let other = TrustDomain::new("example.org").unwrap();
        let e = load_or_create(None, None, dir.path(), &other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trust domain"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "x").unwrap();
        let e = format!(
            "{:#}",
            load_or_create_waiting(
                Some(&cert),
                Some(&dir.path().join("k.pem")),
                dir.path(),
                &td(),
                Duration::from_millis(100),
            )
            .unwrap_err()
        );
        assert!(e.contains("k.pem"), "{e}");
    }

    #[test]
    fn concurrent_agents_agree_on_one_ca() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("ca.pem");
        let key = dir.path().join("ca-key.pem");
        let roots: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    let state = dir.path().join(format!("s{i}"));
                    std::fs::create_dir_all(&state).unwrap();
                    let (cert, key) = (cert.clone(), key.clone());
                    s.spawn(move || {
                        load_or_create(Some(&cert), Some(&key), &state, &td())
                            .unwrap()
                            .ca
                            .root_pem()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(roots.windows(2).all(|w| w[0] == w[1]));
    }
}
