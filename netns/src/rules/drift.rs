//! Comparing the installed rules with the rule set.

use std::fmt;
use std::net::IpAddr;

use super::model::{Family, RuleSet, Table};
use super::render::MANAGED_TABLES;
use super::save::{SaveDump, join_args};

/// One way in which a namespace differs from the rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Difference {
    /// One of our chains does not exist.
    MissingChain {
        /// The family.
        family: Family,
        /// The table.
        table: Table,
        /// The chain.
        chain: String,
    },
    /// A chain of ours exists in a table the rule set does not use.
    UnexpectedChain {
        /// The family.
        family: Family,
        /// The table.
        table: Table,
        /// The chain.
        chain: String,
    },
    /// The jump from a built-in chain into ours is missing.
    MissingJump {
        /// The family.
        family: Family,
        /// The table.
        table: Table,
        /// The built-in chain.
        from: String,
        /// Our chain.
        to: String,
    },
    /// The jump from a built-in chain into ours exists more than once.
    DuplicateJump {
        /// The family.
        family: Family,
        /// The table.
        table: Table,
        /// The built-in chain.
        from: String,
        /// Our chain.
        to: String,
        /// How many times it exists.
        count: usize,
    },
    /// An expected rule is missing.
    MissingRule {
        /// The family.
        family: Family,
        /// The table.
        table: Table,
        /// The chain.
        chain: String,
        /// The rule specification, as `iptables-save` prints it.
        rule: String,
    },
    /// A rule that the rule set does not contain: in one of our chains, or jumping
    /// into one of our chains from elsewhere.
    UnexpectedRule {
        /// The family.
        family: Family,
        /// The table.
        table: Table,
        /// The chain.
        chain: String,
        /// The rule specification.
        rule: String,
    },
    /// Our chain holds exactly the expected rules, in the wrong order.
    RulesOutOfOrder {
        /// The family.
        family: Family,
        /// The table.
        table: Table,
        /// The chain.
        chain: String,
    },
    /// The fwmark policy-routing rule is missing.
    MissingRoutingRule {
        /// The family.
        family: Family,
    },
    /// The `local` default route of the policy-routing table is missing.
    MissingLocalRoute {
        /// The family.
        family: Family,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingChain {
                family,
                table,
                chain,
            } => {
                write!(f, "{family} {table}: chain {chain} is missing")
            }
            Self::UnexpectedChain {
                family,
                table,
                chain,
            } => {
                write!(f, "{family} {table}: chain {chain} should not exist")
            }
            Self::MissingJump {
                family,
                table,
                from,
                to,
            } => {
                write!(f, "{family} {table}: jump {from} -> {to} is missing")
            }
            Self::DuplicateJump {
                family,
                table,
                from,
                to,
                count,
            } => {
                write!(
                    f,
                    "{family} {table}: jump {from} -> {to} exists {count} times"
                )
            }
            Self::MissingRule {
                family,
                table,
                chain,
                rule,
            } => {
                write!(f, "{family} {table}: missing rule -A {chain} {rule}")
            }
            Self::UnexpectedRule {
                family,
                table,
                chain,
                rule,
            } => {
                write!(f, "{family} {table}: unexpected rule -A {chain} {rule}")
            }
            Self::RulesOutOfOrder {
                family,
                table,
                chain,
            } => {
                write!(f, "{family} {table}: rules of {chain} are out of order")
            }
            Self::MissingRoutingRule { family } => {
                write!(f, "{family}: fwmark routing rule is missing")
            }
            Self::MissingLocalRoute { family } => {
                write!(
                    f,
                    "{family}: local default route of the routing table is missing"
                )
            }
        }
    }
}

/// The differences between a namespace and the rule set; empty when the namespace
/// is exactly as the rule set wants it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    differences: Vec<Difference>,
}

impl Drift {
    /// Wraps a list of differences.
    pub fn new(differences: Vec<Difference>) -> Self {
        Self { differences }
    }

    /// Whether nothing differs.
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }

    /// The differences, grouped by family and table.
    pub fn differences(&self) -> &[Difference] {
        &self.differences
    }

    /// Consumes the drift, returning the differences.
    pub fn into_differences(self) -> Vec<Difference> {
        self.differences
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return f.write_str("no drift");
        }
        for (i, d) in self.differences.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Brings equivalent spellings of a rule to one form, so that rules written by
/// different iptables versions compare equal.
fn normalize(args: &[String], family: Family) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    let mut proto: Option<String> = None;
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let long = match arg.as_str() {
            "--source" | "--src" => "-s",
            "--destination" | "--dst" => "-d",
            "--protocol" => "-p",
            "--in-interface" => "-i",
            "--out-interface" => "-o",
            "--jump" => "-j",
            "--match" => "-m",
            "--to-port" => "--to-ports",
            other => other,
        };
        match long {
            "-s" | "-d" => {
                out.push(long.to_owned());
                if let Some(addr) = args.get(i + 1) {
                    out.push(normalize_addr(addr, family));
                    i += 1;
                }
            }
            "-p" => {
                out.push(long.to_owned());
                if let Some(p) = args.get(i + 1) {
                    proto = Some(p.to_ascii_lowercase());
                    out.push(p.to_ascii_lowercase());
                    i += 1;
                }
            }
            "-m" if args
                .get(i + 1)
                .is_some_and(|m| proto.as_deref() == Some(m.as_str())) =>
            {
                // `-m tcp` after `-p tcp` is implied.
                i += 1;
            }
            other => out.push(other.to_owned()),
        }
        i += 1;
    }
    out
}

fn normalize_addr(text: &str, family: Family) -> String {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return text.to_owned();
    };
    let full = match family {
        Family::V4 => "32",
        Family::V6 => "128",
    };
    format!("{ip}/{}", prefix.unwrap_or(full))
}

impl RuleSet {
    /// Compares an `iptables-save` dump of `family` with this rule set.
    ///
    /// Only our chains, and jumps into them, are looked at; other rules in the
    /// namespace are left alone and never reported.
    pub fn drift(&self, family: Family, current: &SaveDump) -> Vec<Difference> {
        let mut diffs = Vec::new();
        let ours = self.chains();
        let specs = self.spec(family);
        for table in MANAGED_TABLES {
            let spec = specs.iter().find(|s| s.table == table);
            let cur = current.table(table.name());
            let Some(spec) = spec else {
                for chain in ours {
                    if cur.is_some_and(|t| t.has_chain(chain)) {
                        diffs.push(Difference::UnexpectedChain {
                            family,
                            table,
                            chain: chain.to_owned(),
                        });
                    }
                }
                continue;
            };
            // Jumps into our chains from any other chain.
            let refs: Vec<_> = cur
                .map(|t| {
                    t.rules
                        .iter()
                        .filter(|r| !ours.contains(&r.chain.as_str()))
                        .filter(|r| r.target().is_some_and(|x| ours.contains(&x)))
                        .collect()
                })
                .unwrap_or_default();
            for (from, to) in &spec.jumps {
                let want = vec!["-j".to_owned(), to.clone()];
                let count = refs
                    .iter()
                    .filter(|r| r.chain == *from && normalize(&r.args, family) == want)
                    .count();
                match count {
                    0 => diffs.push(Difference::MissingJump {
                        family,
                        table,
                        from: (*from).to_owned(),
                        to: to.clone(),
                    }),
                    1 => {}
                    n => diffs.push(Difference::DuplicateJump {
                        family,
                        table,
                        from: (*from).to_owned(),
                        to: to.clone(),
                        count: n,
                    }),
                }
            }
            for r in &refs {
                let expected = spec.jumps.iter().any(|(from, to)| {
                    r.chain == *from && normalize(&r.args, family) == ["-j", to.as_str()]
                });
                if !expected {
                    diffs.push(Difference::UnexpectedRule {
                        family,
                        table,
                        chain: r.chain.clone(),
                        rule: join_args(&r.args),
                    });
                }
            }
            for chain in ours {
                if !cur.is_some_and(|t| t.has_chain(chain)) {
                    diffs.push(Difference::MissingChain {
                        family,
                        table,
                        chain: chain.to_owned(),
                    });
                    continue;
                }
                let want: Vec<&Vec<String>> = spec
                    .rules
                    .iter()
                    .filter(|(c, _)| c == chain)
                    .map(|(_, a)| a)
                    .collect();
                let have: Vec<&Vec<String>> = cur
                    .map(|t| t.rules_of(chain).map(|r| &r.args).collect())
                    .unwrap_or_default();
                chain_drift(family, table, chain, &want, &have, &mut diffs);
            }
        }
        diffs
    }
}

fn chain_drift(
    family: Family,
    table: Table,
    chain: &str,
    want: &[&Vec<String>],
    have: &[&Vec<String>],
    diffs: &mut Vec<Difference>,
) {
    let want_n: Vec<Vec<String>> = want.iter().map(|a| normalize(a, family)).collect();
    let have_n: Vec<Vec<String>> = have.iter().map(|a| normalize(a, family)).collect();
    if want_n == have_n {
        return;
    }
    // Multiset difference in both directions.
    let mut unmatched: Vec<Option<&Vec<String>>> = have_n.iter().map(Some).collect();
    let mut missing = Vec::new();
    for (w, orig) in want_n.iter().zip(want) {
        match unmatched.iter_mut().find(|h| h.is_some_and(|h| h == w)) {
            Some(slot) => *slot = None,
            None => missing.push(join_args(orig)),
        }
    }
    let unexpected: Vec<String> = unmatched
        .iter()
        .zip(have)
        .filter(|(slot, _)| slot.is_some())
        .map(|(_, orig)| join_args(orig))
        .collect();
    let chain = chain.to_owned();
    if missing.is_empty() && unexpected.is_empty() {
        diffs.push(Difference::RulesOutOfOrder {
            family,
            table,
            chain,
        });
        return;
    }
    diffs.extend(missing.into_iter().map(|rule| Difference::MissingRule {
        family,
        table,
        chain: chain.clone(),
        rule,
    }));
    diffs.extend(
        unexpected
            .into_iter()
            .map(|rule| Difference::UnexpectedRule {
                family,
                table,
                chain: chain.clone(),
                rule,
            }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn normalization_unifies_spellings() {
        assert_eq!(
            normalize(&v("-s 169.254.7.127 -p tcp -m tcp -j ACCEPT"), Family::V4),
            v("-s 169.254.7.127/32 -p tcp -j ACCEPT")
        );
        assert_eq!(
            normalize(
                &v("--destination ::1 -p UDP --dport 53 -j REDIRECT --to-port 1"),
                Family::V6
            ),
            v("-d ::1/128 -p udp --dport 53 -j REDIRECT --to-ports 1")
        );
        assert_eq!(
            normalize(&v("-p tcp -m mark --mark 0x1 -m tcp --dport 1"), Family::V4),
            v("-p tcp -m mark --mark 0x1 --dport 1")
        );
    }

    #[test]
    fn rendered_rules_have_no_drift_and_empty_namespace_is_all_missing() {
        for rules in [RuleSet::istio(), RuleSet::cilium()] {
            for family in Family::ALL {
                let dump = SaveDump::parse(&rules.render(family).unwrap()).unwrap();
                assert_eq!(rules.drift(family, &dump), vec![]);
                let empty = rules.drift(family, &SaveDump::default());
                assert!(empty.contains(&Difference::MissingChain {
                    family,
                    table: Table::Nat,
                    chain: rules.output_chain.clone()
                }));
                assert_eq!(
                    empty
                        .iter()
                        .filter(|d| matches!(d, Difference::MissingJump { .. }))
                        .count(),
                    4
                );
            }
        }
    }

    #[test]
    fn detects_missing_unexpected_reordered_and_duplicate() {
        let rules = RuleSet::cilium();
        let text = rules.render(Family::V4).unwrap();
        let base = SaveDump::parse(&text).unwrap();

        let mut dump = base.clone();
        let nat = dump.tables.iter_mut().find(|t| t.name == "nat").unwrap();
        let idx = nat
            .rules
            .iter()
            .position(|r| r.args.contains(&"15006".to_owned()))
            .unwrap();
        let removed = nat.rules.remove(idx);
        let d = rules.drift(Family::V4, &dump);
        assert_eq!(
            d,
            vec![Difference::MissingRule {
                family: Family::V4,
                table: Table::Nat,
                chain: "CILIUM_PREROUTING".into(),
                rule: join_args(&removed.args),
            }]
        );

        let mut dump = base.clone();
        let nat = dump.tables.iter_mut().find(|t| t.name == "nat").unwrap();
        let outs: Vec<usize> = nat
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.chain == "CILIUM_OUTPUT")
            .map(|(i, _)| i)
            .collect();
        nat.rules.swap(outs[0], outs[1]);
        let dup = nat.rules[0].clone();
        nat.rules.push(dup);
        nat.rules.push(super::super::save::SavedRule {
            chain: "CILIUM_OUTPUT".into(),
            args: v("-j DROP"),
            counters: None,
        });
        let d = rules.drift(Family::V4, &dump);
        assert!(d.contains(&Difference::DuplicateJump {
            family: Family::V4,
            table: Table::Nat,
            from: "PREROUTING".into(),
            to: "CILIUM_PREROUTING".into(),
            count: 2
        }));
        assert!(d.contains(&Difference::UnexpectedRule {
            family: Family::V4,
            table: Table::Nat,
            chain: "CILIUM_OUTPUT".into(),
            rule: "-j DROP".into()
        }));
        assert!(
            !d.iter()
                .any(|x| matches!(x, Difference::RulesOutOfOrder { .. }))
        );

        let mut dump = base;
        let nat = dump.tables.iter_mut().find(|t| t.name == "nat").unwrap();
        nat.rules.swap(outs[0], outs[1]);
        assert_eq!(
            rules.drift(Family::V4, &dump),
            vec![Difference::RulesOutOfOrder {
                family: Family::V4,
                table: Table::Nat,
                chain: "CILIUM_OUTPUT".into()
            }]
        );
        let drift = Drift::new(rules.drift(Family::V4, &dump));
        assert!(!drift.is_clean());
        assert!(drift.to_string().contains("out of order"));
    }

    #[test]
    fn leftover_dns_chains_are_unexpected() {
        let mut rules = RuleSet::istio();
        rules.dns_capture = true;
        let dump = SaveDump::parse(&rules.render(Family::V4).unwrap()).unwrap();
        rules.dns_capture = false;
        let d = rules.drift(Family::V4, &dump);
        assert!(d.iter().all(|x| matches!(
            x,
            Difference::UnexpectedChain {
                table: Table::Raw,
                ..
            }
        ) || matches!(
            x,
            Difference::MissingRule { .. } | Difference::UnexpectedRule { .. }
        )));
        assert!(d.iter().any(|x| matches!(
            x,
            Difference::UnexpectedChain {
                table: Table::Raw,
                ..
            }
        )));
    }
}
