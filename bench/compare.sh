#!/usr/bin/env bash
# bench/compare.sh: Tern against Mosquitto (and rumqttd when it is on PATH) with `tern bench`.
#
# Every scenario runs against every broker in alternating order (A B, B A, A B, ...), each run
# against a freshly started broker, and the table shows the median of the rounds and the ratio
# Tern / Mosquitto. Every run also passes `tern bench`'s delivery check, or the table says so.
#
#   bench/compare.sh                      # 10 s per run, 3 rounds
#   DURATION=5 ROUNDS=3 bench/compare.sh
#   TRANSPORTS="tcp tls ws wss" SCENARIOS="fanin-q1 idle-10k connect-rate" bench/compare.sh
#
# Environment: DURATION (seconds measured per run, default 10), ROUNDS (default 3), WARMUP
# (seconds before measuring, default 1), PORT_BASE (first port used, default 18900), OUT
# (directory for the JSON results and logs, default a new /tmp/tern-compare.*), TERN (the tern
# binary, default target/release/tern, built if missing), MOSQUITTO, RUMQTTD (binaries),
# SCENARIOS (space-separated subset of the scenario names below), INFLIGHT (outbound QoS 1/2
# messages in flight per client allowed by every broker; default 0, no limit), TRANSPORTS
# (space-separated: tcp tls ws wss; default tcp; every scenario runs over each, against a
# listener of that kind on every broker; rumqttd needs its default features for tls, ws and
# wss: `cargo install rumqttd --version 0.20.0`, and a build without them has empty rows), KEY_TYPE (the test
# certificates' key for tls and wss: ec, P-256, the default, or rsa, 2048 bits; made with
# openssl at run time, in $OUT/certs), BROKERS (space-separated subset of tern mosquitto
# rumqttd; default all that are installed), BENCH_THREADS (the bench's runtime threads, default
# 1; a full TLS handshake costs the bench about what it costs the broker, so the TLS connect
# rate may need 2 where cores are to spare), PLACEMENTS (space-separated: free same split;
# default free; "same" pins the broker and the bench to CPU 0, "split" the broker to CPU 1 and
# the bench to CPU 0, with taskset: every scenario runs in each, rows marked ~same, ~split).
# TERN_WORKERS sets Tern's `workers` (default 0: one per core).
# The table gives Tern / Mosquitto and Tern / best peer (the best other broker of the row).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-1}
PORT_BASE=${PORT_BASE:-18900}
TERN=${TERN:-$ROOT/target/release/tern}
OUT=${OUT:-$(mktemp -d /tmp/tern-compare.XXXXXX)}
ONLY=${SCENARIOS:-}
INFLIGHT=${INFLIGHT:-0}
TRANSPORTS=${TRANSPORTS:-tcp}
PLACEMENTS=${PLACEMENTS:-free}
TERN_WORKERS=${TERN_WORKERS:-0}
ONLY_BROKERS=${BROKERS:-}
unset BROKERS
KEY_TYPE=${KEY_TYPE:-ec}
BENCH_THREADS=${BENCH_THREADS:-1}
case $BENCH_THREADS in ''|*[!0-9]*|0) echo "compare.sh: BENCH_THREADS must be a positive number" >&2; exit 1 ;; esac
for transport in $TRANSPORTS; do
  case $transport in tcp|tls|ws|wss) ;; *) echo "compare.sh: TRANSPORTS: unknown transport $transport (tcp tls ws wss)" >&2; exit 1 ;; esac
done
for placement in $PLACEMENTS; do
  case $placement in free) ;; same|split) command -v taskset >/dev/null || { echo "compare.sh: PLACEMENTS=$placement needs taskset (util-linux)" >&2; exit 1; } ;;
    *) echo "compare.sh: PLACEMENTS: unknown placement $placement (free same split)" >&2; exit 1 ;; esac
done
case $KEY_TYPE in ec|rsa) ;; *) echo "compare.sh: KEY_TYPE must be ec or rsa" >&2; exit 1 ;; esac
case $INFLIGHT in ''|*[!0-9]*) echo "compare.sh: INFLIGHT must be a number" >&2; exit 1 ;; esac
if [ "$INFLIGHT" -eq 0 ]; then TERN_INFLIGHT=65534; RUMQTTD_INFLIGHT=65534; else TERN_INFLIGHT=$INFLIGHT; RUMQTTD_INFLIGHT=$INFLIGHT; fi
mkdir -p "$OUT"

# name | tern bench arguments (every run adds --json --quiet --port --pid)
ALL_SCENARIOS=(
  "fanin-q0|fanin --clients 8 --qos 0"
  "fanin-q1|fanin --clients 8 --qos 1"
  "fanin-q2|fanin --clients 8 --qos 2"
  "fanout-q0|fanout --clients 100 --qos 0"
  "pairs-q1|pairs --clients 100 --qos 1"
  "latency-q1|latency --clients 1 --qos 1 --rate 1000"
  "idle-10k|conn --clients 10000 --rate 2000"
  "connect-rate|conn --clients 10000 --rate 0 --concurrency 100"
)

die() { echo "compare.sh: $*" >&2; exit 1; }

# --- What is needed -------------------------------------------------------------------------

command -v python3 >/dev/null || die "python3 is needed for the results table"
MOSQUITTO=${MOSQUITTO:-$(command -v mosquitto || true)}
if [ -z "$MOSQUITTO" ] && [ -x /usr/sbin/mosquitto ]; then MOSQUITTO=/usr/sbin/mosquitto; fi
[ -n "$MOSQUITTO" ] && [ -x "$MOSQUITTO" ] || die "mosquitto not found. Install it:
  Debian/Ubuntu: sudo apt-get install mosquitto   (the service it starts can stay stopped:
                 sudo systemctl disable --now mosquitto)
  Fedora:        sudo dnf install mosquitto
  macOS:         brew install mosquitto
or point MOSQUITTO at the binary."
RUMQTTD=${RUMQTTD:-$(command -v rumqttd || true)}

if [ ! -x "$TERN" ]; then
  echo "building $TERN (cargo build --release -j2 -p tern)..." >&2
  (cd "$ROOT" && cargo build --release -j2 -p tern) || die "cannot build tern"
fi
"$TERN" bench --help >/dev/null 2>&1 || die "$TERN has no bench command: rebuild it"

# 10 000 connections need as many descriptors in the bench and in the broker (which inherits
# this shell's limit): raise the soft limit to the hard limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10100 ]; then
  echo "warning: open-files limit $(ulimit -n) < 10100: the 10 000-connection runs will fail;" \
       "raise the hard limit (/etc/security/limits.conf) and rerun" >&2
fi

BROKERS=(tern mosquitto)
[ -n "$RUMQTTD" ] && BROKERS+=(rumqttd)
if [ -n "$ONLY_BROKERS" ]; then
  chosen=()
  for broker in "${BROKERS[@]}"; do
    if [[ " $ONLY_BROKERS " == *" $broker "* ]]; then chosen+=("$broker"); fi
  done
  [ ${#chosen[@]} -gt 0 ] || die "BROKERS=$ONLY_BROKERS: none of them is available (${BROKERS[*]})"
  BROKERS=("${chosen[@]}")
fi

RUN=()
for entry in "${ALL_SCENARIOS[@]}"; do
  name=${entry%%|*}
  if [ -z "$ONLY" ] || [[ " $ONLY " == *" $name "* ]]; then RUN+=("$entry"); fi
done
[ ${#RUN[@]} -gt 0 ] || die "no scenario matches SCENARIOS=$ONLY"

# --- Certificates (tls, wss) ------------------------------------------------------------------

# A CA and a server certificate for 127.0.0.1 and localhost, X.509 v3 (rustls refuses v1), made
# fresh for this run: nothing private is kept in the repository.
CERTS=$OUT/certs
make_certificates() {
  command -v openssl >/dev/null || die "openssl is needed for the tls and wss transports"
  mkdir -p "$CERTS"
  local newkey
  case $KEY_TYPE in
    ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    rsa) newkey=(-newkey rsa:2048) ;;
  esac
  (
    cd "$CERTS"
    openssl req -x509 "${newkey[@]}" -nodes -days 7 -subj "/CN=tern compare CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout ca.key -out ca.pem
    openssl req "${newkey[@]}" -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" > server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
      -extfile server.ext -out server.pem
  ) >"$OUT/certs.log" 2>&1 || die "openssl could not make the test certificates (see $OUT/certs.log)"
}
if [[ " $TRANSPORTS " == *" tls "* || " $TRANSPORTS " == *" wss "* ]]; then make_certificates; fi

# --- Brokers --------------------------------------------------------------------------------

BROKER_PID=""
cleanup() {
  if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

TERN_SERVE_EXTRA=()
# Mosquitto runs with persistence off; a Tern with a store runs in memory to match.
if "$TERN" serve --help 2>/dev/null | grep -q -- '--in-memory'; then TERN_SERVE_EXTRA+=(--in-memory); fi

# The listener of each transport: Tern's [[listeners]] kind, Mosquitto's listener lines.
tern_kind() {
  case $1 in tcp) echo mqtt ;; tls) echo mqtts ;; ws) echo ws ;; wss) echo wss ;; esac
}
mosquitto_listener() {
  local transport=$1 port=$2
  echo "listener $port 127.0.0.1"
  case $transport in ws|wss) echo "protocol websockets" ;; esac
  case $transport in
    tls|wss) printf '%s\n' "cafile $CERTS/ca.pem" "certfile $CERTS/server.pem" "keyfile $CERTS/server.key" ;;
  esac
}

# Where the broker and the bench run (PLACEMENTS): "free" leaves it to the scheduler, "same"
# pins both to CPU 0 (every hand-over between them stays on one core), "split" pins the broker
# to CPU 1 and the bench to CPU 0 (every hand-over wakes the other core).
BROKER_PIN=()
BENCH_PIN=()
set_placement() {
  case $1 in
    free) BROKER_PIN=(); BENCH_PIN=() ;;
    same) BROKER_PIN=(taskset -c 0); BENCH_PIN=(taskset -c 0) ;;
    split) BROKER_PIN=(taskset -c 1); BENCH_PIN=(taskset -c 0) ;;
    *) die "PLACEMENTS: unknown placement $1 (free, same, split)" ;;
  esac
}

# start_broker NAME PORT LOG TRANSPORT: starts a fresh broker with a listener of TRANSPORT on
# PORT, sets BROKER_PID, waits for the port.
start_broker() {
  local name=$1 port=$2 log=$3 transport=${4:-tcp} conf
  case $name in
    tern)
      conf=$OUT/tern.toml
      # No queue or in-flight limit distorts a closed-loop run (the bench bounds what is
      # outstanding); Mosquitto gets the same below.
      cat > "$conf" <<TOML
log_level = "warn"
workers = $TERN_WORKERS
[limits]
max_connections = 1000000
max_inflight = $TERN_INFLIGHT
max_queued_messages = 100000000
TOML
      local listen=(--listen "127.0.0.1:$port")
      if [ "$transport" != tcp ]; then
        # A file with [[listeners]] and no `listen` opens only its listeners.
        listen=()
        cat >> "$conf" <<TOML

[[listeners]]
name = "bench-$transport"
kind = "$(tern_kind "$transport")"
bind = "127.0.0.1:$port"
TOML
        case $transport in
          tls|wss) echo "tls = { cert = \"$CERTS/server.pem\", key = \"$CERTS/server.key\" }" >> "$conf" ;;
        esac
        case $transport in ws|wss) echo 'path = "/mqtt"' >> "$conf" ;; esac
      fi
      # Started in $OUT: a Tern that keeps a data directory by default keeps it there.
      (cd "$OUT" && exec "${BROKER_PIN[@]}" "$TERN" serve "${listen[@]}" --config "$conf" "${TERN_SERVE_EXTRA[@]}") >>"$log" 2>&1 &
      ;;
    mosquitto)
      conf=$OUT/mosquitto-$port.conf
      # `user`: run as root, Mosquitto would otherwise switch to its own user, who cannot
      # read the keys in $OUT (no effect when not root).
      cat > "$conf" <<CONF
user $(id -un)
$(mosquitto_listener "$transport" "$port")
allow_anonymous true
persistence false
# 0: no limit (INFLIGHT=0), as for Tern; the bench's closed loop bounds what is outstanding.
max_inflight_messages $INFLIGHT
max_queued_messages 0
max_connections -1
set_tcp_nodelay true
sys_interval 0
log_dest stderr
log_type error
log_type warning
CONF
      if [ "$transport" = ws ] || [ "$transport" = wss ]; then
        # Mosquitto 2.0.11 refuses to start with websockets listeners only ("Unable to start
        # any listening sockets"): give it a unix socket nobody uses as well.
        echo "listener 0 $OUT/mosquitto-$port.sock" >> "$conf"
      fi
      "${BROKER_PIN[@]}" "$MOSQUITTO" -c "$conf" >>"$log" 2>&1 &
      ;;
    rumqttd)
      conf=$OUT/rumqttd-$port.toml
      # rumqttd's WebSocket servers are [ws.N], its MQTT 3.1.1 ones [v4.N]; either takes a
      # [.tls] table (built with its default features; without capath no client certificate).
      local section=v4.1
      case $transport in ws|wss) section=ws.1 ;; esac
      cat > "$conf" <<TOML
id = 0
[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10
[$section]
name = "bench-$transport"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 0
[$section.connections]
connection_timeout_ms = 60000
max_payload_size = 20480
max_inflight_count = $RUMQTTD_INFLIGHT
dynamic_filters = true
TOML
      case $transport in
        tls|wss) printf '%s\n' "[$section.tls]" "certpath = \"$CERTS/server.pem\"" \
          "keypath = \"$CERTS/server.key\"" >> "$conf" ;;
      esac
      "${BROKER_PIN[@]}" "$RUMQTTD" -c "$conf" >>"$log" 2>&1 &
      ;;
  esac
  BROKER_PID=$!
  python3 - "$port" <<'PY' || { echo "broker $name did not listen on $port (see $log)" >&2; return 1; }
import socket, sys, time
deadline = time.time() + 10
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
PY
}

stop_broker() {
  if [ -n "$BROKER_PID" ]; then
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
  fi
}

# --- Rounds ---------------------------------------------------------------------------------

echo "results in $OUT; brokers: ${BROKERS[*]}; $ROUNDS rounds of ${#RUN[@]} scenarios" \
     "over $TRANSPORTS, ${DURATION}s each after ${WARMUP}s warm-up; in-flight limit" \
     "${INFLIGHT} (0: none)$( [[ " $TRANSPORTS " == *" tls "* || " $TRANSPORTS " == *" wss "* ]] && echo "; $KEY_TYPE keys")" >&2
port=$PORT_BASE
for round in $(seq 1 "$ROUNDS"); do
  order=("${BROKERS[@]}")
  if [ $((round % 2)) -eq 0 ]; then
    order=(); for ((i=${#BROKERS[@]}-1; i>=0; i--)); do order+=("${BROKERS[$i]}"); done
  fi
  for placement in $PLACEMENTS; do
  set_placement "$placement"
  for transport in $TRANSPORTS; do
  for entry in "${RUN[@]}"; do
    name=${entry%%|*}
    # Results over tcp keep the plain scenario name; other transports add @transport, pinned
    # placements ~placement.
    label=$name
    [ "$transport" = tcp ] || label=$name@$transport
    [ "$placement" = free ] || label=$label~$placement
    read -r -a args <<<"${entry#*|}"
    for broker in "${order[@]}"; do
      port=$((port + 1))
      base=$OUT/r$round-$broker-$label
      if ! start_broker "$broker" "$port" "$base.broker.log" "$transport"; then stop_broker; continue; fi
      extra=(--warmup "$WARMUP" --duration "$DURATION")
      # A client must not have more QoS 1/2 publishes in flight than the broker allows (MQTT
      # 3.1.1 cannot tell it; Mosquitto drops the connection).
      if [ "$INFLIGHT" -gt 0 ] && [ "$INFLIGHT" -lt 100 ]; then extra+=(--inflight "$INFLIGHT"); fi
      if [ "${args[0]}" = conn ]; then extra=(--duration "$DURATION"); fi
      extra+=(--transport "$transport" --threads "$BENCH_THREADS")
      case $transport in tls|wss) extra+=(--cafile "$CERTS/ca.pem") ;; esac
      set +e
      "${BENCH_PIN[@]}" "$TERN" bench "${args[@]}" "${extra[@]}" --port "$port" --pid "$BROKER_PID" --json --quiet \
        >"$base.json" 2>"$base.log"
      status=$?
      set -e
      stop_broker
      verdict=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["check"])' "$base.json" 2>/dev/null || echo ERROR)
      printf 'round %s  %-17s %-10s %s (exit %s)\n' "$round" "$label" "$broker" "$verdict" "$status" >&2
      [ "$verdict" = ERROR ] && rm -f "$base.json" && tail -n 3 "$base.log" >&2
    done
  done
  done
  done
done

# --- Table ----------------------------------------------------------------------------------

python3 - "$OUT" "${BROKERS[@]}" <<'PY' | tee "$OUT/results.md"
import glob, json, os, re, statistics, sys

out, brokers = sys.argv[1], sys.argv[2:]
runs = {}
for path in sorted(glob.glob(os.path.join(out, "r*-*.json"))):
    m = re.match(r"r(\d+)-([a-z]+)-(.+)\.json$", os.path.basename(path))
    try:
        data = json.load(open(path))
    except (OSError, ValueError):
        continue
    runs.setdefault((m.group(3), m.group(2)), []).append(data)

def g(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d

# scenario -> (metric label, getter, higher is better)
METRICS = {
    "fanin-q0": ("deliveries/s", lambda d: g(d, "received_per_s"), True),
    "fanin-q1": ("deliveries/s", lambda d: g(d, "received_per_s"), True),
    "fanin-q2": ("deliveries/s", lambda d: g(d, "received_per_s"), True),
    "fanout-q0": ("deliveries/s", lambda d: g(d, "received_per_s"), True),
    "pairs-q1": ("deliveries/s", lambda d: g(d, "received_per_s"), True),
    "latency-q1": ("p99 latency µs", lambda d: g(d, "latency_us", "p99"), False),
    "idle-10k": ("broker bytes/conn", lambda d: g(d, "connections", "bytes_per_connection"), False),
    "connect-rate": ("connections/s", lambda d: g(d, "connections", "connect_rate"), True),
}
def per_core(d):
    rate, cpu = g(d, "received_per_s"), g(d, "broker", "cpu_pct")
    return rate / (cpu / 100) if rate is not None and cpu else None

PER_CORE = ("deliveries per broker CPU-s", per_core, True)
EXTRA = {
    "fanin-q0": [PER_CORE], "fanin-q1": [PER_CORE], "fanin-q2": [PER_CORE],
    "fanout-q0": [PER_CORE], "pairs-q1": [PER_CORE],
    "latency-q1": [("p50 latency µs", lambda d: g(d, "latency_us", "p50"), False)],
    "connect-rate": [("CONNACK p99 µs", lambda d: g(d, "connack_us", "p99"), False)],
}

def fmt(v):
    if v is None:
        return "-"
    return f"{v:,.0f}".replace(",", " ") if abs(v) >= 100 else f"{v:.1f}"

def cell(scenario, broker, getter):
    data = runs.get((scenario, broker), [])
    values = [getter(d) for d in data if getter(d) is not None]
    if not values:
        return None, "-"
    checks = [d.get("check") for d in data]
    median = statistics.median(values)
    mark = "" if all(c == "PASS" for c in checks) else f" ({checks.count('FAIL')} FAIL)"
    return median, fmt(median) + mark

names = {"tern": "Tern", "mosquitto": "Mosquitto", "rumqttd": "rumqttd"}
peers = [b for b in brokers if b != "tern"]
header = ["scenario", "metric"] + [names[b] for b in brokers] + ["Tern / Mosquitto", "Tern / best peer"]
print("| " + " | ".join(header) + " |")
print("|" + "|".join("---" for _ in header) + "|")
# Rows: each scenario over tcp, then over the other transports ("fanin-q1@tls").
transports = ["tcp", "tls", "ws", "wss"]
placements = ["free", "same", "split"]
def parts(s):
    rest, _, placement = s.partition("~")
    base, _, transport = rest.partition("@")
    return base, transport or "tcp", placement or "free"
def key(s):
    base, transport, placement = parts(s)
    return (placements.index(placement) if placement in placements else 9,
            transports.index(transport) if transport in transports else 9,
            list(METRICS).index(base) if base in METRICS else 99)
scenarios = sorted({s for (s, b) in runs if parts(s)[0] in METRICS}, key=key)
def ratio_text(t, other, higher):
    if t is None or not other:
        return "-"
    ratio = t / other
    better = (ratio > 1) == higher if ratio != 1 else False
    return f"{ratio:.2f}" + (" (better)" if better else "")
for scenario in scenarios:
    base = parts(scenario)[0]
    for label, getter, higher in [METRICS[base]] + EXTRA.get(base, []):
        row = [scenario, label]
        medians = {}
        for b in brokers:
            medians[b], text = cell(scenario, b, getter)
            row.append(text)
        t = medians.get("tern")
        row.append(ratio_text(t, medians.get("mosquitto"), higher))
        # The best of the other brokers on this row: the highest rate, the lowest latency.
        known = [medians[b] for b in peers if medians.get(b) is not None]
        best = (max(known) if higher else min(known)) if known else None
        row.append(ratio_text(t, best, higher))
        print("| " + " | ".join(row) + " |")

print()
cpu = {b: [g(d, "bench_cpu_pct") for (s, bb), ds in runs.items() if bb == b for d in ds] for b in brokers}
cpu_text = ", ".join(f"{names[b]} runs max {max(v):.0f}%" for b, v in cpu.items() if v and all(x is not None for x in v))
threads = {d.get("bench_threads") for ds in runs.values() for d in ds if d.get("bench_threads")}
thread_text = "one thread" if threads in (set(), {1}) else f"{'/'.join(str(t) for t in sorted(threads))} threads"
print(f"bench CPU ({thread_text}, % of one core): {cpu_text}")
bcpu = {}
for (s, b), ds in runs.items():
    for d in ds:
        c = g(d, "broker", "cpu_pct")
        if c is not None and parts(s)[0] in ("fanin-q0", "fanin-q1", "fanin-q2", "fanout-q0", "pairs-q1"):
            bcpu.setdefault(b, []).append(c)
print("broker CPU in throughput runs (median, % of one core): " +
      ", ".join(f"{names[b]} {statistics.median(v):.0f}%" for b, v in bcpu.items()))
others = [g(d, "other_cpu_pct") for ds in runs.values() for d in ds if g(d, "other_cpu_pct") is not None]
if others:
    med = statistics.median(others)
    print(f"other processes on the machine during the runs: median {med:.0f}%, max {max(others):.0f}% of one core"
          + (" -- the machine was busy: figures are disturbed, compare the per-CPU rows" if med > 15 else ""))
fails = sorted({f"{s}/{b}" for (s, b), ds in runs.items() for d in ds if d.get("check") != "PASS"})
if fails:
    print("delivery check failed in: " + ", ".join(fails) + " (details in the JSON files)")
print(f"medians of {max((len(v) for v in runs.values()), default=0)} rounds; raw results: {out}")
PY
