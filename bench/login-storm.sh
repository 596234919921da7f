#!/usr/bin/env bash
# The one command that reproduces the login-storm benchmark (docs/benchmarks.md).
#
#   bench/login-storm.sh [--logins N] [--baseline COMMIT]
#
# Builds meshd in release twice, from this checkout and from a baseline commit
# (default ec1b9dd, the last commit before argon2 hashed into a fixed pool of
# memory), starts each in turn (chat only, on a free loopback port, its state
# and socket in a temp dir), adds one user, and has N clients (default 200)
# log in at the same moment with `chat-fanout logins`. Prints a Markdown table
# on stdout: meshd's RSS before and after, the login times (p50, p99, max) and
# the time for all of them, and the ratios of this build to the baseline.
# Progress goes to stderr. Everything it starts is stopped when it ends.
#
# CARGO_TARGET_DIR is honoured; the baseline builds in its own target dir.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
invocation="bench/login-storm.sh${*:+ $*}"
logins=200
baseline=ec1b9dd
while (($#)); do
  case "$1" in
    --logins) logins="$2"; shift 2 ;;
    --baseline) baseline="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "login-storm.sh: unknown option $1; try --help" >&2; exit 2 ;;
  esac
done
say() { printf '==> %s\n' "$*" >&2; }

target_dir="${CARGO_TARGET_DIR:-$root/target}"
work="$(mktemp -d -t login-storm.XXXXXX)"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  git -C "$root" worktree remove --force "$work/baseline" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building this checkout (release)"
CARGO_TARGET_DIR="$target_dir" cargo build --release --locked -p meshd -p meshctl -p meshd-bench --bin meshd --bin meshctl --bin chat-fanout >&2
current="$target_dir/release"
say "building the baseline $baseline (release)"
git -C "$root" worktree add --detach "$work/baseline" "$baseline" >&2
CARGO_TARGET_DIR="$target_dir/login-storm-baseline" cargo build --release --locked \
  --manifest-path "$work/baseline/Cargo.toml" -p meshd -p meshctl >&2
old="$target_dir/login-storm-baseline/release"

password="storm-$RANDOM$RANDOM"
# Runs one storm against the meshd and meshctl in $1, labelled $2.
storm() {
  local bin="$1" label="$2" dir="$work/$2"
  mkdir -p "$dir"
  cat >"$dir/meshd.toml" <<TOML
[node]
id = "storm"
state_dir = "$dir/state"
[control]
socket = "$dir/meshd.sock"
group = ""
[signaling]
enabled = false
[mesh]
enabled = false
[web]
enabled = false
[chat]
listen = "127.0.0.1:0"
TOML
  "$bin/meshd" --config "$dir/meshd.toml" >>"$dir/meshd.log" 2>&1 &
  pid=$!
  local addr=""
  for _ in $(seq 100); do
    addr="$("$bin/meshctl" --socket "$dir/meshd.sock" --json status 2>/dev/null | sed -n 's/.*"listen": *"\([^"]*\)".*/\1/p' | head -n 1)"
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "login-storm.sh: $label meshd did not start; its log:" >&2; tail -n 20 "$dir/meshd.log" >&2; exit 1; }
  printf '%s\n' "$password" | "$bin/meshctl" --socket "$dir/meshd.sock" users add bench --password-stdin >&2
  say "$logins logins at once against $label"
  CHAT_FANOUT_PASSWORD="$password" "$current/chat-fanout" logins --meshd "$addr" --meshd-pid "$pid" \
    --logins "$logins" --label "$label"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

echo "# login storm"
echo
echo "command: \`$invocation\`, $(date -u +%Y-%m-%dT%H:%MZ), meshd $(git describe --always --dirty 2>/dev/null || echo unknown) against $baseline"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
echo
echo "| meshd | logins at once | RSS before (MiB) | RSS after (MiB) | p50 (ms) | p99 (ms) | max (ms) | all logged in (s) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
row_old="$(storm "$old" "baseline $baseline")"
echo "$row_old"
row_new="$(storm "$current" "this build")"
echo "$row_new"
# Ratios: this build over the baseline, column by column.
awk -v new="$row_new" -v old="$row_old" 'BEGIN {
  split(new, x, "|"); split(old, y, "|"); out = "| this / baseline | |"
  for (i = 4; i <= 9; i++) out = out (y[i] + 0 > 0 ? sprintf(" %.2f |", x[i] / y[i]) : " - |")
  print out
}'
