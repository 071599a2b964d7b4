//! Regenerates the checked-in protobuf code from `proto/` and compares it byte for byte
//! with `src/generated/`.
//!
//! On a difference the test fails. When the environment variable `CI` is unset, it first
//! overwrites the checked-in files so that a local rerun passes and the change can be
//! reviewed and committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

const PROTOS: &[&str] = &[
    "google/rpc/status.proto",
    "workload.proto",
    "authorization.proto",
    "xds.proto",
];

fn generate(out_dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let include = root.join("proto");
    let mut fds = protox::compile(PROTOS, [&include]).expect("the vendored protos compile");
    // Source locations only feed comments, which are disabled; drop them so that the
    // output cannot depend on them.
    for file in &mut fds.file {
        file.source_code_info = None;
    }

    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");
    config.bytes(["."]);
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
    let mut stale = Vec::new();
    for fresh in rust_files(tmp.path()) {
        let name = fresh.file_name().expect("file name").to_owned();
        let target = checked_in.join(&name);
        let new = std::fs::read(&fresh).expect("read fresh file");
        let old = std::fs::read(&target).unwrap_or_default();
        if new != old {
            stale.push(name.to_string_lossy().into_owned());
            if std::env::var_os("CI").is_none() {
                std::fs::create_dir_all(&checked_in).expect("create src/generated");
                std::fs::write(&target, &new).expect("overwrite checked-in file");
            }
        }
    }
    let expected: Vec<_> = rust_files(tmp.path())
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
        "generated code in src/generated is out of date: {stale:?}. {}",
        if std::env::var_os("CI").is_some() {
            "Run `cargo test -p xds-workload --test codegen_fresh` locally and commit the result."
        } else {
            "The files were rewritten; review and commit them, then rerun the test."
        }
    );
}
