#!/usr/bin/env bash
# bench/million.sh: one broker on this machine holding COUNT idle MQTT connections (default
# 1 000 000) from `tern bench conn`, then the latency of a publish while they are held.
# Opt-in and bounded: never run by CI. It changes kernel settings (as root; restored on exit)
# and loads the machine for a few minutes: run it on an otherwise idle machine.
#
#   cargo build --release -j2 -p tern
#   COUNT=100000 bench/million.sh                      # a tenth first
#   bench/million.sh                                   # a million, Tern
#   BROKERS="tern mosquitto" bench/million.sh          # and Mosquitto to the same count
#
# Environment: COUNT (connections), BROKERS (tern, mosquitto), SOURCES (local addresses the
# clients bind in turn, default 127.0.0.2-127.0.0.33: one address has one ephemeral port range,
# 64 511 ports with the range set below), KEEPALIVE (s, default 300: on, but no PINGREQ during
# the run), CONCURRENCY (CONNECTs in flight, default 500), RATE (connections/s, 0: as fast as
# possible), HOLD (s the connections are held once all are up, default 20; the latency run
# takes 7), TIMEOUT (s, the longest the whole connect may take, default 600), TERN, MOSQUITTO
# (binaries), OUT (results directory).
#
# What it reports, per broker: the broker's RSS growth per connection (`tern bench`'s figure:
# VmRSS at the end of the hold minus before the first connection, divided by the
# connections; the latency pair is connected by then), the time to connect
# them all (first attempt to last CONNACK) and the rate, and the latency of QoS 1 publishes
# (1 000 msg/s for 5 s after 1 s of warm-up) from a publisher to a subscriber, both connected
# after the COUNT idle ones: p50, p99, max.
#
# Kernel settings it needs (set when lower, restored on exit):
#   ulimit -n             COUNT + 1 000 for the broker and for the bench (each holds one end of
#                         every connection); the hard limit too, which needs root with
#                         CAP_SYS_RESOURCE (a container without it stops at its hard limit:
#                         the script says so and stops)
#   fs.nr_open            the most `ulimit -n` may be: COUNT + 1 000 at least
#   fs.file-max           descriptors in the whole system: both ends, 2 x COUNT + 100 000
#   net.ipv4.ip_local_port_range  1024 65535: 64 511 ephemeral ports per source address
#   net.core.somaxconn, net.ipv4.tcp_max_syn_backlog  65535: a burst of connects is not
#                         dropped at the listening socket (a drop costs a 1 s SYN retry)
#   net.ipv4.tcp_mem      pages all TCP buffers may take before the kernel starts refusing
#                         memory to sockets; raised so that 2 x COUNT sockets fit
#   net.netfilter.nf_conntrack_max  2 x COUNT + 100 000, when conntrack is loaded (a full
#                         table drops new connections)
# Memory: about 12 KB per connection in all (the kernel's two sockets, the bench's client, the
# broker); the script refuses to start with less MemAvailable than that.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNT=${COUNT:-1000000}
BROKERS=${BROKERS:-tern}
SOURCES=${SOURCES:-127.0.0.2-127.0.0.33}
KEEPALIVE=${KEEPALIVE:-300}
CONCURRENCY=${CONCURRENCY:-500}
RATE=${RATE:-0}
HOLD=${HOLD:-20}
TIMEOUT=${TIMEOUT:-600}
TERN=${TERN:-$ROOT/target/release/tern}
MOSQUITTO=${MOSQUITTO:-$(command -v mosquitto || true)}
OUT=${OUT:-$(mktemp -d /tmp/tern-million.XXXXXX)}
PORT=${PORT:-21883}
FDS=$((COUNT + 1000))

die() { echo "million.sh: $*" >&2; exit 1; }
[ -x "$TERN" ] || die "$TERN not found: cargo build --release -j2 -p tern"
mkdir -p "$OUT"

# Memory first: refuse rather than push the machine into the OOM killer.
avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
need_kb=$((COUNT * 12))
if [ "$avail_kb" -lt "$need_kb" ]; then
  die "MemAvailable is $((avail_kb / 1024)) MB; $COUNT connections need about $((need_kb / 1024)) MB"
fi

PIDS=()
SAVED=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  local entry
  for entry in "${SAVED[@]}"; do sysctl -qw "$entry" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# at_least KEY VALUE: raises a sysctl to VALUE (kept when already higher; restored on exit).
at_least() {
  local key=$1 value=$2 current
  current=$(sysctl -n "$key" 2>/dev/null) || return 0
  if [ "$current" -lt "$value" ]; then
    SAVED+=("$key=$current")
    sysctl -qw "$key=$value" || die "cannot set $key=$value (run as root, or set it yourself)"
  fi
}
# set_value KEY VALUE: sets a multi-valued sysctl (restored on exit).
set_value() {
  local key=$1 value=$2 current
  current=$(sysctl -n "$key" 2>/dev/null | tr -s '\t ' ' ') || return 0
  if [ "$current" != "$value" ]; then
    SAVED+=("$key=$current")
    sysctl -qw "$key=$value" || die "cannot set $key=\"$value\" (run as root, or set it yourself)"
  fi
}
at_least fs.nr_open $((FDS + 1024))
at_least fs.file-max $((2 * COUNT + 100000))
set_value net.ipv4.ip_local_port_range "1024 65535"
at_least net.core.somaxconn 65535
at_least net.ipv4.tcp_max_syn_backlog 65535
if [ -e /proc/sys/net/netfilter/nf_conntrack_max ]; then
  at_least net.netfilter.nf_conntrack_max $((2 * COUNT + 100000))
fi
# Pages: 3 x COUNT leaves room for a page per socket under pressure; high = 2 x that.
read -r tcp_min tcp_pressure tcp_high < <(sysctl -n net.ipv4.tcp_mem)
if [ "$tcp_high" -lt $((6 * COUNT)) ]; then
  SAVED+=("net.ipv4.tcp_mem=$tcp_min $tcp_pressure $tcp_high")
  sysctl -qw net.ipv4.tcp_mem="$((2 * COUNT)) $((3 * COUNT)) $((6 * COUNT))" || die "cannot set net.ipv4.tcp_mem"
fi

# The descriptor limit of this shell, inherited by the broker and the bench.
ulimit -Hn "$FDS" 2>/dev/null || true
ulimit -n "$FDS" 2>/dev/null || die "cannot raise ulimit -n to $FDS: the hard limit is $(ulimit -Hn) and raising it needs CAP_SYS_RESOURCE; COUNT=$(( $(ulimit -Hn) - 1000 )) fits"

start_broker() {
  local name=$1 log=$OUT/$1.broker.log
  case $name in
    tern)
      cat > "$OUT/tern.toml" <<TOML
log_level = "warn"
[limits]
max_connections = $((COUNT + 1000))
TOML
      (cd "$OUT" && exec "$TERN" serve --listen "127.0.0.1:$PORT" --config "$OUT/tern.toml" --in-memory) >"$log" 2>&1 &
      ;;
    mosquitto)
      [ -n "$MOSQUITTO" ] || die "mosquitto not installed"
      cat > "$OUT/mosquitto.conf" <<CONF
user $(id -un)
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
max_connections -1
max_queued_messages 0
set_tcp_nodelay true
sys_interval 0
log_dest stderr
log_type error
log_type warning
CONF
      "$MOSQUITTO" -c "$OUT/mosquitto.conf" >"$log" 2>&1 &
      ;;
    *) die "unknown broker $name" ;;
  esac
  BROKER_PID=$!
  PIDS+=("$BROKER_PID")
  local i
  for i in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
    kill -0 "$BROKER_PID" 2>/dev/null || die "$name did not start: $(tail -3 "$log")"
    sleep 0.1
  done
  die "$name is not listening on $PORT"
}

run_broker() {
  local name=$1
  echo "== $name: $COUNT connections from $SOURCES, keep-alive ${KEEPALIVE}s" >&2
  start_broker "$name"
  sleep 1
  # The bench's hold (HOLD s) starts once every connection is up; the latency run starts
  # then too and ends inside it.
  timeout $((TIMEOUT + HOLD + 60)) "$TERN" bench conn --port "$PORT" --clients "$COUNT" \
    --rate "$RATE" --concurrency "$CONCURRENCY" --keepalive "$KEEPALIVE" \
    --source-addrs "$SOURCES" --duration "$HOLD" --pid "$BROKER_PID" --json \
    >"$OUT/$name.conn.json" 2>"$OUT/$name.conn.log" &
  local bench=$!
  PIDS+=("$bench")
  local start=$SECONDS
  local all
  all="conns $(echo "$COUNT" | sed ':a;s/\B[0-9]\{3\}\>/ &/;ta') of"
  until grep -q "$all" "$OUT/$name.conn.log" 2>/dev/null; do
    kill -0 "$bench" 2>/dev/null || break
    if [ $((SECONDS - start)) -gt "$TIMEOUT" ]; then
      echo "   not all connected within ${TIMEOUT}s" >&2
      break
    fi
    sleep 1
  done
  # A subscriber and a publisher besides the idle ones.
  timeout 60 "$TERN" bench latency --port "$PORT" --clients 1 --qos 1 --rate 1000 \
    --warmup 1 --duration 5 --json --quiet >"$OUT/$name.latency.json" 2>"$OUT/$name.latency.log" || true
  wait "$bench" || true
  kill "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
  python3 - "$name" "$OUT" <<'PY'
import json, sys
name, out = sys.argv[1], sys.argv[2]
def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception:
        return {}
run = load(f"{out}/{name}.conn.json")
conn = run.get("connections", {})
lat = load(f"{out}/{name}.latency.json")
l = lat.get("latency_us", {})
def n(x, fmt="{:,.0f}"):
    return fmt.format(x).replace(",", " ") if x is not None else "-"
print(f"| {name} | {n(conn.get('established'))} of {n(conn.get('target'))} | "
      f"{n(conn.get('bytes_per_connection'))} | {n(conn.get('ramp_s'), '{:.1f}')} s | "
      f"{n(conn.get('connect_rate'))}/s | {n(l.get('p50'))} / {n(l.get('p99'))} / {n(l.get('max'))} µs | "
      f"{run.get('check', '-')} / {lat.get('check', '-')} |")
PY
}

echo "| broker | connections | broker bytes/conn | time to connect all | rate | publish latency p50 / p99 / max | checks (conn / latency) |"
echo "|---|---|---|---|---|---|---|"
for broker in $BROKERS; do
  run_broker "$broker"
done
echo "results in $OUT" >&2
