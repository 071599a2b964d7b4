//! Rendering against golden files, render → parse round trips, and parsing real
//! `iptables-save` output. No privileges needed.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::PathBuf;

use meshwire_netns::rules::{Difference, Family, MarkMask, RuleSet, SaveDump, Table};
use proptest::prelude::*;

fn istio_dns_vif() -> RuleSet {
    let mut r = RuleSet::istio();
    r.dns_capture = true;
    r.virtual_interfaces = vec!["fake1s0f0".to_owned()];
    r
}

type Case = (&'static str, fn() -> RuleSet);

const CASES: [Case; 3] = [
    ("istio", RuleSet::istio),
    ("cilium", RuleSet::cilium),
    ("istio_dns_vif", istio_dns_vif),
];

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

/// Compares with `tests/golden/<name>`. A missing file is written and the test
/// fails; `MESHWIRE_BLESS=1` rewrites differing files.
fn check_golden(name: &str, actual: &str) -> Result<(), String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let bless = std::env::var_os("MESHWIRE_BLESS").is_some_and(|v| v == "1");
    match std::fs::read_to_string(&path) {
        Ok(expected) if expected == actual => Ok(()),
        Ok(_) if bless => {
            std::fs::write(&path, actual).unwrap();
            Ok(())
        }
        Ok(expected) => Err(format!(
            "{} differs from the rendered rules (MESHWIRE_BLESS=1 to update)\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        )),
        Err(_) => {
            std::fs::write(&path, actual).unwrap();
            Err(format!(
                "{} was missing and has been written; check and commit it",
                path.display()
            ))
        }
    }
}

#[test]
fn render_matches_golden_files() {
    let mut failures = Vec::new();
    for (name, make) in CASES {
        for family in Family::ALL {
            let rendered = make().render(family).unwrap();
            let file = format!("{name}_{}.rules", family_name(family));
            if let Err(e) = check_golden(&file, &rendered) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn golden_rules_follow_the_published_rule_order() {
    // The nat output chain of the Istio preset, in the order the rules must apply.
    let rendered = RuleSet::istio().render(Family::V4).unwrap();
    let nat = rendered.split("*nat\n").nth(1).unwrap();
    let out: Vec<&str> = nat
        .lines()
        .filter(|l| l.starts_with("-A ISTIO_OUTPUT"))
        .collect();
    assert_eq!(
        out,
        [
            "-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT",
            "-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT",
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT",
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
        ]
    );
    let v6 = RuleSet::cilium().render(Family::V6).unwrap();
    assert!(v6.contains(
        "-A CILIUM_PREROUTING ! -d ::1/128 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006\n"
    ));
    assert!(!v6.contains("169.254") && !v6.contains("fd16:"));
}

#[test]
fn render_parse_round_trip() {
    for (name, make) in CASES {
        let rules = make();
        for family in Family::ALL {
            let text = rules.render(family).unwrap();
            let dump = SaveDump::parse(&text).unwrap();
            // The parsed form prints back to something that parses to the same dump.
            assert_eq!(SaveDump::parse(&dump.to_string()).unwrap(), dump, "{name}");
            // Every rendered rule line is in the dump, and the dump shows no drift.
            let rule_lines = text.lines().filter(|l| l.starts_with("-A ")).count();
            let parsed_rules: usize = dump.tables.iter().map(|t| t.rules.len()).sum();
            assert_eq!(rule_lines, parsed_rules, "{name}");
            assert_eq!(
                rules.drift(family, &dump),
                Vec::<Difference>::new(),
                "{name} {family}"
            );
        }
    }
}

#[test]
fn real_iptables_save_output_parses_and_matches_the_preset() {
    let text = include_str!("data/iptables-save-nft-1.8.9.txt");
    let dump = SaveDump::parse(text).unwrap();
    let names: Vec<&str> = dump.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["mangle", "raw", "filter", "nat"]);
    let filter = dump.table("filter").unwrap();
    assert_eq!(filter.chains[1].policy.as_deref(), Some("DROP"));
    assert!(
        filter.rules[0]
            .args
            .contains(&"allow \"probe\" traffic".to_owned())
    );
    assert_eq!(filter.rules[0].counters, Some((0, 0)));

    // Captured after installing these very rules (plus unrelated ones) with
    // iptables 1.8.9 (nf_tables): no drift, in the canonical spelling.
    assert_eq!(istio_dns_vif().drift(Family::V4, &dump), vec![]);
    // The other preset finds none of its chains.
    let drift = RuleSet::cilium().drift(Family::V4, &dump);
    assert!(drift.contains(&Difference::MissingChain {
        family: Family::V4,
        table: Table::Nat,
        chain: "CILIUM_OUTPUT".to_owned()
    }));
    // Without DNS capture the raw chains and the DNS rules are reported.
    let drift = RuleSet::istio();
    let mut plain = drift;
    plain.virtual_interfaces = vec!["fake1s0f0".to_owned()];
    let d = plain.drift(Family::V4, &dump);
    assert_eq!(
        d.iter()
            .filter(|x| matches!(
                x,
                Difference::UnexpectedChain {
                    table: Table::Raw,
                    ..
                }
            ))
            .count(),
        2
    );
    assert_eq!(
        d.iter()
            .filter(|x| matches!(x, Difference::UnexpectedRule { .. }))
            .count(),
        2
    );
}

fn arb_rules() -> impl Strategy<Value = RuleSet> {
    (
        prop::bool::ANY,
        "[A-Z][A-Z0-9_]{0,20}",
        "[A-Z][A-Z0-9_-]{0,20}",
        (
            1u16..=u16::MAX,
            1u16..=u16::MAX,
            1u16..=u16::MAX,
            1u16..=u16::MAX,
        ),
        (1u32..0xfff, 1u32..0xfff),
        (
            prop::bool::ANY,
            prop::bool::ANY,
            prop::bool::ANY,
            prop::bool::ANY,
        ),
        prop::collection::vec("[a-z][a-z0-9.]{0,14}", 0..3),
    )
        .prop_filter_map(
            "invalid combination",
            |(cilium, pre, out, ports, marks, flags, ifaces)| {
                let mut r = if cilium {
                    RuleSet::cilium()
                } else {
                    RuleSet::istio()
                };
                r.prerouting_chain = format!("P{pre}");
                r.output_chain = format!("O{out}");
                (
                    r.ports.outbound,
                    r.ports.inbound,
                    r.ports.hbone,
                    r.ports.dns,
                ) = ports;
                r.proxy_mark = MarkMask::new(marks.0, 0xfff);
                r.connmark = MarkMask::new(marks.1, 0xfff);
                (r.ipv6, r.loopback_exemption, r.dns_capture, _) = flags;
                if flags.3 {
                    r.probe_exemption = None;
                }
                r.virtual_interfaces = ifaces;
                r.validate().is_ok().then_some(r)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_valid_rule_set_round_trips_without_drift(rules in arb_rules()) {
        for &family in rules.families() {
            let text = rules.render(family).unwrap();
            let dump = SaveDump::parse(&text).unwrap();
            prop_assert_eq!(rules.drift(family, &dump), vec![]);
            // Another rule set with different chains sees all of its own missing.
            let other = RuleSet::cilium();
            if other.prerouting_chain != rules.prerouting_chain {
                prop_assert!(!other.drift(family, &dump).is_empty());
            }
        }
    }

    #[test]
    fn parse_never_panics_and_printing_round_trips(text in "(\\*[a-z]{1,6}\n|:[A-Z_]{1,8} (-|ACCEPT) \\[[0-9]{1,3}:[0-9]{1,3}\\]\n|(\\[1:2\\] )?-A [A-Z]{1,4}( (-[a-z]|!|\"[ a-z\\\\\"]{0,5}\"|[a-z0-9/.]{1,6})){0,6}\n|COMMIT\n|# c\n|\n){0,20}") {
        if let Ok(dump) = SaveDump::parse(&text) {
            let printed = dump.to_string();
            prop_assert_eq!(SaveDump::parse(&printed).unwrap(), dump);
        }
    }
}
