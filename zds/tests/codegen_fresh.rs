//! Regenerates the checked-in protobuf code from `proto/` (protox + tonic-prost-build, no
//! protoc) and compares it byte for byte with `src/generated/`: messages only.
//!
//! On a difference the test fails. When the environment variable `CI` is unset it first
//! overwrites the checked-in files, so a local rerun passes and the change can be reviewed
//! and committed.

use std::path::Path;

#[test]
fn generated_code_is_fresh() {
    let protos = codegen_check::Protos::new(&["zds.proto"]);
    codegen_check::assert_protos_fresh("zds", Path::new(env!("CARGO_MANIFEST_DIR")), &protos);
}
