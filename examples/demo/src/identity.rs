//! Pod identities seen from outside the proxies: the certificate a pod's HBONE port
//! presents to a new connection, processes that run in a pod as a user of their own (what
//! SPIRE attests in PID mode), and the time stamps of the proxies' log lines.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use meshwire_svid::verify::dangerous::AcceptAnySpiffeServer;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::{Cluster, Role};

/// The HBONE port of every pod.
const HBONE_PORT: u16 = 15008;

/// The leaf certificate a pod's HBONE port presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedCert {
    /// The serial number, in hex.
    pub serial: String,
    /// The SPIFFE ID of its URI SAN.
    pub spiffe_id: String,
    /// Start of its validity (whole seconds).
    pub not_before: SystemTime,
    /// End of its validity (whole seconds).
    pub not_after: SystemTime,
}

impl Cluster {
    /// Opens a new TLS connection to `role`'s HBONE port (15008) from its node and returns
    /// the certificate the pod's proxy presents. The handshake itself then fails, because
    /// this client has no certificate of the mesh; only the server's certificate is wanted.
    pub fn presented_certificate(&self, role: Role) -> Result<PresentedCert> {
        let target = SocketAddr::new(IpAddr::V4(self.pod(role).ipv4()), HBONE_PORT);
        let mut tcp = self
            .node_ns(role.node())
            .run(move || TcpStream::connect_timeout(&target, Duration::from_secs(5)))?
            .with_context(|| format!("connect to {target}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
        // The chain is not checked: only the certificate is wanted.
        let provider = meshwire_svid::provider::ring();
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(AcceptAnySpiffeServer::new(provider))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), ServerName::from(target.ip()))?;
        // In TLS 1.3 the client's side of the handshake is over before the proxy refuses
        // a client without a certificate of the mesh.
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)
                .with_context(|| format!("TLS handshake with {target}"))?;
        }
        let chain = conn
            .peer_certificates()
            .ok_or_else(|| anyhow!("{} presented no certificate on {target}", role.label()))?;
        parse_leaf(chain)
    }

    /// Starts a long-running process (`sleep`) in `role`'s pod network namespace as user and
    /// group `uid`, the way an application container runs: SPIRE's `unix` attestor gives it
    /// the selector `unix:uid:<uid>`. It is killed when the returned process is dropped.
    pub fn spawn_in_pod(&self, role: Role, uid: u32) -> Result<testbed::Process> {
        let mut cmd = Command::new("sleep");
        cmd.arg("600")
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Ok(self.pod(role).ns().spawn(&mut cmd)?)
    }

    /// The log of node `i`'s proxy so far.
    pub fn proxy_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_file(i, "proxy")).unwrap_or_default()
    }
}

/// The time stamp of a log line of the agents and proxies (`2026-01-02T03:04:05.678901Z …`).
pub fn log_time(line: &str) -> Option<SystemTime> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.splitn(3, ':');
    let hours: u64 = t.next()?.parse().ok()?;
    let minutes: u64 = t.next()?.parse().ok()?;
    let seconds: f64 = t.next()?.parse().ok()?;
    let days = u64::try_from(days_since_epoch(year, month, day)).ok()?;
    let whole = days * 86_400 + hours * 3600 + minutes * 60;
    Some(UNIX_EPOCH + Duration::from_secs(whole) + Duration::try_from_secs_f64(seconds).ok()?)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`).
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn parse_leaf(chain: &[CertificateDer<'_>]) -> Result<PresentedCert> {
    let leaf = chain.first().context("an empty certificate chain")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| anyhow!("the presented certificate does not parse: {e}"))?;
    let time = |t: x509_parser::time::ASN1Time| -> Result<SystemTime> {
        let secs = u64::try_from(t.timestamp()).context("validity before 1970")?;
        Ok(UNIX_EPOCH + Duration::from_secs(secs))
    };
    if cert.tbs_certificate.raw_serial().is_empty() {
        bail!("the presented certificate has no serial number");
    }
    Ok(PresentedCert {
        serial: cert.tbs_certificate.raw_serial_as_string(),
        spiffe_id: meshwire_svid::tls::peer_spiffe_id(chain)?.to_string(),
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_time_reads_the_proxies_time_stamps() {
        let t = log_time("2026-12-07T00:18:28.250000Z  INFO proxy: started").unwrap();
        // date -d 2026-12-07T00:18:28Z +%s
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_millis(1_796_602_708_250)
        );
        assert_eq!(
            log_time("1970-01-01T00:00:00Z x"),
            Some(UNIX_EPOCH),
            "the epoch"
        );
        assert_eq!(
            log_time("2000-03-01T00:00:00Z x").map(|t| t.duration_since(UNIX_EPOCH).unwrap()),
            Some(Duration::from_secs(951_868_800)),
            "after a leap day"
        );
        assert_eq!(log_time("not a log line"), None);
    }
}
