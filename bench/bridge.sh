#!/usr/bin/env bash
# bench/bridge.sh: messages per second through a bridge (issue 15), Tern's bridge next to
# Mosquitto's on the same machine and the same remote broker.
#
# Publishers on the LOCAL broker, the subscriber on the REMOTE broker, the local broker
# bridging `bench/#` out to the remote at QoS 1 (the rule's QoS is a maximum: QoS 0 messages
# stay QoS 0). The load is `tern bench fanin` with --sub-port (closed loop: every message is
# checked end to end for loss, duplicates and order; the run fails on a failed check).
#
# Contenders (a fresh remote and a fresh local broker per run, runs interleaved, the order of
# contenders alternating by round; medians of ROUNDS rounds):
#   tern        `tern serve` with one [[bridges]] (defaults: durability "process", the bridge's
#               queue is its stored session) and protocol MQTT 5 to the remote;
#   tern-mem    the same with durability = "memory";
#   mosquitto   Mosquitto 2.0 with `connection` / `address` / `topic bench/# out 1`,
#               bridge_protocol_version mqttv50 (persistence off: its default).
# The remote is REMOTE=mosquitto (default: Mosquitto 2.0, the broker a Tern bridge most often
# meets) or REMOTE=tern (`tern serve --in-memory`).
#
#   cargo build --release -j2 -p tern && bench/bridge.sh
#   ROUNDS=3 DURATION=10 PUBLISHERS=4 REMOTE=mosquitto bench/bridge.sh
#
# Run it on a quiet machine: two brokers and the bench share the cores.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TERN=${TERN:-$ROOT/target/release/tern}
MOSQUITTO=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
PUBLISHERS=${PUBLISHERS:-4}
REMOTE=${REMOTE:-mosquitto}
CONTENDERS=${CONTENDERS:-"tern tern-mem mosquitto"}
QOSES=${QOSES:-"0 1"}
LOCAL_PORT=${LOCAL_PORT:-18870}
REMOTE_PORT=${REMOTE_PORT:-18871}
OUT=${OUT:-$(mktemp -d /tmp/tern-bridge-bench.XXXXXX)}
[ -x "$TERN" ] || { echo "no $TERN: cargo build --release -j2 -p tern" >&2; exit 1; }
[ -x "$MOSQUITTO" ] || { echo "no mosquitto (apt-get install mosquitto)" >&2; exit 1; }
USER_LINE=
[ "$(id -u)" = 0 ] && USER_LINE="user root"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() { # wait_port PORT PID
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

start_remote() { # start_remote DIR; sets remote_pid
  local dir=$1
  case $REMOTE in
    mosquitto)
      printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nlog_dest none\n%s\n' \
        "$REMOTE_PORT" "$USER_LINE" >"$dir/remote.conf"
      "$MOSQUITTO" -c "$dir/remote.conf" >>"$dir/remote.log" 2>&1 & ;;
    tern)
      (cd "$dir" && exec "$TERN" serve --listen "127.0.0.1:$REMOTE_PORT" --in-memory \
        --log-level warn) >>"$dir/remote.log" 2>&1 & ;;
    *) echo "REMOTE must be mosquitto or tern" >&2; exit 1 ;;
  esac
  remote_pid=$!
  pids+=("$remote_pid")
  wait_port "$REMOTE_PORT" "$remote_pid" || { echo "the remote did not start ($dir)" >&2; exit 1; }
}

start_local() { # start_local NAME DIR; sets local_pid
  local name=$1 dir=$2
  case $name in
    tern|tern-mem)
      local durability=process
      [ "$name" = tern-mem ] && durability=memory
      cat >"$dir/local.toml" <<EOF
data_dir = "$dir/data"
durability = "$durability"
log_level = "warn"
[limits]
max_queued_messages = 100000

[[bridges]]
name = "bench"
address = "127.0.0.1:$REMOTE_PORT"
protocol = "5"
client_id = "bench-bridge"
clean_start = true
topics = [{ pattern = "bench/#", direction = "out", qos = 1 }]
EOF
      (cd "$dir" && exec "$TERN" serve --listen "127.0.0.1:$LOCAL_PORT" \
        --config "$dir/local.toml") >>"$dir/local.log" 2>&1 & ;;
    mosquitto)
      cat >"$dir/local.conf" <<EOF
listener $LOCAL_PORT 127.0.0.1
allow_anonymous true
max_queued_messages 100000
log_dest none
$USER_LINE
connection bench
address 127.0.0.1:$REMOTE_PORT
bridge_protocol_version mqttv50
cleansession true
remote_clientid bench-bridge
# No \$SYS/broker/connection/... state messages (Tern refuses a will on a \$ topic: 0x87).
notifications false
topic bench/# out 1
EOF
      "$MOSQUITTO" -c "$dir/local.conf" >>"$dir/local.log" 2>&1 & ;;
  esac
  local_pid=$!
  pids+=("$local_pid")
  wait_port "$LOCAL_PORT" "$local_pid" || { echo "$name did not start ($dir)" >&2; exit 1; }
}

wait_bridged() { # a probe published on the local broker until the remote's subscriber has it
  "$TERN" sub -p "$REMOTE_PORT" -t bench/ready -C 1 -W 15 >/dev/null 2>&1 &
  local sub=$!
  for _ in $(seq 150); do
    kill -0 "$sub" 2>/dev/null || break
    "$TERN" pub -p "$LOCAL_PORT" -t bench/ready -m x >/dev/null 2>&1 || true
    sleep 0.1
  done
  wait "$sub"
}

stop_all() {
  kill "$local_pid" "$remote_pid" 2>/dev/null || true
  wait "$local_pid" "$remote_pid" 2>/dev/null || true
  pids=()
}

echo "round contender qos received/s local-broker-cpu% check" >&2
for round in $(seq "$ROUNDS"); do
  read -r -a order <<<"$CONTENDERS"
  if [ $((round % 2)) -eq 0 ]; then
    for ((i = 0, j = ${#order[@]} - 1; i < j; i++, j--)); do
      t=${order[i]}; order[i]=${order[j]}; order[j]=$t
    done
  fi
  for name in "${order[@]}"; do
    for qos in $QOSES; do
      dir=$OUT/r$round-$name-q$qos
      mkdir -p "$dir"
      start_remote "$dir"
      start_local "$name" "$dir"
      if ! wait_bridged; then
        echo "round $round $name: the bridge did not carry a probe (see $dir)" >&2
        stop_all; exit 1
      fi
      status=0
      "$TERN" bench fanin --clients "$PUBLISHERS" --qos "$qos" --port "$LOCAL_PORT" \
        --sub-port "$REMOTE_PORT" --topic-prefix bench/run --duration "$DURATION" \
        --warmup "$WARMUP" --pid "$local_pid" --json --quiet \
        >"$dir/bench.json" 2>"$dir/bench.log" || status=$?
      stop_all
      python3 - "$dir/bench.json" "$round" "$name" "$qos" >&2 <<'PY' || true
import json, sys
d = json.load(open(sys.argv[1]))
print(sys.argv[2], sys.argv[3], sys.argv[4], int(d.get("received_per_s") or 0),
      (d.get("broker") or {}).get("cpu_pct"), d.get("check"))
PY
      [ "$status" = 0 ] || echo "round $round $name q$qos: the bench failed ($status; $dir)" >&2
    done
  done
done

python3 - "$OUT" "$REMOTE" <<'PY'
import glob, json, os, re, statistics, sys
out, remote = sys.argv[1], sys.argv[2]
runs = {}
for path in glob.glob(os.path.join(out, "r*-*-q*", "bench.json")):
    m = re.match(r"r(\d+)-(.+)-q(\d)$", os.path.basename(os.path.dirname(path)))
    try:
        d = json.load(open(path))
    except ValueError:
        continue
    ok = d.get("check") in (True, "PASS", "pass") or (d.get("verdict") or {}).get("pass")
    rate = d.get("received_per_s") or 0
    cpu = (d.get("broker") or {}).get("cpu_pct")
    runs.setdefault((m.group(2), int(m.group(3))), []).append((int(m.group(1)), rate, cpu, ok))
print(f"remote: {remote}; medians of the rounds; local broker CPU in % of one core and in "
      "microseconds of CPU per message carried")
print("| local broker | QoS | messages/s | local CPU % | local CPU µs/msg | rounds (messages/s) "
      "| checks |")
print("|---|---|---|---|---|---|---|")
for (name, qos) in sorted(runs, key=lambda k: (k[1], k[0])):
    values = [v[1:] for v in sorted(runs[(name, qos)])]  # in round order
    rates = [v[0] for v in values]
    cpus = [v[1] for v in values if v[1] is not None]
    per_msg = [v[1] / 100 / v[0] * 1e6 for v in values if v[1] is not None and v[0]]
    checks = "all passed" if all(v[2] for v in values) else "FAILED: " + ",".join(
        str(i + 1) for i, v in enumerate(values) if not v[2])
    cpu = f"{statistics.median(cpus):.0f}" if cpus else "-"
    us = f"{statistics.median(per_msg):.1f}" if per_msg else "-"
    print(f"| {name} | {qos} | {statistics.median(rates):,.0f} | {cpu} | {us} | "
          f"{', '.join(f'{r:,.0f}' for r in rates)} | {checks} |")
print(f"(runs in {out})")
PY
