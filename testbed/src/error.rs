//! Test-bed errors.

use std::io;

/// An error while building or using a test bed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process is not running as root.
    #[error(
        "not root (effective uid {euid}); network namespaces, veth pairs and iptables need root"
    )]
    NotRoot {
        /// The effective user id.
        euid: u32,
    },
    /// A required program is not installed.
    #[error("`{tool}` not found in PATH; install {package}")]
    ToolMissing {
        /// The program.
        tool: String,
        /// The package that provides it.
        package: &'static str,
    },
    /// A command failed.
    #[error("`{command}` failed (exit {}): {stderr}", status.map_or_else(|| "by signal".to_owned(), |c| c.to_string()))]
    Command {
        /// The command line.
        command: String,
        /// The exit code, `None` if killed by a signal.
        status: Option<i32>,
        /// Its standard error.
        stderr: String,
    },
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: io::Error,
    },
    /// A namespace operation failed.
    #[error(transparent)]
    Netns(#[from] meshwire_netns::Error),
    /// A namespace cannot be recreated while other clones of it exist.
    #[error("namespace {name} is still shared by clones; drop them before recreating it")]
    Shared {
        /// The namespace's name.
        name: String,
    },
    /// A pod was handed to a test bed that does not have its node.
    #[error("pod {0} belongs to a node this test bed does not have")]
    ForeignPod(String),
    /// The API server answered a request with an unexpected status.
    #[error("{method} {path}: HTTP {status}: {body}")]
    Api {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
        /// The status code.
        status: u16,
        /// The response body.
        body: String,
    },
    /// The topology is too large for the address plan.
    #[error("too many {0} (at most 250)")]
    Limit(&'static str),
}
