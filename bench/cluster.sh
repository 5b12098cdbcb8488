#!/usr/bin/env bash
# bench/cluster.sh: a Tern cluster on this machine (issue 16).
#
# Three `tern serve` processes form a cluster on 127.0.0.1 (cluster links on their own ports),
# each with a store (durability "process") and an admin listener for /metrics. The loads are
# `tern bench` runs (closed loop, every message checked for loss, duplicates and order):
#   local-fanin / local-fanout  every client on node 1 (traffic that never leaves a node),
#                               next to the same load on a single `tern serve` (no [cluster]):
#                               the cost of being a cluster node for local traffic;
#   cross-fanin                 publishers on node 2, the subscriber on node 1 (--sub-port);
#   cross-fanout                the publisher on node 1, subscribers on node 2;
#   connect                     CONNECTS clients at once, a third on each node (three bench
#                               processes at RATE connections/s each): the time until all are
#                               connected, and the bytes on the cluster links meanwhile (Raft:
#                               one claim per new client id, batched), from /metrics.
# Rounds interleave single and cluster; medians of ROUNDS rounds.
#
#   cargo build --release -j2 -p tern && bench/cluster.sh
#   ROUNDS=3 DURATION=5 CONNECTS=10000 bench/cluster.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TERN=${TERN:-$ROOT/target/release/tern}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
PUBLISHERS=${PUBLISHERS:-4}
SUBSCRIBERS=${SUBSCRIBERS:-20}
CONNECTS=${CONNECTS:-10000}
RATE=${RATE:-5000}
SCENARIOS=${SCENARIOS:-"local-fanin local-fanout cross-fanin cross-fanout connect"}
BASE=${BASE:-18900}
OUT=${OUT:-$(mktemp -d /tmp/tern-cluster-bench.XXXXXX)}
[ -x "$TERN" ] || { echo "no $TERN: cargo build --release -j2 -p tern" >&2; exit 1; }

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() { # wait_port PORT PID
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

mqtt_port() { echo $((BASE + $1)); }        # node i's MQTT port (0: the single node)
link_port() { echo $((BASE + 10 + $1)); }   # node i's cluster port
admin_port() { echo $((BASE + 20 + $1)); }  # node i's admin port

start_single() { # start_single DIR
  local dir=$1
  cat >"$dir/single.toml" <<CONF
data_dir = "$dir/single"
log_level = "warn"
[limits]
max_queued_messages = 100000
CONF
  "$TERN" serve --listen "127.0.0.1:$(mqtt_port 0)" --config "$dir/single.toml" \
    >>"$dir/single.log" 2>&1 &
  single_pid=$!
  pids+=("$single_pid")
  wait_port "$(mqtt_port 0)" "$single_pid" || { echo "single node did not start ($dir)" >&2; exit 1; }
}

start_cluster() { # start_cluster DIR; sets node_pids
  local dir=$1
  node_pids=()
  for i in 1 2 3; do
    local seeds=""
    for j in 1 2 3; do
      [ "$j" = "$i" ] || seeds="$seeds\"127.0.0.1:$(link_port "$j")\", "
    done
    cat >"$dir/node$i.toml" <<CONF
data_dir = "$dir/node$i"
log_level = "warn"
[limits]
max_queued_messages = 100000
[admin]
bind = "127.0.0.1:$(admin_port "$i")"
[cluster]
node_id = $i
bind = "127.0.0.1:$(link_port "$i")"
seeds = [${seeds%, }]
CONF
    "$TERN" serve --listen "127.0.0.1:$(mqtt_port "$i")" --config "$dir/node$i.toml" \
      >>"$dir/node$i.log" 2>&1 &
    node_pids+=("$!")
    pids+=("$!")
  done
  for i in 1 2 3; do
    wait_port "$(mqtt_port "$i")" "${node_pids[$((i - 1))]}" || { echo "node $i did not start ($dir)" >&2; exit 1; }
  done
  # Formed: a probe published on node 3 reaches a subscriber on node 1.
  "$TERN" sub -p "$(mqtt_port 1)" -t bench/ready -C 1 -W 30 >/dev/null 2>&1 &
  local sub=$!
  for _ in $(seq 300); do
    kill -0 "$sub" 2>/dev/null || break
    "$TERN" pub -p "$(mqtt_port 3)" -t bench/ready -m x >/dev/null 2>&1 || true
    sleep 0.1
  done
  wait "$sub" || { echo "the cluster did not form ($dir)" >&2; exit 1; }
}

stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}

link_bytes() { # link_bytes: control bytes sent by the three nodes, summed
  local total=0
  for i in 1 2 3; do
    local b
    b=$(curl -s "http://127.0.0.1:$(admin_port "$i")/metrics" |
      awk '/^tern_cluster_link_sent_bytes\{kind="control"\}/ {printf "%d", $2}')
    total=$((total + ${b:-0}))
  done
  echo "$total"
}

bench() { # bench NAME DIR PID ARGS...
  local name=$1 dir=$2 pid=$3; shift 3
  local status=0
  "$TERN" bench "$@" --duration "$DURATION" --warmup "$WARMUP" --pid "$pid" --json --quiet \
    --topic-prefix "bench/$name" >"$dir/$name.json" 2>"$dir/$name.log" || status=$?
  [ "$status" = 0 ] || echo "$name: the bench failed ($status; $dir)" >&2
}

for round in $(seq "$ROUNDS"); do
  dir=$OUT/r$round
  mkdir -p "$dir"
  order="single cluster"
  [ $((round % 2)) -eq 0 ] && order="cluster single"
  for setup in $order; do
    if [ "$setup" = single ]; then
      start_single "$dir"
      for s in $SCENARIOS; do
        case $s in
          local-fanin) bench single-fanin "$dir" "$single_pid" fanin --qos 1 --clients "$PUBLISHERS" --port "$(mqtt_port 0)" ;;
          local-fanout) bench single-fanout "$dir" "$single_pid" fanout --qos 0 --clients "$SUBSCRIBERS" --port "$(mqtt_port 0)" ;;
        esac
      done
      stop_all
    else
      start_cluster "$dir"
      n1=${node_pids[0]}
      for s in $SCENARIOS; do
        case $s in
          local-fanin) bench cluster-fanin "$dir" "$n1" fanin --qos 1 --clients "$PUBLISHERS" --port "$(mqtt_port 1)" ;;
          local-fanout) bench cluster-fanout "$dir" "$n1" fanout --qos 0 --clients "$SUBSCRIBERS" --port "$(mqtt_port 1)" ;;
          cross-fanin) bench cross-fanin "$dir" "$n1" fanin --qos 1 --clients "$PUBLISHERS" --port "$(mqtt_port 2)" --sub-port "$(mqtt_port 1)" ;;
          cross-fanout) bench cross-fanout "$dir" "$n1" fanout --qos 0 --clients "$SUBSCRIBERS" --port "$(mqtt_port 1)" --sub-port "$(mqtt_port 2)" ;;
          connect)
            before=$(link_bytes)
            started=$(date +%s.%N)
            per=$((CONNECTS / 3))
            cpids=()
            for i in 1 2 3; do
              "$TERN" bench conn --clients "$per" --rate "$RATE" --duration 1 --port "$(mqtt_port "$i")" \
                --json --quiet >"$dir/connect-$i.json" 2>"$dir/connect-$i.log" &
              cpids+=("$!")
            done
            for p in "${cpids[@]}"; do wait "$p" || echo "connect: a bench failed ($dir)" >&2; done
            ended=$(date +%s.%N)
            after=$(link_bytes)
            python3 - "$dir" "$before" "$after" "$started" "$ended" "$CONNECTS" >"$dir/connect.json" <<'PY'
import json, sys
d, before, after, started, ended, n = sys.argv[1:]
runs = [json.load(open(f"{d}/connect-{i}.json")) for i in (1, 2, 3)]
ramp = max(r["connections"]["ramp_s"] for r in runs)
est = sum(r["connections"]["established"] for r in runs)
p99 = max(r["connack_us"]["p99"] for r in runs if r.get("connack_us"))
print(json.dumps({"clients": int(n), "established": est, "ramp_s": ramp,
                  "connack_p99_us": p99, "control_bytes": int(after) - int(before)}))
PY
            ;;
        esac
      done
      stop_all
    fi
  done
done

python3 - "$OUT" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
def runs(name):
    values = []
    for path in sorted(glob.glob(os.path.join(out, "r*", name + ".json"))):
        try:
            values.append(json.load(open(path)))
        except ValueError:
            pass
    return values
def med(values):
    return statistics.median(values) if values else float("nan")
print("medians of the rounds; broker CPU: node 1's (the single node's)")
print("| load | single node msg/s | cluster msg/s | cluster / single | checks |")
print("|---|---|---|---|---|")
for load in ("fanin", "fanout"):
    s = runs("single-" + load); c = runs("cluster-" + load)
    if not s or not c:
        continue
    rs = med([r.get("received_per_s") or 0 for r in s]); rc = med([r.get("received_per_s") or 0 for r in c])
    ok = all((r.get("verdict") or {}).get("pass", r.get("check")) for r in s + c)
    print(f"| local {load} | {rs:,.0f} | {rc:,.0f} | {rc / rs:.2f} | {'passed' if ok else 'FAILED'} |")
for load in ("cross-fanin", "cross-fanout"):
    c = runs(load)
    if c:
        rc = med([r.get("received_per_s") or 0 for r in c])
        cpu = med([(r.get("broker") or {}).get("cpu_pct") or 0 for r in c])
        lat = med([(r.get("latency_us") or {}).get("p50") or 0 for r in c])
        ok = all((r.get("verdict") or {}).get("pass", r.get("check")) for r in c)
        print(f"| {load} | - | {rc:,.0f} (node 1 CPU {cpu:.0f} %, p50 {lat:.0f} µs) | - | {'passed' if ok else 'FAILED'} |")
c = runs("connect")
if c:
    print()
    print("| clients at once (3 nodes) | connected | all connected in (s) | CONNACK p99 (µs) | Raft/control bytes | bytes per client |")
    print("|---|---|---|---|---|---|")
    n = c[0]["clients"]
    ramp = med([r["ramp_s"] for r in c]); est = med([r["established"] for r in c])
    p99 = med([r["connack_p99_us"] for r in c]); b = med([r["control_bytes"] for r in c])
    print(f"| {n} | {est:.0f} | {ramp:.2f} | {p99:,.0f} | {b:,.0f} | {b / max(n, 1):.0f} |")
PY
