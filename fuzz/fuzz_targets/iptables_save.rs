//! Fuzzes the `iptables-save` parser: arbitrary text never panics; whatever parses
//! prints back to text that parses to the same dump; drift computation against a
//! parsed dump never panics, and a rendered rule set always parses without drift.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwire_netns::rules::{Family, RuleSet, SaveDump};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(dump) = SaveDump::parse(text) else {
        return;
    };
    let printed = dump.to_string();
    let again = match SaveDump::parse(&printed) {
        Ok(d) => d,
        Err(e) => panic!("printed dump does not parse: {e}\n{printed}"),
    };
    assert_eq!(dump, again, "print/parse round trip changed the dump");
    let _ = dump.normalized();

    for rules in [RuleSet::istio(), RuleSet::cilium()] {
        for family in Family::ALL {
            let _ = rules.drift(family, &dump);
        }
    }

    // Use the input's first table and chain names as the rule set's chains: the
    // rendered rules must parse back without drift.
    let mut rules = RuleSet::istio();
    if let Some(chain) = dump.tables.iter().flat_map(|t| &t.chains).next() {
        rules.output_chain = chain.name.clone();
        if rules.validate().is_ok() {
            for family in Family::ALL {
                let Ok(rendered) = rules.render(family) else {
                    continue;
                };
                let parsed = SaveDump::parse(&rendered).unwrap_or_else(|e| panic!("{e}"));
                assert!(rules.drift(family, &parsed).is_empty());
            }
        }
    }
});
