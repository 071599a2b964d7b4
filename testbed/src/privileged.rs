//! The gate every privileged test passes through.

use std::process::{Command, Stdio};

use crate::error::Error;

/// Setting this environment variable to `1` skips privileged tests explicitly: they
/// print that they are skipped and return. Without it, a privileged test that
/// cannot run fails.
pub const SKIP_ENV: &str = "MESHWIRE_SKIP_PRIVILEGED";

/// Proof that privileged tests can run here (root, `ip` and the iptables tools
/// present). Obtained from [`require_privileged`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Privileged {}

/// The tools privileged tests use, with the package that provides each.
const TOOLS: [(&str, &str, &str); 7] = [
    ("ip", "-V", "iproute2"),
    ("iptables", "--version", "iptables"),
    ("iptables-save", "--version", "iptables"),
    ("iptables-restore", "--version", "iptables"),
    ("ip6tables", "--version", "iptables"),
    ("ip6tables-save", "--version", "iptables"),
    ("ip6tables-restore", "--version", "iptables"),
];

/// Checks that this process can build namespaces and change iptables rules: it runs
/// as root and `ip` and the IPv4 and IPv6 iptables tools (`iptables`, `iptables-save`,
/// `iptables-restore`, `ip6tables`, `ip6tables-save`, `ip6tables-restore`) can be
/// started.
pub fn check_privileges() -> Result<(), Error> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return Err(Error::NotRoot {
            euid: euid.as_raw(),
        });
    }
    for (tool, arg, package) in TOOLS {
        let status = Command::new(tool)
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ToolMissing {
                    tool: tool.to_owned(),
                    package,
                });
            }
            Err(source) => {
                return Err(Error::Io {
                    context: format!("cannot run `{tool}`"),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The first line of every privileged test:
///
/// ```no_run
/// # fn the_test() {
/// let Some(_privileged) = testbed::require_privileged("the_test") else {
///     return;
/// };
/// // … build a testbed::Testbed and test …
/// # }
/// ```
///
/// * With `MESHWIRE_SKIP_PRIVILEGED=1` in the environment it prints
///   `skipped: <test> (MESHWIRE_SKIP_PRIVILEGED=1)` and returns `None`.
/// * Otherwise, if [`check_privileges`] fails, it **panics** with the reason and
///   how to fix or skip: a privileged test never passes silently.
/// * Otherwise it returns `Some`.
pub fn require_privileged(test: &str) -> Option<Privileged> {
    if std::env::var_os(SKIP_ENV).is_some_and(|v| v == "1") {
        println!("skipped: {test} ({SKIP_ENV}=1)");
        return None;
    }
    match check_privileges() {
        Ok(()) => Some(Privileged {}),
        Err(e) => panic!(
            "privileged test `{test}` cannot run: {e}. Run it as root with iproute2 and \
             iptables installed, or set {SKIP_ENV}=1 to skip privileged tests explicitly."
        ),
    }
}
