#!/usr/bin/env bash
# Builds every fuzz target and runs each one in turn for FUZZ_SECONDS (default 300: a
# campaign; scripts/fuzz-smoke.sh runs the same for 15 s per target). The corpus grows in
# fuzz/corpus/<target>. A crash stops the run with libFuzzer's report and a non-zero exit;
# otherwise a table gives, per target, the executions, their rate and the corpus size.
#
# Usage: FUZZ_SECONDS=600 bash scripts/fuzz.sh [target ...]   (no target: all of them)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECONDS:-300}"
case "$secs" in
'' | *[!0-9]*)
    echo "error: FUZZ_SECONDS must be a whole number of seconds, not '$secs'" >&2
    exit 2
    ;;
esac

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "error: fuzzing needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi

all=$(cargo +nightly fuzz list)
if [ "$#" -gt 0 ]; then
    for t in "$@"; do
        grep -qx "$t" <<<"$all" || { echo "error: no fuzz target '$t' (have: $(echo $all))" >&2; exit 2; }
    done
    targets="$*"
else
    targets=$all
fi
echo "==> building: $(echo $targets)"
cargo +nightly fuzz build

log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
for t in $targets; do
    echo "==> fuzz $t for ${secs}s"
    mkdir -p "corpus/$t"
    if ! cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
        >"$log/$t" 2>&1; then
        tail -n 40 "$log/$t" >&2
        echo "error: fuzz target $t failed (the reproducer is under fuzz/artifacts/$t)" >&2
        exit 1
    fi
    tail -n 2 "$log/$t"
done

echo
printf '%-20s %14s %10s %12s %8s\n' target executions seconds 'execs/s' corpus
for t in $targets; do
    # libFuzzer's last line: "Done <runs> runs in <seconds> second(s)".
    read -r runs took < <(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 \2/p' "$log/$t" | tail -n 1) || true
    runs=${runs:-?}
    took=${took:-?}
    rate=?
    if [[ "$runs" =~ ^[0-9]+$ && "$took" =~ ^[1-9][0-9]*$ ]]; then rate=$((runs / took)); fi
    printf '%-20s %14s %10s %12s %8s\n' "$t" "$runs" "$took" "$rate" "$(find "corpus/$t" -type f | wc -l)"
done
