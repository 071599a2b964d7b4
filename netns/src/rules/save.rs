//! A parser and printer for the `iptables-save` / `iptables-restore` text format.

use std::fmt;

/// The parsed output of `iptables-save` (or an `iptables-restore` input that only
/// declares chains and appends rules).
///
/// Parse with [`SaveDump::parse`]; [`Display`](fmt::Display) prints it back in the
/// same format, so `parse(dump.to_string()) == dump`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaveDump {
    /// The tables, in the order they appeared.
    pub tables: Vec<SavedTable>,
}

/// One `*table` … `COMMIT` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedTable {
    /// The table name (`nat`, `mangle`, …).
    pub name: String,
    /// The declared chains (`:NAME POLICY [packets:bytes]`), in order.
    pub chains: Vec<SavedChain>,
    /// The rules (`-A CHAIN …`), in order.
    pub rules: Vec<SavedRule>,
}

/// A chain declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedChain {
    /// The chain name.
    pub name: String,
    /// The policy of a built-in chain (`ACCEPT`, `DROP`); `None` for user chains (`-`).
    pub policy: Option<String>,
    /// The `[packets:bytes]` counters, when present.
    pub counters: Option<(u64, u64)>,
}

/// One appended rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedRule {
    /// The chain the rule is appended to.
    pub chain: String,
    /// The rule specification after `-A CHAIN`, one argument per element, unquoted.
    pub args: Vec<String>,
    /// The `[packets:bytes]` counters of `iptables-save -c`, when present.
    pub counters: Option<(u64, u64)>,
}

/// An error in `iptables-save` text, with the 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("iptables-save line {line}: {kind}")]
pub struct ParseError {
    /// The 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub kind: ParseErrorKind,
}

/// What was wrong in a [`ParseError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// A chain or rule line outside a `*table` block.
    #[error("line outside a table")]
    OutsideTable,
    /// A `*table` line while another table was still open.
    #[error("table started before the previous one was committed")]
    NestedTable,
    /// `COMMIT` without an open table.
    #[error("COMMIT outside a table")]
    StrayCommit,
    /// End of input inside an open table.
    #[error("missing COMMIT at end of input")]
    MissingCommit,
    /// An empty or malformed name.
    #[error("malformed {0} name")]
    BadName(&'static str),
    /// A malformed `[packets:bytes]` counter.
    #[error("malformed counters")]
    BadCounters,
    /// A double quote that is never closed.
    #[error("unterminated quote")]
    UnterminatedQuote,
    /// A line this parser does not understand.
    #[error("unsupported line")]
    Unsupported,
}

impl SaveDump {
    /// Parses `iptables-save` output.
    ///
    /// Comments (`#`) and blank lines are skipped. Besides `*table`, `:CHAIN POLICY
    /// [p:b]`, `-A CHAIN args…` (optionally preceded by `[p:b]`) and `COMMIT`, the
    /// declaration form `-N CHAIN` is accepted. Arguments may be double-quoted with
    /// backslash escapes, as `iptables-save` prints comments.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut dump = Self::default();
        let mut open: Option<SavedTable> = None;
        let mut last_line = 0;
        for (idx, raw) in text.split('\n').enumerate() {
            let line_no = idx + 1;
            last_line = line_no;
            let err = |kind| ParseError {
                line: line_no,
                kind,
            };
            let line = raw.trim_matches(is_space);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                if open.is_some() {
                    return Err(err(ParseErrorKind::NestedTable));
                }
                let name = name.trim_matches(is_space);
                if !is_plain_name(name) {
                    return Err(err(ParseErrorKind::BadName("table")));
                }
                open = Some(SavedTable {
                    name: name.to_owned(),
                    ..SavedTable::default()
                });
                continue;
            }
            if line == "COMMIT" {
                match open.take() {
                    Some(table) => dump.tables.push(table),
                    None => return Err(err(ParseErrorKind::StrayCommit)),
                }
                continue;
            }
            let Some(table) = open.as_mut() else {
                return Err(err(ParseErrorKind::OutsideTable));
            };
            if let Some(decl) = line.strip_prefix(':') {
                table.chains.push(parse_chain(decl).map_err(err)?);
                continue;
            }
            let tokens = tokenize(line).map_err(err)?;
            let (counters, rest) = match tokens.split_first() {
                Some((first, rest)) if first.starts_with('[') => {
                    (Some(parse_counters(first).map_err(err)?), rest)
                }
                _ => (None, tokens.as_slice()),
            };
            match rest {
                [op, chain, args @ ..] if op == "-A" || op == "--append" => {
                    if !is_plain_name(chain) {
                        return Err(err(ParseErrorKind::BadName("chain")));
                    }
                    table.rules.push(SavedRule {
                        chain: chain.clone(),
                        args: args.to_vec(),
                        counters,
                    });
                }
                [op, chain] if counters.is_none() && (op == "-N" || op == "--new-chain") => {
                    if !is_plain_name(chain) {
                        return Err(err(ParseErrorKind::BadName("chain")));
                    }
                    table.chains.push(SavedChain {
                        name: chain.clone(),
                        policy: None,
                        counters: None,
                    });
                }
                _ => return Err(err(ParseErrorKind::Unsupported)),
            }
        }
        if open.is_some() {
            return Err(ParseError {
                line: last_line,
                kind: ParseErrorKind::MissingCommit,
            });
        }
        Ok(dump)
    }

    /// The table named `name`, if present.
    pub fn table(&self, name: &str) -> Option<&SavedTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// A copy without counters and without tables that hold nothing but built-in
    /// chains with an `ACCEPT` policy: the form in which two dumps that mean the same
    /// filtering compare equal (the nftables backend keeps empty tables around once
    /// they were used).
    pub fn normalized(&self) -> Self {
        let tables = self
            .tables
            .iter()
            .filter(|t| {
                !t.rules.is_empty()
                    || t.chains
                        .iter()
                        .any(|c| c.policy.as_deref().is_none_or(|p| p != "ACCEPT"))
            })
            .map(|t| SavedTable {
                name: t.name.clone(),
                chains: t
                    .chains
                    .iter()
                    .map(|c| SavedChain {
                        counters: None,
                        ..c.clone()
                    })
                    .collect(),
                rules: t
                    .rules
                    .iter()
                    .map(|r| SavedRule {
                        counters: None,
                        ..r.clone()
                    })
                    .collect(),
            })
            .collect();
        Self { tables }
    }
}

impl SavedTable {
    /// Whether a chain named `name` is declared.
    pub fn has_chain(&self, name: &str) -> bool {
        self.chains.iter().any(|c| c.name == name)
    }

    /// The rules of chain `chain`, in order.
    pub fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a SavedRule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }
}

impl SavedRule {
    /// The target of `-j` / `--jump` / `-g` / `--goto`, if any.
    pub fn target(&self) -> Option<&str> {
        self.args
            .windows(2)
            .find(|w| matches!(w[0].as_str(), "-j" | "--jump" | "-g" | "--goto"))
            .map(|w| w[1].as_str())
    }
}

fn is_space(c: char) -> bool {
    c.is_whitespace()
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(is_space) && !name.contains(['"', '\\'])
}

fn parse_chain(decl: &str) -> Result<SavedChain, ParseErrorKind> {
    let mut parts = decl.split(is_space).filter(|s| !s.is_empty());
    let name = parts.next().ok_or(ParseErrorKind::BadName("chain"))?;
    if !is_plain_name(name) {
        return Err(ParseErrorKind::BadName("chain"));
    }
    let policy = match parts.next() {
        None | Some("-") => None,
        Some(p) if is_plain_name(p) && !p.starts_with('[') => Some(p.to_owned()),
        Some(_) => return Err(ParseErrorKind::BadName("policy")),
    };
    let counters = parts.next().map(parse_counters).transpose()?;
    if parts.next().is_some() {
        return Err(ParseErrorKind::Unsupported);
    }
    Ok(SavedChain {
        name: name.to_owned(),
        policy,
        counters,
    })
}

fn parse_counters(text: &str) -> Result<(u64, u64), ParseErrorKind> {
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or(ParseErrorKind::BadCounters)?;
    let (p, b) = inner.split_once(':').ok_or(ParseErrorKind::BadCounters)?;
    let num = |s: &str| {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(ParseErrorKind::BadCounters);
        }
        s.parse::<u64>().map_err(|_| ParseErrorKind::BadCounters)
    };
    Ok((num(p)?, num(b)?))
}

/// Splits a rule line into arguments: whitespace separates, double quotes group,
/// and inside quotes a backslash escapes the next character.
pub(crate) fn tokenize(line: &str) -> Result<Vec<String>, ParseErrorKind> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            in_token = true;
            loop {
                match chars.next() {
                    None => return Err(ParseErrorKind::UnterminatedQuote),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(escaped) => cur.push(escaped),
                        None => return Err(ParseErrorKind::UnterminatedQuote),
                    },
                    Some(other) => cur.push(other),
                }
            }
        } else if is_space(c) {
            if in_token {
                out.push(std::mem::take(&mut cur));
                in_token = false;
            }
        } else {
            in_token = true;
            cur.push(c);
        }
    }
    if in_token {
        out.push(cur);
    }
    Ok(out)
}

/// Quotes an argument for `iptables-restore` when it needs it.
pub(crate) fn quote(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains(|c: char| is_space(c) || c == '"' || c == '\\') {
        return arg.to_owned();
    }
    let mut s = String::with_capacity(arg.len() + 2);
    s.push('"');
    for c in arg.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// Joins arguments into one line, quoting where needed.
pub(crate) fn join_args<S: AsRef<str>>(args: &[S]) -> String {
    let mut s = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&quote(a.as_ref()));
    }
    s
}

impl fmt::Display for SaveDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tables {
            writeln!(f, "*{}", t.name)?;
            for c in &t.chains {
                write!(f, ":{} {}", c.name, c.policy.as_deref().unwrap_or("-"))?;
                if let Some((p, b)) = c.counters {
                    write!(f, " [{p}:{b}]")?;
                }
                writeln!(f)?;
            }
            for r in &t.rules {
                if let Some((p, b)) = r.counters {
                    write!(f, "[{p}:{b}] ")?;
                }
                write!(f, "-A {}", r.chain)?;
                if !r.args.is_empty() {
                    write!(f, " {}", join_args(&r.args))?;
                }
                writeln!(f)?;
            }
            writeln!(f, "COMMIT")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables) on Sat Nov 21 11:18:22 2026
*mangle
:PREROUTING ACCEPT [12:3456]
:OUTPUT ACCEPT [0:0]
:ISTIO_PRERT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
COMMIT
# Completed on Sat Nov 21 11:18:22 2026
*filter
:INPUT DROP [0:0]
[5:300] -A INPUT -m comment --comment \"keep \\\"this\\\" rule\" -j ACCEPT
COMMIT
";

    #[test]
    fn parses_tables_chains_rules_counters_and_quotes() {
        let d = SaveDump::parse(SAMPLE).unwrap();
        assert_eq!(d.tables.len(), 2);
        let m = d.table("mangle").unwrap();
        assert_eq!(m.chains.len(), 3);
        assert_eq!(m.chains[0].policy.as_deref(), Some("ACCEPT"));
        assert_eq!(m.chains[0].counters, Some((12, 3456)));
        assert_eq!(m.chains[2].policy, None);
        assert_eq!(m.rules[0].target(), Some("ISTIO_PRERT"));
        assert_eq!(m.rules_of("ISTIO_PRERT").count(), 1);
        let f = d.table("filter").unwrap();
        assert_eq!(f.rules[0].counters, Some((5, 300)));
        assert_eq!(
            f.rules[0].args,
            [
                "-m",
                "comment",
                "--comment",
                "keep \"this\" rule",
                "-j",
                "ACCEPT"
            ]
        );
    }

    #[test]
    fn display_round_trips() {
        let d = SaveDump::parse(SAMPLE).unwrap();
        let again = SaveDump::parse(&d.to_string()).unwrap();
        assert_eq!(d, again);
    }

    #[test]
    fn errors_carry_line_numbers() {
        let e = SaveDump::parse("*nat\n:A - [0:0]\n-A A \"open\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.kind, ParseErrorKind::UnterminatedQuote);
        let e = SaveDump::parse("-A X -j ACCEPT\n").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::OutsideTable);
        let e = SaveDump::parse("*nat\n:A - [0:0]\n").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::MissingCommit);
        let e = SaveDump::parse("*nat\n*mangle\n").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::NestedTable);
        let e = SaveDump::parse("COMMIT\n").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::StrayCommit);
        let e = SaveDump::parse("*nat\n:A - [x:0]\nCOMMIT\n").unwrap_err();
        assert_eq!((e.line, e.kind), (2, ParseErrorKind::BadCounters));
        let e = SaveDump::parse("*nat\n-I A 1 -j X\nCOMMIT\n").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::Unsupported);
    }

    #[test]
    fn accepts_new_chain_form_and_empty_input() {
        assert_eq!(SaveDump::parse("").unwrap(), SaveDump::default());
        let d = SaveDump::parse("*nat\n-N FOO\n-A FOO -j RETURN\nCOMMIT\n").unwrap();
        assert!(d.tables[0].has_chain("FOO"));
    }

    #[test]
    fn normalized_drops_empty_tables_and_counters() {
        let d = SaveDump::parse(
            "*nat\n:PREROUTING ACCEPT [3:4]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n\
             *filter\n:INPUT DROP [1:2]\nCOMMIT\n",
        )
        .unwrap();
        let n = d.normalized();
        assert_eq!(n.tables.len(), 1);
        assert_eq!(n.tables[0].name, "filter");
        assert_eq!(n.tables[0].chains[0].counters, None);
    }

    #[test]
    fn quoting_round_trips_awkward_arguments() {
        for arg in ["", "a b", "q\"uote", "back\\slash", "tab\there", "plain"] {
            let line = join_args(&["x", arg, "y"]);
            assert_eq!(tokenize(&line).unwrap(), ["x", arg, "y"], "{line}");
        }
    }
}
