//! Test support (unpublished): checks that checked-in generated code is fresh.
//!
//! ```no_run
//! # use std::path::Path;
//! codegen_check::assert_fresh("zds", Path::new(env!("CARGO_MANIFEST_DIR")), |out| {
//!     // generate the code into `out` (protox + tonic-prost-build)
//! #   let _ = out;
//! });
//! ```
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
