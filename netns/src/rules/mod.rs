//! The in-pod redirection rules: model, rendering, parsing, drift, and the
//! operations that install, check, repair and remove them.

mod drift;
mod exec;
mod model;
mod render;
mod save;

pub use drift::{Difference, Drift};
pub use exec::{Backend, CommandOutput, Executor, Invocation, Netfilter, SystemExecutor, Tools};
pub use model::{Family, MarkMask, PolicyRouting, Ports, ProbeExemption, RuleSet, Table};
pub use save::{ParseError, ParseErrorKind, SaveDump, SavedChain, SavedRule, SavedTable};

use crate::error::Error;
use crate::ns::NetNs;

/// An error while rendering, installing, checking or removing rules.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    /// The rule set cannot be rendered safely.
    #[error("invalid rule set: {reason}")]
    InvalidRuleSet {
        /// What is wrong.
        reason: String,
    },
    /// A required program is not installed.
    #[error(
        "`{program}` not found in PATH: install the iptables package (iptables-save/-restore, \
         ip6tables-save/-restore) and iproute2 (ip)"
    )]
    ToolMissing {
        /// The program.
        program: String,
    },
    /// A program could not be started.
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A program failed.
    #[error("`{command}` failed (exit {}): {stderr}", status.map_or_else(|| "by signal".to_owned(), |c| c.to_string()))]
    CommandFailed {
        /// The command line.
        command: String,
        /// The exit code, `None` if killed by a signal.
        status: Option<i32>,
        /// What the program printed on standard error.
        stderr: String,
    },
    /// `iptables --version` named no known backend.
    #[error("cannot tell the iptables backend from {version:?}")]
    UnknownBackend {
        /// The version output.
        version: String,
    },
    /// `iptables-save` printed something unparsable.
    #[error("cannot parse the output of `{program}`: {source}")]
    Parse {
        /// The program.
        program: String,
        /// The parse error.
        source: ParseError,
    },
    /// Entering the namespace failed.
    #[error(transparent)]
    Namespace(#[from] Error),
}

fn stderr_says(err: &RulesError, needles: &[&str]) -> bool {
    match err {
        RulesError::CommandFailed { stderr, .. } => needles.iter().any(|n| stderr.contains(n)),
        _ => false,
    }
}

const NOT_FOUND: [&str; 4] = [
    "No such file or directory",
    "No such process",
    "does not exist",
    "Cannot find",
];

impl RuleSet {
    /// Installs the rules and policy routing inside `ns`, atomically per table and
    /// idempotently: applying twice leaves exactly one copy, and any drift is
    /// overwritten.
    ///
    /// Runs the programs on a short-lived helper thread that has entered `ns`; the
    /// calling thread never changes namespace. This blocks (it runs
    /// `iptables-save`, `iptables-restore` and `ip`), so async callers should use
    /// `spawn_blocking`.
    pub fn apply(&self, ns: &NetNs) -> Result<(), RulesError> {
        ns.run_on_thread(|| self.apply_with(&Netfilter::system()))?
    }

    /// [`RuleSet::apply`] in the namespace the programs of `nf` run in.
    pub fn apply_with<E: Executor>(&self, nf: &Netfilter<E>) -> Result<(), RulesError> {
        self.validate()?;
        for &family in self.families() {
            let current = nf.save(family)?;
            if let Some(script) = self.converge_script(family, &current, true) {
                nf.restore(family, &script)?;
            }
        }
        if let Some(routing) = self.routing {
            for &family in self.families() {
                self.add_routing(nf, family, routing)?;
            }
        }
        tracing::debug!(chains = ?self.chains(), "redirection rules applied");
        Ok(())
    }

    /// Compares the rules and policy routing inside `ns` with this rule set.
    pub fn verify(&self, ns: &NetNs) -> Result<Drift, RulesError> {
        ns.run_on_thread(|| self.verify_with(&Netfilter::system()))?
    }

    /// [`RuleSet::verify`] in the namespace the programs of `nf` run in.
    pub fn verify_with<E: Executor>(&self, nf: &Netfilter<E>) -> Result<Drift, RulesError> {
        self.validate()?;
        let mut diffs = Vec::new();
        for &family in self.families() {
            let current = nf.save(family)?;
            diffs.extend(self.drift(family, &current));
            if let Some(routing) = self.routing {
                diffs.extend(self.routing_drift(nf, family, routing)?);
            }
        }
        Ok(Drift::new(diffs))
    }

    /// Verifies, and re-applies if anything drifted. Returns the drift that was
    /// found (and is now repaired); clean if nothing needed doing.
    pub fn repair(&self, ns: &NetNs) -> Result<Drift, RulesError> {
        ns.run_on_thread(|| self.repair_with(&Netfilter::system()))?
    }

    /// [`RuleSet::repair`] in the namespace the programs of `nf` run in.
    pub fn repair_with<E: Executor>(&self, nf: &Netfilter<E>) -> Result<Drift, RulesError> {
        let drift = self.verify_with(nf)?;
        if !drift.is_clean() {
            tracing::info!(%drift, "repairing redirection rules");
            self.apply_with(nf)?;
        }
        Ok(drift)
    }

    /// Removes everything this rule set installs from `ns`: jumps into our chains,
    /// the chains, in every managed table and both families, and the fwmark rule
    /// and local route. Removing what is not there is not an error.
    pub fn remove(&self, ns: &NetNs) -> Result<(), RulesError> {
        ns.run_on_thread(|| self.remove_with(&Netfilter::system()))?
    }

    /// [`RuleSet::remove`] in the namespace the programs of `nf` run in.
    pub fn remove_with<E: Executor>(&self, nf: &Netfilter<E>) -> Result<(), RulesError> {
        self.validate()?;
        for family in Family::ALL {
            // IPv6 may be absent when the rule set never used it.
            let tolerate = family == Family::V6 && !self.ipv6;
            let result = nf.save(family).and_then(|current| {
                match self.converge_script(family, &current, false) {
                    Some(script) => nf.restore(family, &script),
                    None => Ok(()),
                }
            });
            match result {
                Err(e) if tolerate => {
                    tracing::debug!(error = %e, "ignoring IPv6 rule removal failure");
                }
                other => other?,
            }
        }
        if let Some(routing) = self.routing {
            for family in Family::ALL {
                let tolerate = family == Family::V6 && !self.ipv6;
                match self.remove_routing(nf, family, routing) {
                    Err(e) if tolerate => {
                        tracing::debug!(error = %e, "ignoring IPv6 routing removal failure");
                    }
                    other => other?,
                }
            }
        }
        tracing::debug!(chains = ?self.chains(), "redirection rules removed");
        Ok(())
    }

    fn rule_args(&self, op: &'static str, family: Family, r: PolicyRouting) -> Vec<String> {
        [
            family.ip_flag().to_owned(),
            "rule".to_owned(),
            op.to_owned(),
            "fwmark".to_owned(),
            self.connmark.to_string(),
            "pref".to_owned(),
            r.priority.to_string(),
            "lookup".to_owned(),
            r.table.to_string(),
        ]
        .into()
    }

    fn route_args(op: &'static str, family: Family, r: PolicyRouting) -> Vec<String> {
        let all = match family {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        };
        [
            family.ip_flag(),
            "route",
            op,
            "local",
            all,
            "dev",
            "lo",
            "table",
            &r.table.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    fn add_routing<E: Executor>(
        &self,
        nf: &Netfilter<E>,
        family: Family,
        r: PolicyRouting,
    ) -> Result<(), RulesError> {
        let rule = Invocation::new(&nf.tools().ip, self.rule_args("add", family, r));
        match nf.run_ok(&rule) {
            Err(e) if stderr_says(&e, &["File exists"]) => {}
            other => {
                other?;
            }
        }
        let route = Invocation::new(&nf.tools().ip, Self::route_args("replace", family, r));
        nf.run_ok(&route).map(drop)
    }

    fn remove_routing<E: Executor>(
        &self,
        nf: &Netfilter<E>,
        family: Family,
        r: PolicyRouting,
    ) -> Result<(), RulesError> {
        // Delete every copy (a rule may have been added more than once by hand).
        for _ in 0..16 {
            let rule = Invocation::new(&nf.tools().ip, self.rule_args("del", family, r));
            match nf.run_ok(&rule) {
                Ok(_) => continue,
                Err(e) if stderr_says(&e, &NOT_FOUND) => break,
                Err(e) => return Err(e),
            }
        }
        let route = Invocation::new(&nf.tools().ip, Self::route_args("del", family, r));
        match nf.run_ok(&route) {
            Err(e) if stderr_says(&e, &NOT_FOUND) => Ok(()),
            other => other.map(drop),
        }
    }

    fn routing_drift<E: Executor>(
        &self,
        nf: &Netfilter<E>,
        family: Family,
        r: PolicyRouting,
    ) -> Result<Vec<Difference>, RulesError> {
        let mut diffs = Vec::new();
        let rules = nf.run_ok(&Invocation::new(
            &nf.tools().ip,
            [family.ip_flag(), "rule", "show"],
        ))?;
        if !has_fwmark_rule(&rules.stdout, &self.connmark.to_string(), r) {
            diffs.push(Difference::MissingRoutingRule { family });
        }
        let table = r.table.to_string();
        let routes = nf.ip(&[family.ip_flag(), "route", "show", "table", &table])?;
        // Older kernels report a table without routes as an error.
        if !routes.success() || !has_local_default(&routes.stdout) {
            diffs.push(Difference::MissingLocalRoute { family });
        }
        Ok(diffs)
    }
}

/// Looks for `<prio>: from all fwmark <mark> lookup <table>` in `ip rule show`.
fn has_fwmark_rule(text: &str, fwmark: &str, r: PolicyRouting) -> bool {
    let prio = format!("{}:", r.priority);
    let table = r.table.to_string();
    text.lines().any(|line| {
        let t: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &str| t.windows(2).find(|w| w[0] == key).map(|w| w[1]);
        t.first() == Some(&prio.as_str())
            && after("fwmark") == Some(fwmark)
            && after("lookup") == Some(table.as_str())
    })
}

/// Looks for `local default dev lo …` in `ip route show table N`.
fn has_local_default(text: &str) -> bool {
    text.lines().any(|line| {
        let t: Vec<&str> = line.split_whitespace().collect();
        t.first() == Some(&"local")
            && matches!(t.get(1), Some(&("default" | "0.0.0.0/0" | "::/0")))
            && t.windows(2).any(|w| w[0] == "dev" && w[1] == "lo")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::io;

    /// Replays scripted outputs and records every invocation.
    #[derive(Default)]
    struct Scripted {
        replies: RefCell<VecDeque<io::Result<CommandOutput>>>,
        seen: RefCell<Vec<Invocation>>,
    }

    impl Scripted {
        fn reply(self, status: i32, stdout: &str, stderr: &str) -> Self {
            self.replies.borrow_mut().push_back(Ok(CommandOutput::new(
                Some(status),
                stdout,
                stderr,
            )));
            self
        }
        fn missing(self) -> Self {
            self.replies
                .borrow_mut()
                .push_back(Err(io::Error::from(io::ErrorKind::NotFound)));
            self
        }
        fn commands(&self) -> Vec<String> {
            self.seen.borrow().iter().map(ToString::to_string).collect()
        }
    }

    impl Executor for Scripted {
        fn execute(&self, inv: &Invocation) -> io::Result<CommandOutput> {
            self.seen.borrow_mut().push(inv.clone());
            self.replies
                .borrow_mut()
                .pop_front()
                .unwrap_or_else(|| panic!("unexpected command: {inv}"))
        }
    }

    fn nf(s: &Scripted) -> Netfilter<&Scripted> {
        Netfilter::new(s, Tools::default())
    }

    #[test]
    fn apply_restores_rendered_rules_and_tolerates_existing_ip_rule() {
        let mut rules = RuleSet::cilium();
        rules.ipv6 = false;
        let s = Scripted::default()
            .reply(0, "", "") // iptables-save
            .reply(0, "", "") // iptables-restore
            .reply(2, "", "RTNETLINK answers: File exists\n") // ip rule add
            .reply(0, "", ""); // ip route replace
        rules.apply_with(&nf(&s)).unwrap();
        assert_eq!(
            s.commands(),
            [
                "iptables-save",
                "iptables-restore --noflush -w 5",
                "ip -4 rule add fwmark 0x111/0xfff pref 32764 lookup 100",
                "ip -4 route replace local 0.0.0.0/0 dev lo table 100",
            ]
        );
        let restored = s.seen.borrow()[1].stdin.clone().unwrap();
        assert_eq!(restored, rules.render(Family::V4).unwrap());
    }

    #[test]
    fn apply_reports_failures_with_stderr() {
        let mut rules = RuleSet::istio();
        rules.ipv6 = false;
        let s =
            Scripted::default()
                .reply(0, "", "")
                .reply(1, "", "iptables-restore: line 3 failed\n");
        let err = rules.apply_with(&nf(&s)).unwrap_err();
        assert!(err.to_string().contains("line 3 failed"), "{err}");
        assert!(matches!(
            err,
            RulesError::CommandFailed {
                status: Some(1),
                ..
            }
        ));
    }

    #[test]
    fn missing_iptables_is_a_clear_error() {
        let s = Scripted::default().missing();
        let err = RuleSet::istio().apply_with(&nf(&s)).unwrap_err();
        assert!(matches!(&err, RulesError::ToolMissing { program } if program == "iptables-save"));
        assert!(err.to_string().contains("install the iptables package"));
    }

    #[test]
    fn unparsable_save_output_is_reported() {
        let s = Scripted::default().reply(0, "*nat\n-A X \"unterminated\nCOMMIT\n", "");
        let err = RuleSet::istio().verify_with(&nf(&s)).unwrap_err();
        assert!(matches!(err, RulesError::Parse { .. }), "{err}");
    }

    #[test]
    fn verify_reads_rules_and_routing() {
        let mut rules = RuleSet::istio();
        rules.ipv6 = false;
        let installed = rules.render(Family::V4).unwrap();
        let s = Scripted::default()
            .reply(0, &installed, "")
            .reply(
                0,
                "0:\tfrom all lookup local\n32764:\tfrom all fwmark 0x111/0xfff lookup 100\n",
                "",
            )
            .reply(0, "local default dev lo scope host \n", "");
        assert!(rules.verify_with(&nf(&s)).unwrap().is_clean());

        let s = Scripted::default()
            .reply(0, &installed, "")
            .reply(0, "0:\tfrom all lookup local\n", "")
            .reply(2, "", "Error: ipv4: FIB table does not exist.\n");
        let drift = rules.verify_with(&nf(&s)).unwrap();
        assert_eq!(
            drift.differences(),
            [
                Difference::MissingRoutingRule { family: Family::V4 },
                Difference::MissingLocalRoute { family: Family::V4 }
            ]
        );
    }

    #[test]
    fn repair_does_nothing_when_clean_and_reapplies_on_drift() {
        let mut rules = RuleSet::cilium();
        rules.ipv6 = false;
        rules.routing = None;
        let installed = rules.render(Family::V4).unwrap();
        let s = Scripted::default().reply(0, &installed, "");
        assert!(rules.repair_with(&nf(&s)).unwrap().is_clean());
        assert_eq!(s.commands().len(), 1);

        let s = Scripted::default()
            .reply(0, "", "") // verify: save
            .reply(0, "", "") // apply: save
            .reply(0, "", ""); // apply: restore
        let drift = rules.repair_with(&nf(&s)).unwrap();
        assert!(!drift.is_clean());
        assert_eq!(
            s.commands().last().unwrap(),
            "iptables-restore --noflush -w 5"
        );
    }

    #[test]
    fn remove_cleans_both_families_and_routing_tolerating_absence() {
        let rules = RuleSet::istio();
        let v4 = rules.render(Family::V4).unwrap();
        let s = Scripted::default()
            .reply(0, &v4, "") // iptables-save
            .reply(0, "", "") // iptables-restore (removal)
            .reply(0, "", "") // ip6tables-save: nothing there
            .reply(0, "", "") // ip -4 rule del
            .reply(2, "", "RTNETLINK answers: No such file or directory\n")
            .reply(2, "", "RTNETLINK answers: No such process\n") // route del
            .reply(2, "", "RTNETLINK answers: No such file or directory\n") // ip -6 rule del
            .reply(0, "", ""); // ip -6 route del
        rules.remove_with(&nf(&s)).unwrap();
        let cmds = s.commands();
        assert_eq!(cmds[2], "ip6tables-save");
        assert_eq!(
            cmds[3],
            "ip -4 rule del fwmark 0x111/0xfff pref 32764 lookup 100"
        );
        assert_eq!(cmds[7], "ip -6 route del local ::/0 dev lo table 100");
        let script = s.seen.borrow()[1].stdin.clone().unwrap();
        assert!(script.contains("-D PREROUTING -j ISTIO_PRERT\n"));
        assert!(script.contains("-X ISTIO_OUTPUT\n"));
    }

    #[test]
    fn routing_text_parsers() {
        let r = PolicyRouting::default();
        assert!(has_fwmark_rule(
            "32764:\tfrom all fwmark 0x111/0xfff lookup 100 \n",
            "0x111/0xfff",
            r
        ));
        assert!(!has_fwmark_rule(
            "32765:\tfrom all fwmark 0x111/0xfff lookup 100\n",
            "0x111/0xfff",
            r
        ));
        assert!(has_local_default(
            "local default dev lo metric 1024 pref medium\n"
        ));
        assert!(!has_local_default("unicast default dev lo\n"));
    }
}
