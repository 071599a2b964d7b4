#!/usr/bin/env bash
# Builds the real peers the tests start, from the Go module proxy, pinned by the
# go.mod/go.sum files beside this script:
#   kube/  -> kube-apiserver (k8s.io/kubernetes v1.37.2) and etcd (go.etcd.io/etcd/server/v3)
#   spire/ -> spire-server and spire-agent (github.com/spiffe/spire v1.13.3, cgo for sqlite)
# Binaries go to <workspace>/target/peers/bin. A peer is rebuilt only when its go.mod or
# go.sum changed since the last build (a stamp file records their hash).
#
# Usage: testbed/peers/build.sh [kube] [spire]   (no argument: both)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="${MESHWIRE_PEERS_DIR:-$root/target/peers}"
bin="$out/bin"
mkdir -p "$bin"

if ! command -v go >/dev/null 2>&1; then
    echo "error: building the test peers needs Go 1.26 or newer on PATH" >&2
    exit 1
fi

export GOFLAGS=-mod=readonly
export GOTOOLCHAIN=local
# The Go build cache lives with the binaries, under target/, so `cargo clean` clears both.
export GOCACHE="$out/go-build"
# The compiler's scratch files too: /tmp may be a small tmpfs, and a cold kube-apiserver
# build writes more there than some machines' /tmp holds.
export GOTMPDIR="$out/go-tmp"
mkdir -p "$GOTMPDIR"

# A cold build of every peer needs a few GB under target/ and in the module cache; say so
# up front instead of failing half-way with ENOSPC.
free_kb=$(df -Pk "$out" | awk 'NR == 2 { print $4 }')
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((4 * 1024 * 1024)) ]; then
    echo "warning: only $((free_kb / 1024)) MB free under $out; a cold build of the peers needs about 4 GB" >&2
    df -h "$out" /tmp >&2 || true
fi

# build GROUP LDFLAGS NAME=PACKAGE...: builds each package of the Go module in GROUP/
# into bin/NAME, with LDFLAGS (the version stamps upstream's release builds set).
build() {
    local group=$1 ldflags=$2
    shift 2
    local dir="$here/$group"
    local stamp="$out/$group.stamp"
    local want
    want=$( (cat "$dir/go.mod" "$dir/go.sum"; echo "$ldflags") | sha256sum | cut -d' ' -f1)
    local fresh=1 spec
    for spec in "$@"; do [ -x "$bin/${spec%%=*}" ] || fresh=0; done
    if [ "$fresh" = 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        echo "==> peers/$group: up to date"
        return
    fi
    local t0=$SECONDS
    for spec in "$@"; do
        echo "==> peers/$group: building ${spec%%=*} (${spec#*=})"
        (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$bin/${spec%%=*}" "${spec#*=}")
    done
    echo "$want" >"$stamp"
    echo "==> peers/$group: built in $((SECONDS - t0)) s"
}

want=("$@")
[ "${#want[@]}" -gt 0 ] || want=(kube spire)
for w in "${want[@]}"; do
    case "$w" in
    kube)
        v=k8s.io/component-base/version
        CGO_ENABLED=0 build kube "-X $v.gitVersion=v1.37.2 -X $v.gitMajor=1 -X $v.gitMinor=37 -X $v.gitTreeState=clean" \
            kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
            etcd=go.etcd.io/etcd/server/v3
        ;;
    spire)
        if ! command -v gcc >/dev/null 2>&1 && ! command -v cc >/dev/null 2>&1; then
            echo "error: SPIRE's sqlite datastore needs cgo; install gcc" >&2
            exit 1
        fi
        # SPIRE's release builds stamp the tag without its "v" (upstream Makefile: git_tag:v%=%);
        # "v1.13.3" makes the sqlite migration code panic at start-up (semver.MustParse).
        CGO_ENABLED=1 build spire "-X github.com/spiffe/spire/pkg/common/version.gittag=1.13.3" \
            spire-server=github.com/spiffe/spire/cmd/spire-server \
            spire-agent=github.com/spiffe/spire/cmd/spire-agent
        ;;
    *)
        echo "error: unknown peer group '$w' (kube, spire)" >&2
        exit 2
        ;;
    esac
done
