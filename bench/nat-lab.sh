#!/usr/bin/env bash
# The one command that reproduces the NAT benchmark (docs/benchmarks.md).
#
#   sudo bench/nat-lab.sh [-- NAT-OPTIONS...]
#
# Builds meshd and mesh-link in release, then, in the NAT lab of network
# namespaces that the integration tests use (203.0.113.0/24 and 10.0.0.0/8
# only, everything removed afterwards), prints on stdout:
#   1. the time from the second device's start to a direct link across two
#      port-preserving NATs, and to a relayed link when one NAT picks a
#      random port per destination (median of --repeat runs);
#   2. acknowledged message throughput over the direct and the relayed link.
# Needs root, iproute2 and iptables. Options after -- go to `mesh-link nat`,
# e.g. -- --repeat 9 --seconds 5
#
# CARGO_TARGET_DIR is honoured; without it the workspace's target/ is used.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
invocation="bench/nat-lab.sh${*:+ $*}"
if [ "${1:-}" = "--" ]; then shift; fi
case "${1:-}" in -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

say() { printf '==> %s\n' "$*" >&2; }
say "building meshd and mesh-link (release)"
cargo build --release --locked -p meshd -p meshd-bench --bin meshd --bin mesh-link >&2
target="${CARGO_TARGET_DIR:-$root/target}/release"

echo "# NAT benchmark"
echo
echo "command: \`$invocation\`, $(date -u +%Y-%m-%dT%H:%MZ), meshd $(git describe --always --dirty 2>/dev/null || echo unknown)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
echo
"$target/mesh-link" nat --meshd "$target/meshd" "$@"
