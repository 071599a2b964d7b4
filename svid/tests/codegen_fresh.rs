//! Regenerates the checked-in protobuf code from `proto/` (protox + tonic-prost-build, no
//! protoc) and compares it byte for byte with `src/generated/`.
//!
//! On a difference the test fails. When the environment variable `CI` is unset it first
//! overwrites the checked-in files, so a local rerun passes and the change can be reviewed
//! and committed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn generate(out_dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let include = root.join("proto");
    let mut fds = protox::compile(["ca.proto"], [&include]).expect("the vendored proto compiles");
    // Source locations only feed comments, which are disabled: drop them so the output
    // cannot depend on them.
    for file in &mut fds.file {
        file.source_code_info = None;
    }
    let mut config = tonic_prost_build::Config::new();
    config.disable_comments(["."]);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .disable_comments(["."])
        .out_dir(out_dir)
        .compile_fds_with_config(fds, config)
        .expect("code generation succeeds");
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read generated dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    files.sort();
    files
}

#[test]
fn generated_code_is_fresh() {
    let tmp = tempfile::tempdir().expect("tempdir");
    generate(tmp.path());

    let checked_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/generated");
    let in_ci = std::env::var_os("CI").is_some();
    let mut stale = Vec::new();
    let fresh_files = rust_files(tmp.path());
    assert!(!fresh_files.is_empty(), "code generation produced no files");
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
        "generated code in svid/src/generated is out of date: {stale:?}. {}",
        if in_ci {
            "Run `cargo test -p svid --test codegen_fresh` locally and commit the result."
        } else {
            "The files were rewritten; review and commit them, then rerun."
        }
    );
}
