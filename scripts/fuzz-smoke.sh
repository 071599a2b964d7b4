#!/usr/bin/env bash
# The fuzz smoke run of CI: every fuzz target for FUZZ_SECONDS (default 15) each, through
# scripts/fuzz.sh (which runs longer campaigns and prints executions per target).
set -euo pipefail
FUZZ_SECONDS="${FUZZ_SECONDS:-15}" exec bash "$(dirname "$0")/fuzz.sh" "$@"
