//! Running `iptables-*` and `ip`, behind a trait so everything else is testable
//! without root.

use std::fmt;
use std::io::{self, Write};
use std::process::{Command, Stdio};

use super::RulesError;
use super::model::Family;
use super::save::SaveDump;

/// One program run: program name, arguments and optional standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Invocation {
    /// The program (looked up in `PATH`).
    pub program: String,
    /// The arguments.
    pub args: Vec<String>,
    /// Text written to the program's standard input, if any.
    pub stdin: Option<String>,
}

impl Invocation {
    /// A run of `program` with `args` and no input.
    pub fn new<I, S>(program: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            program: program.to_owned(),
            args: args.into_iter().map(Into::into).collect(),
            stdin: None,
        }
    }

    /// Sets the standard input.
    pub fn with_stdin(mut self, stdin: String) -> Self {
        self.stdin = Some(stdin);
        self
    }
}

impl fmt::Display for Invocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// The result of a finished program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandOutput {
    /// The exit code; `None` when the program was killed by a signal.
    pub status: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CommandOutput {
    /// An output with the given exit code and streams.
    pub fn new(status: Option<i32>, stdout: impl Into<String>, stderr: impl Into<String>) -> Self {
        Self {
            status,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    /// Whether the program exited with code 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Runs programs. [`SystemExecutor`] runs them for real; tests substitute a fake.
///
/// Programs run in the network namespace of the **calling thread** (a child process
/// inherits the namespace of the thread that starts it), which is how
/// [`RuleSet::apply`](crate::rules::RuleSet::apply) targets a pod.
pub trait Executor {
    /// Runs `invocation` to completion. An `Err` of kind
    /// [`io::ErrorKind::NotFound`] means the program does not exist.
    fn execute(&self, invocation: &Invocation) -> io::Result<CommandOutput>;
}

impl<E: Executor + ?Sized> Executor for &E {
    fn execute(&self, invocation: &Invocation) -> io::Result<CommandOutput> {
        (**self).execute(invocation)
    }
}

/// Runs programs with [`std::process::Command`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemExecutor;

impl Executor for SystemExecutor {
    fn execute(&self, invocation: &Invocation) -> io::Result<CommandOutput> {
        let mut cmd = Command::new(&invocation.program);
        cmd.args(&invocation.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if invocation.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        // Feed standard input from a helper thread while this one collects the output,
        // so that neither side can block the other on a full pipe; and always reap the
        // child, also when writing fails.
        let (written, out) = std::thread::scope(|scope| {
            let writer = match (&invocation.stdin, stdin) {
                (Some(input), Some(mut pipe)) => {
                    // The pipe is closed when the closure returns: the program sees EOF.
                    Some(scope.spawn(move || pipe.write_all(input.as_bytes())))
                }
                _ => None,
            };
            let out = child.wait_with_output();
            let written = writer.map_or(Ok(()), |w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("stdin writer panicked")))
            });
            (written, out)
        });
        let out = out?;
        match written {
            // The program exited without reading all of its input; its status and
            // standard error say why.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            other => other?,
        }
        Ok(CommandOutput {
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Which kernel interface the iptables tools drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// `iptables-nft`: the nf_tables kernel API.
    Nft,
    /// `iptables-legacy`: the x_tables kernel API.
    Legacy,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nft => "nf_tables",
            Self::Legacy => "legacy",
        })
    }
}

impl Backend {
    /// Reads the backend from `iptables --version` output, for example
    /// `iptables v1.8.9 (nf_tables)`. Versions before 1.8 print no backend and are
    /// legacy.
    pub fn from_version_output(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.contains("iptables"))?;
        if line.contains("(nf_tables)") {
            Some(Self::Nft)
        } else if line.contains("(legacy)") || !line.contains('(') {
            Some(Self::Legacy)
        } else {
            None
        }
    }
}

/// The names of the programs used.
///
/// Defaults: `iptables`, `iptables-save`, `iptables-restore`, `ip6tables-save`,
/// `ip6tables-restore`, `ip` — the host's default iptables backend.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tools {
    /// `iptables`, used to detect the backend.
    pub iptables: String,
    /// `iptables-save`.
    pub iptables_save: String,
    /// `iptables-restore`.
    pub iptables_restore: String,
    /// `ip6tables-save`.
    pub ip6tables_save: String,
    /// `ip6tables-restore`.
    pub ip6tables_restore: String,
    /// `ip` from iproute2.
    pub ip: String,
}

impl Default for Tools {
    fn default() -> Self {
        Self {
            iptables: "iptables".to_owned(),
            iptables_save: "iptables-save".to_owned(),
            iptables_restore: "iptables-restore".to_owned(),
            ip6tables_save: "ip6tables-save".to_owned(),
            ip6tables_restore: "ip6tables-restore".to_owned(),
            ip: "ip".to_owned(),
        }
    }
}

impl Tools {
    /// The explicitly versioned programs of one backend (`iptables-nft-save`,
    /// `iptables-legacy-restore`, …).
    pub fn for_backend(backend: Backend) -> Self {
        let b = match backend {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        };
        Self {
            iptables: format!("iptables-{b}"),
            iptables_save: format!("iptables-{b}-save"),
            iptables_restore: format!("iptables-{b}-restore"),
            ip6tables_save: format!("ip6tables-{b}-save"),
            ip6tables_restore: format!("ip6tables-{b}-restore"),
            ip: "ip".to_owned(),
        }
    }

    fn save(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.iptables_save,
            Family::V6 => &self.ip6tables_save,
        }
    }

    fn restore(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.iptables_restore,
            Family::V6 => &self.ip6tables_restore,
        }
    }
}

/// The iptables and iproute2 programs of one namespace, driven through an
/// [`Executor`].
#[derive(Debug, Clone, Default)]
pub struct Netfilter<E = SystemExecutor> {
    exec: E,
    tools: Tools,
}

impl Netfilter<SystemExecutor> {
    /// The host's default programs, run for real in the calling thread's namespace.
    pub fn system() -> Self {
        Self::default()
    }
}

impl<E: Executor> Netfilter<E> {
    /// Programs named by `tools`, run through `exec`.
    pub fn new(exec: E, tools: Tools) -> Self {
        Self { exec, tools }
    }

    /// The program names.
    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// The executor.
    pub fn executor(&self) -> &E {
        &self.exec
    }

    /// Runs a program, mapping a missing binary to [`RulesError::ToolMissing`].
    pub(crate) fn run(&self, inv: &Invocation) -> Result<CommandOutput, RulesError> {
        tracing::trace!(command = %inv, "running");
        self.exec.execute(inv).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                RulesError::ToolMissing {
                    program: inv.program.clone(),
                }
            } else {
                RulesError::Spawn {
                    program: inv.program.clone(),
                    source,
                }
            }
        })
    }

    /// Runs a program and fails unless it exits with 0.
    pub(crate) fn run_ok(&self, inv: &Invocation) -> Result<CommandOutput, RulesError> {
        let out = self.run(inv)?;
        if out.success() {
            Ok(out)
        } else {
            Err(RulesError::CommandFailed {
                command: inv.to_string(),
                status: out.status,
                stderr: out.stderr.trim().to_owned(),
            })
        }
    }

    /// Detects the backend of the configured `iptables` program.
    pub fn detect_backend(&self) -> Result<Backend, RulesError> {
        let inv = Invocation::new(&self.tools.iptables, ["--version"]);
        let out = self.run_ok(&inv)?;
        Backend::from_version_output(&out.stdout)
            .or_else(|| Backend::from_version_output(&out.stderr))
            .ok_or_else(|| RulesError::UnknownBackend {
                version: out.stdout.trim().to_owned(),
            })
    }

    /// Reads and parses the current rules of `family` (`iptables-save`).
    pub fn save(&self, family: Family) -> Result<SaveDump, RulesError> {
        let inv = Invocation::new(self.tools.save(family), Vec::<String>::new());
        let out = self.run_ok(&inv)?;
        SaveDump::parse(&out.stdout).map_err(|source| RulesError::Parse {
            program: inv.program.clone(),
            source,
        })
    }

    /// Feeds `input` to `iptables-restore --noflush -w 5` for `family`.
    pub fn restore(&self, family: Family, input: &str) -> Result<(), RulesError> {
        let inv = Invocation::new(self.tools.restore(family), ["--noflush", "-w", "5"])
            .with_stdin(input.to_owned());
        self.run_ok(&inv).map(drop)
    }

    /// Runs `ip <args>`.
    pub(crate) fn ip(&self, args: &[&str]) -> Result<CommandOutput, RulesError> {
        self.run(&Invocation::new(&self.tools.ip, args.iter().copied()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_from_version_text() {
        assert_eq!(
            Backend::from_version_output("iptables v1.8.9 (nf_tables)\n"),
            Some(Backend::Nft)
        );
        assert_eq!(
            Backend::from_version_output("iptables v1.8.7 (legacy)\n"),
            Some(Backend::Legacy)
        );
        assert_eq!(
            Backend::from_version_output("iptables v1.6.1\n"),
            Some(Backend::Legacy)
        );
        assert_eq!(Backend::from_version_output("iptables v2 (weird)\n"), None);
        assert_eq!(Backend::from_version_output(""), None);
    }

    #[test]
    fn missing_program_is_reported_by_name() {
        let nf = Netfilter::new(
            SystemExecutor,
            Tools {
                // An absolute path: "not found" whatever PATH holds or permits.
                iptables: "/nonexistent/meshwire-no-such-iptables".to_owned(),
                ..Tools::default()
            },
        );
        let err = nf.detect_backend().unwrap_err();
        assert!(
            matches!(&err, RulesError::ToolMissing { program } if program == "/nonexistent/meshwire-no-such-iptables"),
            "{err}"
        );
        assert!(err.to_string().contains("not found"));
    }

    #[test]
    fn system_executor_passes_stdin_and_collects_output() {
        let out = SystemExecutor
            .execute(&Invocation::new("cat", Vec::<String>::new()).with_stdin("hello".into()))
            .unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, "hello");
        let out = SystemExecutor
            .execute(&Invocation::new("sh", ["-c", "echo oops >&2; exit 3"]))
            .unwrap();
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stderr, "oops\n");
    }

    /// Runs `inv` on a helper thread and fails instead of hanging.
    fn execute_within(inv: Invocation) -> io::Result<CommandOutput> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(SystemExecutor.execute(&inv));
        });
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("the executor hung")
    }

    #[test]
    fn system_executor_survives_programs_that_ignore_or_outpace_stdin() {
        let big = "x".repeat(1 << 20);
        // Exits without reading its input: the status and stderr come back, not EPIPE.
        let out = execute_within(
            Invocation::new("sh", ["-c", "echo refused >&2; exit 4"]).with_stdin(big.clone()),
        )
        .unwrap();
        assert_eq!(out.status, Some(4));
        assert_eq!(out.stderr, "refused\n");
        // Writes more than a pipe holds before reading its input: no deadlock.
        let out = execute_within(
            Invocation::new("sh", ["-c", "head -c 300000 /dev/zero; wc -c"]).with_stdin(big),
        )
        .unwrap();
        assert!(out.success());
        assert_eq!(out.stdout.len(), 300_000 + "1048576\n".len());
        assert!(
            out.stdout.ends_with("1048576\n"),
            "{:?}",
            &out.stdout[300_000..]
        );
    }

    #[test]
    fn versioned_tool_names() {
        let t = Tools::for_backend(Backend::Legacy);
        assert_eq!(t.ip6tables_restore, "ip6tables-legacy-restore");
        assert_eq!(
            Tools::for_backend(Backend::Nft).iptables_save,
            "iptables-nft-save"
        );
    }
}
