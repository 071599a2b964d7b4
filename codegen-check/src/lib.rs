//! Test support (unpublished): checks that checked-in generated code is fresh.
//!
//! A crate that checks in code generated from `.proto` files describes how it generates
//! it with [`Protos`] and calls [`assert_protos_fresh`] from a test:
//!
//! ```no_run
//! # use std::path::Path;
//! let mut protos = codegen_check::Protos::new(&["ca.proto"]);
//! protos.grpc = true;
//! codegen_check::assert_protos_fresh("svid", Path::new(env!("CARGO_MANIFEST_DIR")), &protos);
//! ```
//!
//! Code made some other way is checked with [`assert_fresh`] and a closure that writes it.
#![forbid(unsafe_code)]
// A failed check is a test failure: panicking is this crate's job.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// Runs `generate` into a temporary directory and compares every `.rs` file it writes
/// with `<crate_dir>/src/generated/`; also flags checked-in files that are no longer
/// generated.
///
/// On a difference it panics with the names of the stale files. When the environment
/// variable `CI` is unset it first rewrites the checked-in files, so a rerun passes and
/// the change can be reviewed and committed.
pub fn assert_fresh(crate_name: &str, crate_dir: &Path, generate: impl FnOnce(&Path)) {
    let tmp = tempfile::tempdir().expect("tempdir");
    generate(tmp.path());
    let in_ci = std::env::var_os("CI").is_some();

    let checked_in = crate_dir.join("src/generated");
    let fresh_files = rust_files(tmp.path());
    assert!(!fresh_files.is_empty(), "code generation produced no files");
    let mut stale = Vec::new();
    for fresh in &fresh_files {
        let name = fresh.file_name().expect("file name").to_owned();
        let target = checked_in.join(&name);
        let new = std::fs::read(fresh).expect("read fresh file");
        let old = std::fs::read(&target).unwrap_or_default();
        if new != old {
            stale.push(name.to_string_lossy().into_owned());
            if !in_ci {
                std::fs::create_dir_all(&checked_in).expect("create src/generated");
                std::fs::write(&target, &new).expect("overwrite checked-in file");
            }
        }
    }
    let expected: Vec<_> = fresh_files
        .iter()
        .map(|p| p.file_name().expect("file name").to_owned())
        .collect();
    for existing in rust_files(&checked_in) {
        let name = existing.file_name().expect("file name").to_owned();
        if !expected.contains(&name) {
            stale.push(format!("{} (no longer generated)", name.to_string_lossy()));
        }
    }

    assert!(
        stale.is_empty(),
        "generated code in {crate_name}/src/generated is out of date: {stale:?}. {}",
        if in_ci {
            format!(
                "Run `cargo test -p {crate_name} --test codegen_fresh` locally and commit the result."
            )
        } else {
            "The files were rewritten; review and commit them, then rerun the test.".to_owned()
        }
    );
}

/// How a crate generates its checked-in code from the `.proto` files in its `proto/`
/// folder, with protox (no protoc) and tonic-prost-build. Comments are never generated,
/// so the output does not depend on source locations.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Protos {
    /// The files to compile, relative to `<crate_dir>/proto` (which is also the include
    /// path).
    pub files: Vec<String>,
    /// Also generate gRPC client and server code, without tonic's transport. Default:
    /// `false`.
    pub grpc: bool,
    /// Messages implement `prost::Name`, with type URLs under `type.googleapis.com`.
    /// Default: `false`.
    pub type_names: bool,
    /// Every `bytes` field is a `bytes::Bytes` instead of a `Vec<u8>`. Default: `false`.
    pub bytes: bool,
}

impl Protos {
    /// Messages only, from `files` (relative to the crate's `proto/` folder); the other
    /// fields take their defaults.
    pub fn new(files: &[&str]) -> Self {
        Self {
            files: files.iter().map(|f| (*f).to_owned()).collect(),
            grpc: false,
            type_names: false,
            bytes: false,
        }
    }

    /// Compiles `<proto_dir>/<files>` and writes the generated Rust into `out_dir`.
    pub fn generate(&self, proto_dir: &Path, out_dir: &Path) {
        let mut fds =
            protox::compile(&self.files, [proto_dir]).expect("the vendored protos compile");
        // Source locations only feed comments, which are disabled: drop them so that the
        // output cannot depend on them.
        for file in &mut fds.file {
            file.source_code_info = None;
        }
        let mut config = tonic_prost_build::Config::new();
        if self.type_names {
            config.enable_type_names();
            config.type_name_domain(["."], "type.googleapis.com");
        }
        if self.bytes {
            config.bytes(["."]);
        }
        config.disable_comments(["."]);
        tonic_prost_build::configure()
            .build_client(self.grpc)
            .build_server(self.grpc)
            .build_transport(false)
            .disable_comments(["."])
            .out_dir(out_dir)
            .compile_fds_with_config(fds, config)
            .expect("code generation succeeds");
    }
}

/// [`assert_fresh`] for code generated from `<crate_dir>/proto` as `protos` describes.
pub fn assert_protos_fresh(crate_name: &str, crate_dir: &Path, protos: &Protos) {
    let proto_dir = crate_dir.join("proto");
    assert_fresh(crate_name, crate_dir, |out| {
        protos.generate(&proto_dir, out)
    });
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    files.sort();
    files
}
