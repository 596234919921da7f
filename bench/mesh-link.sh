#!/usr/bin/env bash
# The one command that reproduces the mesh link benchmark (docs/benchmarks.md).
#
#   bench/mesh-link.sh [-- MESH-LINK-LINK-OPTIONS...]
#
# Builds meshd and mesh-link in release, then prints on stdout:
#   1. one-way throughput with 1 KiB and 64 KiB messages, and the round-trip
#      time of a 64-byte ping, each over a meshd link beside plain TCP on
#      loopback in the same run (`mesh-link link`);
#   2. the time from the last start to a full mesh of 10 real meshd processes
#      on loopback, and the RTT meshd measures between two of them
#      (`mesh-link mesh`).
# Progress goes to stderr. Every process it starts is stopped when it ends.
# Options after -- go to `mesh-link link`, e.g. -- --seconds 5 --repeat 5
#
# CARGO_TARGET_DIR is honoured; without it the workspace's target/ is used.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
invocation="bench/mesh-link.sh${*:+ $*}"
if [ "${1:-}" = "--" ]; then shift; fi
case "${1:-}" in -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

say() { printf '==> %s\n' "$*" >&2; }
say "building meshd and mesh-link (release)"
cargo build --release --locked -p meshd -p meshd-bench --bin meshd --bin mesh-link >&2
target="${CARGO_TARGET_DIR:-$root/target}/release"

echo "# mesh link benchmark"
echo
echo "command: \`$invocation\`, $(date -u +%Y-%m-%dT%H:%MZ), meshd $(git describe --always --dirty 2>/dev/null || echo unknown)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
echo
say "link against plain TCP"
"$target/mesh-link" link "$@"
echo
say "full mesh of 10 meshd processes"
"$target/mesh-link" mesh --meshd "$target/meshd" --devices 10 --repeat 5
