#!/usr/bin/env bash
# The one command that reproduces the cluster benchmark (docs/benchmarks.md,
# "The cluster (issue 17)").
#
#   bench/cluster.sh [-- CHAT-FANOUT-RUN-OPTIONS...]
#
# It installs nats-server (Debian package) if missing, builds meshd, meshctl
# and chat-fanout in release, and starts on free loopback ports: nats-server
# with JetStream (state in a temp dir), three meshd hubs of one cluster on it
# (signaling and chat), and one meshd alone (chat only). Then:
#
#   1. chat fan-out: `chat-fanout run` against the lone meshd, the three hubs
#      as one server (the publisher at the first hub, subscribers spread over
#      the three) and nats-server itself, taking turns, throughput and latency;
#   2. propagation: `chat-fanout propagation`, a registration at one hub until
#      it is in another hub's list, beside the same at one hub and one message
#      through nats-server.
#
# It prints the machine and Markdown tables on stdout (progress on stderr) and
# stops everything it started when it exits, however it exits.
# Options after -- go to `chat-fanout run`, e.g. -- --subscribers 10 --repeat 1
#
# CARGO_TARGET_DIR is honoured; without it the workspace's target/ is used.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
invocation="bench/cluster.sh${*:+ $*}"
while (($#)); do
  case "$1" in
    --) shift; break ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cluster.sh: unknown option $1; try --help" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*" >&2; }

if ! command -v nats-server >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "cluster.sh: nats-server is missing; run as root or: sudo apt-get install nats-server" >&2
    exit 1
  fi
  say "installing nats-server"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nats-server >&2
fi

target_dir="${CARGO_TARGET_DIR:-$root/target}"
say "building meshd, meshctl and chat-fanout (release) in $target_dir"
CARGO_TARGET_DIR="$target_dir" cargo build --release --locked -p meshd -p meshctl -p meshd-bench >&2
bin="$target_dir/release"

work="$(mktemp -d -t meshd-cluster-bench.XXXXXX)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$bin/chat-fanout" free-port; }

wait_port() {
  local port="$1" name="$2" log="$3"
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "cluster.sh: $name is not listening on 127.0.0.1:$port after 10 s; its log:" >&2
  tail -n 20 "$log" >&2
  exit 1
}

nats_port="$(free_port)"
say "starting nats-server with JetStream on 127.0.0.1:$nats_port"
nats-server -js -sd "$work/nats" -a 127.0.0.1 -p "$nats_port" >"$work/nats.log" 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
wait_port "$nats_port" nats-server "$work/nats.log"

# One meshd: $1 its name, $2 extra TOML (roles). The per-user flood limit is
# off: the publishers send as fast as they can; this measures the fan-out.
start_meshd() {
  local name="$1" extra="$2"
  mkdir -p "$work/$name"
  cat >"$work/$name/meshd.toml" <<EOF
[node]
id = "$name"
state_dir = "$work/$name/state"

[control]
socket = "$work/$name/meshd.sock"
group = ""

[chat]
enabled = true
listen = "127.0.0.1:0"
rate_per_user = 0

[mesh]
enabled = false

[web]
enabled = false

$extra
EOF
  "$bin/meshd" --config "$work/$name/meshd.toml" >>"$work/$name/meshd.log" 2>&1 &
  pids+=("$!")
}
ctl() { local name="$1"; shift; "$bin/meshctl" --socket "$work/$name/meshd.sock" "$@"; }
# The address `meshctl --json status` shows for role $2 of meshd $1.
role_listen() {
  local name="$1" role="$2" listen=""
  for _ in $(seq 100); do
    listen="$(ctl "$name" --json status 2>/dev/null |
      python3 -c "import json,sys; print(json.load(sys.stdin)['roles'].get('$role',{}).get('listen',''))" 2>/dev/null || true)"
    [ -n "$listen" ] && { printf '%s' "$listen"; return 0; }
    sleep 0.1
  done
  echo "cluster.sh: meshd $name did not come up; its log:" >&2
  tail -n 20 "$work/$name/meshd.log" >&2
  exit 1
}

say "starting one meshd alone, and three hubs of one cluster"
start_meshd alone "[signaling]
enabled = false"
hub_addrs=()
chat_addrs=()
for n in 1 2 3; do
  port="$(free_port)"
  # The propagation samples register hundreds of new ids from one address:
  # the per-address limit on new ids is off.
  start_meshd "hub$n" "[signaling]
listen = \"127.0.0.1:$port\"
registrations_per_sec = 0

[cluster]
nats = [\"nats://127.0.0.1:$nats_port\"]"
  hub_addrs+=("127.0.0.1:$port")
done
alone_chat="$(role_listen alone chat)"
for n in 1 2 3; do chat_addrs+=("$(role_listen "hub$n" chat)"); done

# Every hub in the cluster before the user is made, so it reaches all three.
for n in 1 2 3; do
  for _ in $(seq 100); do
    hubs="$(ctl "hub$n" --json status | python3 -c "import json,sys; c=json.load(sys.stdin)['roles']['cluster']; print(len(c['hubs']) if c['connected'] else 0)")"
    [ "$hubs" = 3 ] && break
    sleep 0.1
  done
  [ "$hubs" = 3 ] || { echo "cluster.sh: hub$n did not see three hubs; its log:" >&2; tail -n 20 "$work/hub$n/meshd.log" >&2; exit 1; }
done
password="$(head -c 18 /dev/urandom | base64)"
printf '%s\n' "$password" | ctl alone users add bench --password-stdin >&2
printf '%s\n' "$password" | ctl hub1 users add bench --password-stdin >&2
for n in 2 3; do
  for _ in $(seq 100); do
    ctl "hub$n" users list | grep -qx bench && break
    sleep 0.1
  done
done

cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
mem="$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
echo "## The cluster (issue 17)"
echo
echo "Command: \`$invocation\`, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
echo "Machine: $(nproc) cores ($cpu), $mem, Linux $(uname -r); $(nats-server --version 2>&1 | head -n 1)."

say "chat fan-out: meshd alone, the three hubs as one, nats-server"
cluster_list="$(IFS=,; echo "${chat_addrs[*]}")"
# Without options: 10, 100 and 300 subscribers (about 100 logins per hub).
(($#)) || set -- --subscribers 10,100,300
CHAT_FANOUT_PASSWORD="$password" "$bin/chat-fanout" run \
  --meshd "$alone_chat" --meshd-cluster "$cluster_list" --nats "127.0.0.1:$nats_port" \
  --scenarios throughput,latency "$@"

say "registration propagation: hub1 to hub2, 200 samples"
echo
echo "### A registration at one hub, listed at another"
"$bin/chat-fanout" propagation --from "${hub_addrs[0]}" --to "${hub_addrs[1]}" \
  --nats "127.0.0.1:$nats_port" --count 200
