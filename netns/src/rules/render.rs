//! Rendering the rule set to `iptables-restore` input.

use std::fmt::Write as _;

use super::RulesError;
use super::model::{Family, RuleSet, Table};
use super::save::{SaveDump, SavedTable, join_args};

/// What the rule set expects in one table.
#[derive(Debug)]
pub(crate) struct TableSpec {
    pub(crate) table: Table,
    /// Jumps from built-in chains into ours: (built-in, ours).
    pub(crate) jumps: Vec<(&'static str, String)>,
    /// Rules of our chains, in order: (chain, args).
    pub(crate) rules: Vec<(String, Vec<String>)>,
}

/// The tables the rule set may own chains in.
pub(crate) const MANAGED_TABLES: [Table; 3] = [Table::Mangle, Table::Nat, Table::Raw];

/// The arguments of one rule, written as `iptables-save` prints them: words separated by
/// single spaces, where each `{}` stands for the next of `values`, taken whole.
fn rule(line: &str, values: &[&str]) -> Vec<String> {
    let mut values = values.iter();
    line.split(' ')
        .map(|word| match word {
            "{}" => values.next().copied().unwrap_or(word),
            _ => word,
        })
        .map(str::to_owned)
        .collect()
}

impl RuleSet {
    /// Our two chains, prerouting first.
    pub(crate) fn chains(&self) -> [&str; 2] {
        [&self.prerouting_chain, &self.output_chain]
    }

    /// The expected contents of each table used for `family`, in the canonical form
    /// `iptables-save` prints.
    pub(crate) fn spec(&self, family: Family) -> Vec<TableSpec> {
        let pre = self.prerouting_chain.as_str();
        let out = self.output_chain.as_str();
        let mark = self.proxy_mark.to_string();
        let connmark = self.connmark.to_string();
        let restore = format!("{:#x}", self.restore_mask);
        let lo = family.loopback();
        let ports = self.ports;
        let jumps = || vec![("PREROUTING", pre.to_owned()), ("OUTPUT", out.to_owned())];

        let mut tables = Vec::new();

        // mangle: remember connections the proxy made, restore the mark on replies.
        tables.push(TableSpec {
            table: Table::Mangle,
            jumps: jumps(),
            rules: vec![
                (
                    pre.to_owned(),
                    rule(
                        "-m mark --mark {} -j CONNMARK --set-xmark {}",
                        &[&mark, &connmark],
                    ),
                ),
                (
                    out.to_owned(),
                    rule(
                        "-m connmark --mark {} -j CONNMARK --restore-mark --nfmask {} --ctmask {}",
                        &[&connmark, &restore, &restore],
                    ),
                ),
            ],
        });

        // nat: the redirections.
        let mut pre_rules = Vec::new();
        let mut out_rules = Vec::new();
        let outbound = ports.outbound.to_string();
        let inbound = ports.inbound.to_string();
        let hbone = ports.hbone.to_string();
        let dns = ports.dns.to_string();
        for iface in &self.virtual_interfaces {
            pre_rules.push(rule(
                "-i {} -p tcp -j REDIRECT --to-ports {}",
                &[iface, &outbound],
            ));
            pre_rules.push(rule("-i {} -p tcp -j RETURN", &[iface]));
        }
        if let Some(probe) = self.probe_exemption {
            let probe = match family {
                Family::V4 => format!("{}/32", probe.v4),
                Family::V6 => format!("{}/128", probe.v6),
            };
            pre_rules.push(rule("-s {} -p tcp -m tcp -j ACCEPT", &[&probe]));
            out_rules.push(rule("-d {} -p tcp -m tcp -j ACCEPT", &[&probe]));
        }
        pre_rules.push(rule(
            "! -d {} -p tcp -m tcp ! --dport {} -m mark ! --mark {} -j REDIRECT --to-ports {}",
            &[lo, &hbone, &mark, &inbound],
        ));
        if self.dns_capture {
            out_rules.push(rule(
                "! -o lo -p udp -m mark ! --mark {} -m udp --dport 53 -j REDIRECT --to-ports {}",
                &[&mark, &dns],
            ));
            out_rules.push(rule(
                "! -d {} -p tcp -m tcp --dport 53 -m mark ! --mark {} -j REDIRECT --to-ports {}",
                &[lo, &mark, &dns],
            ));
        }
        out_rules.push(rule("-p tcp -m mark --mark {} -j ACCEPT", &[&connmark]));
        if self.loopback_exemption {
            out_rules.push(rule("! -d {} -o lo -j ACCEPT", &[lo]));
        }
        out_rules.push(rule(
            "! -d {} -p tcp -m mark ! --mark {} -j REDIRECT --to-ports {}",
            &[lo, &mark, &outbound],
        ));
        tables.push(TableSpec {
            table: Table::Nat,
            jumps: jumps(),
            rules: pre_rules
                .into_iter()
                .map(|a| (pre.to_owned(), a))
                .chain(out_rules.into_iter().map(|a| (out.to_owned(), a)))
                .collect(),
        });

        // raw: DNS to and from the proxy in its own conntrack zone.
        if self.dns_capture {
            tables.push(TableSpec {
                table: Table::Raw,
                jumps: jumps(),
                rules: vec![
                    (
                        pre.to_owned(),
                        rule(
                            "-p udp -m mark ! --mark {} -m udp --sport 53 -j CT --zone 1",
                            &[&mark],
                        ),
                    ),
                    (
                        out.to_owned(),
                        rule(
                            "-p udp -m mark --mark {} -m udp --dport 53 -j CT --zone 1",
                            &[&mark],
                        ),
                    ),
                ],
            });
        }
        tables
    }

    /// Renders the `iptables-restore --noflush` input that installs the rules for
    /// `family` into a namespace that has none of them yet.
    ///
    /// The output is exactly what [`RuleSet::apply`] feeds to `iptables-restore` in a
    /// fresh namespace; in a namespace that already has (some of) the rules, `apply`
    /// additionally deletes the existing jumps first so they are never duplicated.
    pub fn render(&self, family: Family) -> Result<String, RulesError> {
        self.validate()?;
        Ok(self
            .converge_script(family, &SaveDump::default(), true)
            .unwrap_or_default())
    }

    /// The `iptables-restore --noflush` input that takes `current` to the desired
    /// state: installed (`install`) or removed. `None` when nothing is to be done.
    pub(crate) fn converge_script(
        &self,
        family: Family,
        current: &SaveDump,
        install: bool,
    ) -> Option<String> {
        let specs = if install {
            self.spec(family)
        } else {
            Vec::new()
        };
        let ours = self.chains();
        let mut out = String::new();
        for table in MANAGED_TABLES {
            let spec = specs.iter().find(|s| s.table == table);
            let cur = current.table(table.name());
            let present: Vec<&str> = ours
                .iter()
                .copied()
                .filter(|c| cur.is_some_and(|t| t.has_chain(c)))
                .collect();
            if spec.is_none() && present.is_empty() {
                continue;
            }
            let _ = writeln!(out, "*{}", table.name());
            if spec.is_some() {
                for chain in ours {
                    let _ = writeln!(out, ":{chain} - [0:0]");
                }
            }
            if let Some(cur) = cur {
                for line in references(cur, &ours) {
                    let _ = writeln!(out, "-D {line}");
                }
            }
            match spec {
                Some(spec) => {
                    for (from, to) in &spec.jumps {
                        let _ = writeln!(out, "-A {from} -j {to}");
                    }
                    for (chain, rule) in &spec.rules {
                        let _ = writeln!(out, "-A {chain} {}", join_args(rule));
                    }
                }
                None => {
                    for chain in &present {
                        let _ = writeln!(out, "-F {chain}");
                    }
                    for chain in &present {
                        let _ = writeln!(out, "-X {chain}");
                    }
                }
            }
            out.push_str("COMMIT\n");
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Rules in chains other than ours that jump to one of ours, as `CHAIN args…`.
fn references(table: &SavedTable, ours: &[&str; 2]) -> Vec<String> {
    table
        .rules
        .iter()
        .filter(|r| !ours.contains(&r.chain.as_str()))
        .filter(|r| r.target().is_some_and(|t| ours.contains(&t)))
        .map(|r| format!("{} {}", r.chain, join_args(&r.args)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converging_an_installed_namespace_replaces_jumps_instead_of_duplicating() {
        let rules = RuleSet::cilium();
        let first = rules.render(Family::V4).unwrap();
        let current = SaveDump::parse(&first).unwrap();
        let script = rules.converge_script(Family::V4, &current, true).unwrap();
        // Once per table (mangle, nat): delete the existing jump, then append it.
        for jump in [
            "PREROUTING -j CILIUM_PREROUTING\n",
            "OUTPUT -j CILIUM_OUTPUT\n",
        ] {
            assert_eq!(script.matches(&format!("-D {jump}")).count(), 2, "{script}");
            assert_eq!(script.matches(&format!("-A {jump}")).count(), 2, "{script}");
            for table in script.split("COMMIT\n").filter(|t| !t.is_empty()) {
                let d = table.find(&format!("-D {jump}")).unwrap();
                let a = table.find(&format!("-A {jump}")).unwrap();
                assert!(d < a, "{table}");
            }
        }
    }

    #[test]
    fn removal_deletes_references_then_flushes_and_deletes_chains() {
        let rules = RuleSet::istio();
        let current = SaveDump::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n\
             -A OUTPUT -m comment --comment \"two words\" -j ISTIO_OUTPUT\n\
             -A OUTPUT -j KEEP\n-A ISTIO_OUTPUT -j ACCEPT\nCOMMIT\n",
        )
        .unwrap();
        let script = rules.converge_script(Family::V4, &current, false).unwrap();
        assert_eq!(
            script,
            "*nat\n-D OUTPUT -m comment --comment \"two words\" -j ISTIO_OUTPUT\n\
             -F ISTIO_OUTPUT\n-X ISTIO_OUTPUT\nCOMMIT\n"
        );
        assert_eq!(
            rules.converge_script(Family::V4, &SaveDump::default(), false),
            None
        );
    }

    #[test]
    fn dns_capture_adds_raw_table_and_disabling_it_removes_it() {
        let mut rules = RuleSet::istio();
        rules.dns_capture = true;
        let with_dns = rules.render(Family::V6).unwrap();
        assert!(with_dns.contains("*raw\n"));
        assert!(with_dns.contains("--dport 53 -j REDIRECT --to-ports 15053"));
        rules.dns_capture = false;
        let current = SaveDump::parse(&with_dns).unwrap();
        let script = rules.converge_script(Family::V6, &current, true).unwrap();
        let raw = script.split("*raw\n").nth(1).unwrap();
        assert!(raw.contains("-X ISTIO_PRERT") && raw.contains("-X ISTIO_OUTPUT"));
    }

    #[test]
    fn render_refuses_invalid_rule_sets() {
        let mut rules = RuleSet::istio();
        rules.output_chain = "bad name".to_owned();
        assert!(matches!(
            rules.render(Family::V4),
            Err(RulesError::InvalidRuleSet { .. })
        ));
    }
}
