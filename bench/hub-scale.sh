#!/usr/bin/env bash
# The one command that reproduces the hub-at-scale benchmark (docs/benchmarks.md).
#
#   bench/hub-scale.sh [--devices N,N,...] [--baseline COMMIT] [--baseline-devices N,N,...] [--timeout-secs S]
#
# Builds meshd and mesh-link in release from this checkout, and meshd from a
# baseline commit (default abd9d5d, the last before deltas on the hub channel),
# then runs `mesh-link hub` against each: one meshd hub on loopback and N
# simulated devices (real hub channels and keys from meshd-link, one task
# each), for each N (default 1000,5000,10000; baseline 200,1000). Each run:
# every device joins, then 10% leave and join again; the table has the time
# until every device holds the whole list, the hub's CPU and peak RSS, the
# simulation's CPU, and the list bytes devices received. A phase that does not
# settle within the timeout (default 180 s) says how many devices did.
# Progress goes to stderr. Everything it starts is stopped when it ends.
#
# CARGO_TARGET_DIR is honoured; the baseline builds in its own target dir.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
invocation="bench/hub-scale.sh${*:+ $*}"
devices=1000,5000,10000
baseline=abd9d5d
baseline_devices=200,1000
timeout=180
while (($#)); do
  case "$1" in
    --devices) devices="$2"; shift 2 ;;
    --baseline) baseline="$2"; shift 2 ;;
    --baseline-devices) baseline_devices="$2"; shift 2 ;;
    --timeout-secs) timeout="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "hub-scale.sh: unknown option $1; try --help" >&2; exit 2 ;;
  esac
done
say() { printf '==> %s\n' "$*" >&2; }

target_dir="${CARGO_TARGET_DIR:-$root/target}"
work="$(mktemp -d -t hub-scale.XXXXXX)"
cleanup() {
  git -C "$root" worktree remove --force "$work/baseline" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building this checkout (release)"
CARGO_TARGET_DIR="$target_dir" cargo build --release --locked -p meshd -p meshd-bench --bin meshd --bin mesh-link >&2
current="$target_dir/release"
say "building the baseline $baseline (release)"
git -C "$root" worktree add --detach "$work/baseline" "$baseline" >&2
CARGO_TARGET_DIR="$target_dir/hub-scale-baseline" cargo build --release --locked \
  --manifest-path "$work/baseline/Cargo.toml" -p meshd --bin meshd >&2
old="$target_dir/hub-scale-baseline/release"

echo "# hub at scale"
echo
echo "command: \`$invocation\`, $(date -u +%Y-%m-%dT%H:%MZ), meshd $(git describe --always --dirty 2>/dev/null || echo unknown) against $baseline"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
echo
echo "baseline $baseline:"
echo
"$current/mesh-link" hub --meshd "$old/meshd" --devices "$baseline_devices" --timeout-secs "$timeout"
echo
echo "this build:"
echo
"$current/mesh-link" hub --meshd "$current/meshd" --devices "$devices" --timeout-secs "$timeout"
