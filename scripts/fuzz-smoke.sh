#!/usr/bin/env bash
# Builds every fuzz target and runs each one for a short time.
# FUZZ_SECONDS sets the time per target (default 15).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECONDS:-15}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi
toolchain=+nightly
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "error: the fuzz smoke run needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi

targets=$(cargo "$toolchain" fuzz list)
echo "==> building: $(echo $targets)"
cargo "$toolchain" fuzz build
for t in $targets; do
    echo "==> fuzz $t for ${secs}s"
    mkdir -p "corpus/$t"
    cargo "$toolchain" fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | tail -n 3
done
