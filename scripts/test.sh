#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine that has only the Rust toolchain.
#
# The privileged tests build real network namespaces and iptables rules, so this
# script must run as root; it installs iptables, iproute2 and tcpdump with apt-get
# when they are missing. Set MESHWIRE_SKIP_PRIVILEGED=1 to skip (not pass) those
# tests on a machine where they cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
if [ "${#need[@]}" -gt 0 ] && [ "${MESHWIRE_SKIP_PRIVILEGED:-0}" != 1 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: the tests need ${need[*]} and root; run this script as root (or set MESHWIRE_SKIP_PRIVILEGED=1 to skip the privileged tests)" >&2
        exit 1
    fi
    echo "==> installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The real peers some tests start (kube-apiserver and etcd; spire-server and spire-agent),
# built from pinned Go modules into target/peers (a no-op when they are up to date).
echo "==> building the test peers (testbed/peers)"
bash testbed/peers/build.sh kube spire

echo "==> cargo test --workspace --locked"
cargo test --workspace --locked "$@"
