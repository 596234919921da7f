#!/usr/bin/env bash
# The soak test with injected faults (docs/testing.md, "Soak").
#
#   bash bench/soak.sh [--minutes N] [--seed S] [--keep] [--no-faults]
#
# Runs one meshd hub (signaling and chat) and 8 mesh devices for N minutes
# (default 30) inside a network namespace of its own that has nothing but
# loopback, under mesh and chat traffic, and injects a fault every 10-30 s:
# kill -9 and restart of a device, a hub restart, a path cut between two
# devices (iptables inside the namespace), SIGSTOP of a device for 10 s.
# Then it checks that every acknowledged message arrived exactly once, that
# no meshd panicked, crashed or logged an error no fault explains, that RSS
# and open fds did not grow 10% or more, and that every control socket kept
# answering within 1 s.
#
# The report (Markdown) goes to stdout, progress to stderr. Exit status 0
# only if every check held; 1 if one failed; 2 on a setup error; 130 when
# interrupted. --seed replays a run's fault schedule (the seed is printed).
# The work directory (configs, logs) is removed after a passing run and kept
# after any other (its path is printed); --keep keeps it always.
# --no-faults runs the traffic alone, to tell what the faults cost (a
# diagnosis; it is not the soak).
#
# Needs root: it creates the namespace, iptables rules inside it, and runs
# the devices under their own uids. CARGO_TARGET_DIR is honoured.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

minutes=30
seed=""
keep=0
extra=()
invocation="bash bench/soak.sh${*:+ $*}"
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="${2:?--minutes needs a number}"; shift 2 ;;
    --minutes=*) minutes="${1#*=}"; shift ;;
    --seed) seed="${2:?--seed needs a number}"; shift 2 ;;
    --seed=*) seed="${1#*=}"; shift ;;
    --keep) keep=1; shift ;;
    --no-faults) extra+=(--no-faults); shift ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "soak: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if ! [[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]] || [ "$minutes" = 0 ]; then
  echo "soak: --minutes takes a positive number, not $minutes" >&2
  exit 2
fi
if [ -n "$seed" ] && ! [[ "$seed" =~ ^[0-9]+$ ]]; then
  echo "soak: --seed takes a non-negative integer, not $seed" >&2
  exit 2
fi

say() { printf '==> %s\n' "$*" >&2; }

# Never a silent skip: without root this fails, in CI and everywhere else.
if [ "$(id -u)" -ne 0 ]; then
  echo "soak: needs root: it creates a network namespace (ip netns), iptables rules inside it, and runs the devices under their own uids; run it as root: sudo $invocation" >&2
  exit 1
fi
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
if ((${#need[@]})); then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi

# Leftovers of an earlier run that was killed: its namespace (and anything
# still running in it) goes once the run's own process is gone.
for old in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^meshd-soak-[0-9]+$' || true); do
  pid="${old#meshd-soak-}"
  if ! kill -0 "$pid" 2>/dev/null; then
    say "removing namespace $old, left behind by a run that is gone"
    for p in $(ip netns pids "$old" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    ip netns delete "$old" 2>/dev/null || true
  fi
done

say "building meshd, meshctl and soak (release)"
cargo build --release --locked -p meshd -p meshctl -p meshd-bench --bin meshd --bin meshctl --bin soak >&2
target="${CARGO_TARGET_DIR:-$root/target}/release"

ns="meshd-soak-$$"
# Under /tmp whatever TMPDIR says: the devices run under their own uids and
# must reach their directories.
work="/tmp/meshd-soak-$$"
driver=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
    # The driver stops its processes in order and still reports.
    kill -TERM "$driver" 2>/dev/null || true
    for _ in $(seq 600); do
      kill -0 "$driver" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$driver" 2>/dev/null || true
  fi
  if ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns"; then
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
      [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break
      sleep 0.1
    done
    ip netns delete "$ns" 2>/dev/null || true
  fi
  if [ -d "$work" ]; then
    if [ "$rc" -eq 0 ] && [ "$keep" -eq 0 ]; then
      rm -rf "$work"
    else
      say "configs and logs kept in $work"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

say "network namespace $ns (loopback only)"
ip netns add "$ns"
ip -n "$ns" link set lo up
mkdir -m 0755 "$work"

args=(--bin-dir "$target" --dir "$work" --minutes "$minutes" --netns "$ns" --invocation "$invocation")
if [ -n "$seed" ]; then args+=(--seed "$seed"); fi
args+=("${extra[@]}")
# In the background so that a signal to this script reaches its trap at
# once; the trap passes it on to the driver.
ip netns exec "$ns" "$target/soak" "${args[@]}" &
driver=$!
set +e
wait "$driver"
rc=$?
set -e
driver=""
exit "$rc"
