//! The in-pod redirection rule set as data.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::RulesError;

/// An IP address family; iptables keeps separate tables for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4 (`iptables`, `ip -4`).
    V4,
    /// IPv6 (`ip6tables`, `ip -6`).
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Self; 2] = [Self::V4, Self::V6];

    pub(crate) fn loopback(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.1/32",
            Self::V6 => "::1/128",
        }
    }

    pub(crate) fn ip_flag(self) -> &'static str {
        match self {
            Self::V4 => "-4",
            Self::V6 => "-6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// An iptables table used by the rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Table {
    /// `mangle`: connection marking.
    Mangle,
    /// `nat`: the `REDIRECT` rules.
    Nat,
    /// `raw`: conntrack zones for captured DNS.
    Raw,
}

impl Table {
    /// The iptables name of the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mangle => "mangle",
            Self::Nat => "nat",
            Self::Raw => "raw",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A mark value with the mask it is matched or set under (`0x539/0xfff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MarkMask {
    /// The mark bits.
    pub value: u32,
    /// The bits of the mark that are compared or changed.
    pub mask: u32,
}

impl MarkMask {
    /// A mark under a mask.
    pub const fn new(value: u32, mask: u32) -> Self {
        Self { value, mask }
    }
}

impl fmt::Display for MarkMask {
    /// The form `iptables-save` prints: `0x539/0xfff`, or `0x539` for a full mask.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mask == u32::MAX {
            write!(f, "{:#x}", self.value)
        } else {
            write!(f, "{:#x}/{:#x}", self.value, self.mask)
        }
    }
}

/// The proxy ports inside the pod.
///
/// Defaults: outbound 15001, inbound plaintext 15006, HBONE 15008, DNS 15053.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ports {
    /// Where outbound TCP is redirected to.
    pub outbound: u16,
    /// Where inbound plaintext TCP is redirected to.
    pub inbound: u16,
    /// The HBONE port, exempt from inbound redirection.
    pub hbone: u16,
    /// Where captured DNS is redirected to (only with [`RuleSet::dns_capture`]).
    pub dns: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            outbound: 15001,
            inbound: 15006,
            hbone: 15008,
            dns: 15053,
        }
    }
}

/// Source addresses of host health probes that bypass inbound capture.
///
/// Defaults: `169.254.7.127` and `fd16:9254:7127:1337:ffff:ffff:ffff:ffff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProbeExemption {
    /// The IPv4 probe source.
    pub v4: Ipv4Addr,
    /// The IPv6 probe source.
    pub v6: Ipv6Addr,
}

impl Default for ProbeExemption {
    fn default() -> Self {
        Self {
            v4: Ipv4Addr::new(169, 254, 7, 127),
            v6: Ipv6Addr::new(
                0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff,
            ),
        }
    }
}

/// The policy-routing pair that returns replies of spoofed connections to the
/// proxy: `ip rule add fwmark <connmark> pref <priority> lookup <table>` and
/// `ip route add local default dev lo table <table>`.
///
/// Defaults: table 100, priority 32764.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyRouting {
    /// The routing table holding the `local` default route.
    pub table: u32,
    /// The priority (`pref`) of the fwmark rule.
    pub priority: u32,
}

impl Default for PolicyRouting {
    fn default() -> Self {
        Self {
            table: 100,
            priority: 32764,
        }
    }
}

/// The complete in-pod redirection rule set, as data.
///
/// Build one from a preset ([`RuleSet::istio`], [`RuleSet::cilium`]) and adjust the
/// public fields. Then render it ([`RuleSet::render`]) or install, verify, repair
/// and remove it in a namespace ([`RuleSet::apply`], [`RuleSet::verify`],
/// [`RuleSet::repair`], [`RuleSet::remove`]).
///
/// What the rules do (per family; IPv6 mirrors IPv4 with `::1/128`):
///
/// * mangle `PREROUTING` → prerouting chain: packets carrying the proxy mark set
///   the connection mark;
/// * mangle `OUTPUT` → output chain: the connection mark is restored to the packet;
/// * nat `PREROUTING` → prerouting chain: per virtual interface, TCP redirected to
///   the outbound port; probe sources accepted; all other TCP not to loopback, not
///   to the HBONE port and without the proxy mark redirected to the inbound port;
/// * nat `OUTPUT` → output chain: probe replies accepted; optionally DNS
///   redirected; connection-marked TCP accepted; traffic to the pod's own
///   addresses over `lo` accepted; all other TCP not to loopback and without the
///   proxy mark redirected to the outbound port;
/// * raw (only with DNS capture): DNS to and from the proxy in conntrack zone 1.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuleSet {
    /// The chain hooked from `PREROUTING` (in every table used).
    pub prerouting_chain: String,
    /// The chain hooked from `OUTPUT` (in every table used).
    pub output_chain: String,
    /// The proxy ports.
    pub ports: Ports,
    /// The mark the proxy puts on its own sockets (`SO_MARK`), exempt from
    /// redirection. Default `0x539/0xfff`.
    pub proxy_mark: MarkMask,
    /// The connection mark of connections the proxy made. Default `0x111/0xfff`.
    pub connmark: MarkMask,
    /// The `--nfmask` / `--ctmask` used to restore the connection mark. Default
    /// `0xffffffff`.
    pub restore_mask: u32,
    /// Whether IPv6 rules and routes are installed too.
    pub ipv6: bool,
    /// Whether traffic leaving over `lo` to a non-loopback address (the pod calling
    /// its own IP) is exempt from outbound capture.
    pub loopback_exemption: bool,
    /// Host health-probe sources exempt from inbound capture, if any.
    pub probe_exemption: Option<ProbeExemption>,
    /// Whether DNS (UDP and TCP port 53) is redirected to the DNS port.
    pub dns_capture: bool,
    /// Interfaces whose incoming TCP is treated as outbound (for example KubeVirt
    /// VM interfaces).
    pub virtual_interfaces: Vec<String>,
    /// The fwmark rule and local route, if installed.
    pub routing: Option<PolicyRouting>,
}

impl RuleSet {
    /// The rule set Istio's node agent installs in ambient mode: chains
    /// `ISTIO_PRERT` / `ISTIO_OUTPUT`, kubelet probe exemption, IPv6 on, DNS capture
    /// off (turn on with [`RuleSet::dns_capture`]).
    pub fn istio() -> Self {
        Self {
            prerouting_chain: "ISTIO_PRERT".to_owned(),
            output_chain: "ISTIO_OUTPUT".to_owned(),
            ports: Ports::default(),
            proxy_mark: MarkMask::new(0x539, 0xfff),
            connmark: MarkMask::new(0x111, 0xfff),
            restore_mask: u32::MAX,
            ipv6: true,
            loopback_exemption: true,
            probe_exemption: Some(ProbeExemption::default()),
            dns_capture: false,
            virtual_interfaces: Vec::new(),
            routing: Some(PolicyRouting::default()),
        }
    }

    /// The rule set Cilium's agent installs for its ztunnel integration: chains
    /// `CILIUM_PREROUTING` / `CILIUM_OUTPUT`, no probe exemption, no DNS capture,
    /// IPv6 on.
    pub fn cilium() -> Self {
        Self {
            prerouting_chain: "CILIUM_PREROUTING".to_owned(),
            output_chain: "CILIUM_OUTPUT".to_owned(),
            probe_exemption: None,
            ..Self::istio()
        }
    }

    /// Checks that names, ports and marks can be rendered safely.
    pub fn validate(&self) -> Result<(), RulesError> {
        let invalid = |reason: String| Err(RulesError::InvalidRuleSet { reason });
        for chain in [&self.prerouting_chain, &self.output_chain] {
            if chain.is_empty()
                || chain.len() > 28
                || !chain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                || chain.starts_with('-')
            {
                return invalid(format!(
                    "chain name {chain:?} must be 1-28 characters of A-Z, a-z, 0-9, '_' or '-'"
                ));
            }
            if BUILTIN_CHAINS.contains(&chain.as_str()) {
                return invalid(format!("chain name {chain:?} is a built-in chain"));
            }
        }
        if self.prerouting_chain == self.output_chain {
            return invalid("the prerouting and output chains must differ".to_owned());
        }
        for iface in &self.virtual_interfaces {
            if iface.is_empty()
                || iface.len() > 15
                || iface.starts_with('-')
                || !iface.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+' | b'@')
                })
            {
                return invalid(format!("interface name {iface:?} is not valid"));
            }
        }
        let p = self.ports;
        let all = [p.outbound, p.inbound, p.hbone, p.dns];
        if all.contains(&0) {
            return invalid("ports must not be 0".to_owned());
        }
        if p.outbound == p.inbound || p.outbound == p.hbone || p.inbound == p.hbone {
            return invalid("outbound, inbound and HBONE ports must differ".to_owned());
        }
        for (what, m) in [("proxy mark", self.proxy_mark), ("connmark", self.connmark)] {
            if m.mask == 0 || m.value & !m.mask != 0 {
                return invalid(format!("{what} {m} has bits outside its mask"));
            }
        }
        if self.proxy_mark == self.connmark {
            return invalid("proxy mark and connmark must differ".to_owned());
        }
        Ok(())
    }

    /// The families this rule set installs rules for.
    pub fn families(&self) -> &'static [Family] {
        if self.ipv6 {
            &Family::ALL
        } else {
            &[Family::V4]
        }
    }
}

pub(crate) const BUILTIN_CHAINS: [&str; 5] =
    ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_differ_in_names_and_probes() {
        let i = RuleSet::istio();
        let c = RuleSet::cilium();
        i.validate().unwrap();
        c.validate().unwrap();
        assert_eq!(i.prerouting_chain, "ISTIO_PRERT");
        assert_eq!(c.output_chain, "CILIUM_OUTPUT");
        assert!(i.probe_exemption.is_some() && c.probe_exemption.is_none());
        assert_eq!(i.proxy_mark.to_string(), "0x539/0xfff");
        assert_eq!(MarkMask::new(0x539, u32::MAX).to_string(), "0x539");
        assert_eq!(i.families(), &[Family::V4, Family::V6]);
    }

    #[test]
    fn validation_rejects_injection_and_nonsense() {
        let mut r = RuleSet::istio();
        r.prerouting_chain = "X\n-A OUTPUT -j DROP".to_owned();
        assert!(r.validate().is_err());
        let mut r = RuleSet::istio();
        r.output_chain = "OUTPUT".to_owned();
        assert!(r.validate().is_err());
        let mut r = RuleSet::istio();
        r.virtual_interfaces = vec!["eth0 -j DROP".to_owned()];
        assert!(r.validate().is_err());
        let mut r = RuleSet::istio();
        r.ports.inbound = r.ports.outbound;
        assert!(r.validate().is_err());
        let mut r = RuleSet::istio();
        r.proxy_mark = MarkMask::new(0x1539, 0xfff);
        assert!(r.validate().is_err());
        let mut r = RuleSet::istio();
        r.output_chain = r.prerouting_chain.clone();
        assert!(r.validate().is_err());
    }
}
