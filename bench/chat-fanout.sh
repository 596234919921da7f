#!/usr/bin/env bash
# The one command that reproduces the chat fan-out benchmark (docs/benchmarks.md).
#
#   bench/chat-fanout.sh [--10k] [-- CHAT-FANOUT-RUN-OPTIONS...]
#
# It installs nats-server and redis-server (Debian packages) if missing, builds
# meshd, meshctl and chat-fanout in release, starts meshd (chat only, on a free
# loopback port, state and control socket in a temp dir), a second meshd the
# same but with [chat] tls = true (its self-signed certificate, pinned by the
# fingerprint meshctl status shows), nats-server and redis-server on free
# loopback ports, runs chat-fanout against all four in one run (meshd over TLS
# is the column "meshd (TLS)"), and prints the machine and Markdown tables on
# stdout (progress goes to stderr). Everything it starts is stopped when it
# exits, however it exits.
#
# --10k   afterwards, restart meshd and check 10,000 idle clients at once against
#         each server (about 5 minutes: each meshd login costs ~55 ms of argon2).
# Options after -- go to `chat-fanout run` (see `chat-fanout run --help`), e.g.
#   bench/chat-fanout.sh -- --subscribers 100 --deliveries 5000000
#
# CARGO_TARGET_DIR is honoured; without it the workspace's target/ is used.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

invocation="bench/chat-fanout.sh${*:+ $*}"
ten_k=false
while (($#)); do
  case "$1" in
    --10k) ten_k=true; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "chat-fanout.sh: unknown option $1; try --help" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*" >&2; }

# --- servers to compare against ---------------------------------------------
missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
command -v redis-server >/dev/null || missing+=(redis-server)
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "chat-fanout.sh: missing ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

# --- build -------------------------------------------------------------------
target_dir="${CARGO_TARGET_DIR:-$root/target}"
say "building meshd, meshctl and chat-fanout (release) in $target_dir"
CARGO_TARGET_DIR="$target_dir" cargo build --release --locked -p meshd -p meshctl -p meshd-bench >&2
bin="$target_dir/release"

# --- cleanup -------------------------------------------------------------------
work="$(mktemp -d -t chat-fanout.XXXXXX)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$bin/chat-fanout" free-port; }

# Waits up to 10 s for a TCP listener on 127.0.0.1:$1, or fails naming $2.
wait_port() {
  local port="$1" name="$2" log="$3"
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "chat-fanout.sh: $name is not listening on 127.0.0.1:$port after 10 s; its log:" >&2
  tail -n 20 "$log" >&2
  exit 1
}

# --- meshd ---------------------------------------------------------------------
# Every key not set here keeps its default (chat.max_clients = 10000,
# chat.max_line_bytes = 4096, log_level = info). The benchmark's publishers
# send as fast as they can, which the per-user flood limit (20 lines/s by
# default) exists to stop, so it is off here: this measures the fan-out.
cat >"$work/meshd.toml" <<EOF
[node]
id = "bench"
state_dir = "$work/state"

[control]
socket = "$work/meshd.sock"
group = ""

[signaling]
enabled = false

[chat]
enabled = true
listen = "127.0.0.1:0"
rate_per_user = 0

[mesh]
enabled = false
[web]
enabled = false
EOF
ctl() { "$bin/meshctl" --socket "$work/meshd.sock" "$@"; }

meshd_pid=""
meshd_addr=""
start_meshd() {
  "$bin/meshd" --config "$work/meshd.toml" >>"$work/meshd.log" 2>&1 &
  meshd_pid=$!
  pids+=("$meshd_pid")
  meshd_addr=""
  for _ in $(seq 100); do
    meshd_addr="$(ctl --json status 2>/dev/null | sed -n 's/.*"listen": *"\([^"]*\)".*/\1/p' | head -n 1)"
    [ -n "$meshd_addr" ] && return 0
    kill -0 "$meshd_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "chat-fanout.sh: meshd did not come up; its log:" >&2
  tail -n 20 "$work/meshd.log" >&2
  exit 1
}
stop_meshd() {
  kill "$meshd_pid" 2>/dev/null || true
  wait "$meshd_pid" 2>/dev/null || true
  local kept=() pid
  for pid in "${pids[@]}"; do
    [ "$pid" = "$meshd_pid" ] || kept+=("$pid")
  done
  pids=("${kept[@]}")
}

say "starting meshd"
start_meshd
password="$(head -c 18 /dev/urandom | base64)"
printf '%s\n' "$password" | ctl users add bench --password-stdin >&2

# --- meshd over TLS ----------------------------------------------------------------
# The same config with tls = true: meshd makes its self-signed certificate in
# its state dir, and the benchmark's clients pin its fingerprint.
sed -e "s|$work/state|$work/state-tls|" -e "s|$work/meshd.sock|$work/meshd-tls.sock|" \
  -e 's/^rate_per_user = 0$/rate_per_user = 0\ntls = true/' "$work/meshd.toml" >"$work/meshd-tls.toml"
grep -q '^tls = true$' "$work/meshd-tls.toml" || { echo "chat-fanout.sh: could not write $work/meshd-tls.toml" >&2; exit 1; }
ctl_tls() { "$bin/meshctl" --socket "$work/meshd-tls.sock" "$@"; }
say "starting meshd with [chat] tls = true"
"$bin/meshd" --config "$work/meshd-tls.toml" >>"$work/meshd-tls.log" 2>&1 &
tls_pid=$!
pids+=("$tls_pid")
tls_addr=""
tls_fingerprint=""
for _ in $(seq 100); do
  status_json="$(ctl_tls --json status 2>/dev/null || true)"
  tls_addr="$(printf '%s' "$status_json" | sed -n 's/.*"listen": *"\([^"]*\)".*/\1/p' | head -n 1)"
  tls_fingerprint="$(printf '%s' "$status_json" | sed -n 's/.*"tls_fingerprint": *"\([^"]*\)".*/\1/p' | head -n 1)"
  [ -n "$tls_addr" ] && [ -n "$tls_fingerprint" ] && break
  kill -0 "$tls_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$tls_fingerprint" ]; then
  echo "chat-fanout.sh: meshd with tls did not come up; its log:" >&2
  tail -n 20 "$work/meshd-tls.log" >&2
  exit 1
fi
printf '%s\n' "$password" | ctl_tls users add bench --password-stdin >&2

# --- nats-server and redis-server ------------------------------------------------
nats_port="$(free_port)"
say "starting nats-server on 127.0.0.1:$nats_port"
nats-server -a 127.0.0.1 -p "$nats_port" >"$work/nats.log" 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
wait_port "$nats_port" nats-server "$work/nats.log"

redis_port="$(free_port)"
say "starting redis-server on 127.0.0.1:$redis_port"
# No persistence: nothing is stored, and a fork for a snapshot would distort
# the figures. The pub/sub output buffer limit keeps its default.
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
  --daemonize no --dir "$work" --logfile "$work/redis.log" &
redis_pid=$!
pids+=("$redis_pid")
wait_port "$redis_port" redis-server "$work/redis.log"

# --- the machine ---------------------------------------------------------------
cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
mem="$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
cat <<EOF
## Chat fan-out: meshd, nats-server, redis-server

- date: $(date -u '+%Y-%m-%d %H:%M UTC')
- machine: $(nproc) cores, ${cpu:-unknown CPU}, $mem, Linux $(uname -r)
- meshd: $("$bin/meshd" --version) ($(git -C "$root" describe --always --dirty 2>/dev/null || echo "no git"), release build)
- nats-server: $(nats-server --version 2>&1 | head -n 1)
- redis-server: $(redis-server --version | head -n 1)
- open file limit: soft $(ulimit -Sn), hard $(ulimit -Hn)
- command: $invocation
EOF

# --- run -------------------------------------------------------------------------
export CHAT_FANOUT_PASSWORD="$password"
targets() {
  echo --meshd "$meshd_addr" --meshd-pid "$meshd_pid" \
    --meshd-tls "$tls_addr" --meshd-tls-pid "$tls_pid" --meshd-tls-fingerprint "$tls_fingerprint" \
    --nats "127.0.0.1:$nats_port" --nats-pid "$nats_pid" \
    --redis "127.0.0.1:$redis_port" --redis-pid "$redis_pid"
}
echo
echo "meshd runs with \`rate_per_user = 0\`: no per-user flood limit, so the tables measure the fan-out itself."
echo "\"meshd (TLS)\" is a second meshd with the same config and \`tls = true\` (its self-signed ECDSA P-256 certificate; TLS 1.3, AES-256-GCM, which rustls prefers); its clients speak TLS too, pinned to its fingerprint."
# shellcheck disable=SC2046 # targets() yields separate words without spaces.
"$bin/chat-fanout" run $(targets) "$@"

# The burst again with the flood limit on, raised from its default (20 a
# second after 100) to what a fast publisher needs: the limit is what keeps
# the room whole when one client writes thousands of lines at once.
say "reloading meshd with rate_per_user = 5000, burst_per_user = 1000"
sed -i 's/^rate_per_user = 0$/rate_per_user = 5000\nburst_per_user = 1000/' "$work/meshd.toml"
grep -q '^burst_per_user = 1000$' "$work/meshd.toml" || { echo "chat-fanout.sh: could not set the flood limit in $work/meshd.toml" >&2; exit 1; }
ctl reload >&2
echo
echo "The burst with meshd's flood limit on (\`rate_per_user = 5000\`, \`burst_per_user = 1000\`, reloaded):"
"$bin/chat-fanout" run --meshd "$meshd_addr" --meshd-pid "$meshd_pid" --scenarios burst "$@"

if [ "$ten_k" = true ]; then
  say "restarting meshd for the 10,000-client check"
  stop_meshd
  start_meshd
  echo
  echo "The 10,000-client check, meshd restarted fresh on its default limits:"
  # shellcheck disable=SC2046
  "$bin/chat-fanout" run $(targets) --scenarios memory --idle-clients 10000
  grep 'open file limit' "$work/meshd.log" | tail -n 1 | sed 's/^/meshd log: /' || true
fi
