//! Regenerates the checked-in protobuf code from `proto/` (protox + tonic-prost-build, no
//! protoc) and compares it byte for byte with `src/generated/`.
//!
//! On a difference the test fails. When the environment variable `CI` is unset it first
//! overwrites the checked-in files, so a local rerun passes and the change can be reviewed
//! and committed.

use std::path::Path;

#[test]
fn generated_code_is_fresh() {
    // The Istio certificate service, and the SPIRE server's Entry API (with the
    // `spire.api.types` it uses; vendored from spiffe/spire-api-sdk) for the registrar.
    let mut protos =
        codegen_check::Protos::new(&["ca.proto", "spire/api/server/entry/v1/entry.proto"]);
    protos.grpc = true;
    codegen_check::assert_protos_fresh("svid", Path::new(env!("CARGO_MANIFEST_DIR")), &protos);
}
