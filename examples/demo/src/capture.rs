//! Packet captures between the nodes: `tcpdump` in the fabric namespace, written to a pcap
//! file in the cluster's state directory, and read back with `tcpdump -r`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testbed::Process;

use crate::Cluster;

/// A running capture of every TCP packet between the nodes (full packets).
#[derive(Debug)]
pub struct Capture {
    tcpdump: Option<Process>,
    path: PathBuf,
}

impl Cluster {
    /// Starts capturing TCP in the fabric namespace into `<state dir>/<name>.pcap`; returns
    /// once `tcpdump` is capturing.
    pub fn capture_fabric(&self, name: &str) -> Result<Capture> {
        let path = self.dir().join(format!("{name}.pcap"));
        let tcpdump = self
            .fabric()
            .spawn(
                Command::new("tcpdump")
                    .args(["-i", "any", "-U", "-s", "0", "-w"])
                    .arg(&path)
                    .arg("tcp")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .context("tcpdump in the fabric namespace")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) < 24 {
            if Instant::now() > deadline {
                bail!("tcpdump did not start writing {}", path.display());
            }
            thread::sleep(Duration::from_millis(50));
        }
        // tcpdump writes the file header just before it starts capturing.
        thread::sleep(Duration::from_millis(300));
        Ok(Capture {
            tcpdump: Some(tcpdump),
            path,
        })
    }
}

impl Capture {
    /// Stops the capture (after half a second for packets in flight) and returns the pcap
    /// file's bytes.
    pub fn stop(&mut self) -> Result<Vec<u8>> {
        thread::sleep(Duration::from_millis(500));
        crate::stop(self.tcpdump.take())?;
        Ok(std::fs::read(&self.path)?)
    }

    /// The pcap file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `tcpdump -nn -r` of the file with `args`: flags (starting with `-`) and a filter.
    pub fn read(&self, args: &[&str]) -> Result<String> {
        let (flags, filter): (Vec<&str>, Vec<&str>) = args.iter().partition(|a| a.starts_with('-'));
        let out = Command::new("tcpdump")
            .args(["-nn", "-r"])
            .arg(&self.path)
            .args(flags)
            .args(filter)
            .stderr(Stdio::null())
            .output()
            .context("tcpdump -r")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Whether `needle` occurs in `hay` (for a payload marker in a capture).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
