//! Regenerates the checked-in protobuf code from `proto/` and compares it byte for byte
//! with `src/generated/`.
//!
//! On a difference the test fails. When the environment variable `CI` is unset, it first
//! overwrites the checked-in files so that a local rerun passes and the change can be
//! reviewed and committed.

// Test helpers may panic: a failure here is a test failure.
#![allow(clippy::expect_used)]

use std::path::Path;

fn generate(out_dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let include = root.join("proto");
    let mut fds = protox::compile(["zds.proto"], [&include]).expect("the vendored proto compiles");
    // Source locations only feed comments, which are disabled; drop them so the output
    // cannot depend on them.
    for file in &mut fds.file {
        file.source_code_info = None;
    }

    let mut config = tonic_prost_build::Config::new();
    config.disable_comments(["."]);

    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .build_transport(false)
        .disable_comments(["."])
        .out_dir(out_dir)
        .compile_fds_with_config(fds, config)
        .expect("code generation succeeds");
}

#[test]
fn generated_code_is_fresh() {
    codegen_check::assert_fresh("zds", Path::new(env!("CARGO_MANIFEST_DIR")), generate);
}
