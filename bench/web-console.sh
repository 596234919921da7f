#!/usr/bin/env bash
# The one command that reproduces the web console benchmark (docs/benchmarks.md,
# "Scraping the metrics").
#
#   bench/web-console.sh [--devices N,N,...] [--seconds S]
#
# Builds meshd and mesh-link in release from this checkout, then runs
# `mesh-link hub --scrape-secs S` for each N (default 1000,10000; S default
# 60): one meshd hub with its web console on, and N simulated devices (real
# hub channels and keys) that join, report their links to their next 200
# peers once (so /api/v1/mesh serves a mesh's pairs) and heartbeat. Once all
# have joined, the
# hub's CPU is measured in windows left alone (the reference) and windows
# scraped once a second (GET /metrics), alternating, S seconds of each; then
# 500 requests back to back of /metrics and of /api/v1/mesh give the hub's CPU
# per request. Progress goes to stderr; the table to stdout.
#
# CARGO_TARGET_DIR is honoured.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
devices=1000,10000
seconds=60
while (($#)); do
  case "$1" in
    --devices) devices="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "web-console.sh: unknown option $1; try --help" >&2; exit 2 ;;
  esac
done
target_dir="${CARGO_TARGET_DIR:-$root/target}"
printf '==> building meshd and mesh-link (release)\n' >&2
cargo build --release --locked -q -p meshd -p meshd-bench
printf '==> mesh-link hub --devices %s --scrape-secs %s\n' "$devices" "$seconds" >&2
echo "command: bench/web-console.sh --devices $devices --seconds $seconds, $(date -u +%Y-%m-%dT%H:%MZ), meshd $(git rev-parse --short HEAD)"
"$target_dir/release/mesh-link" hub --meshd "$target_dir/release/meshd" \
  --devices "$devices" --churn-percent 0 --scrape-secs "$seconds"
