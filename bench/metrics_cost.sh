#!/usr/bin/env bash
# bench/metrics_cost.sh: what the metrics cost (issue 13: "fan-in QoS 0 and fan-out with the
# metrics on within the noise of today's"). Two release binaries of tern, BASE (before the
# metrics) and NEW, each scenario run against each in alternating order (A B, B A, ...), a
# fresh broker per run, the bench being NEW's `tern bench` for both. Prints per scenario the
# median deliveries/s and deliveries per broker CPU-second of each, and NEW / BASE.
#
#   BASE=/path/to/main/target/release/tern NEW=target/release/tern bench/metrics_cost.sh
#   ROUNDS=5 DURATION=10 bench/metrics_cost.sh
#
# Run it on a quiet machine: other work on the cores is noise as large as what is measured.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BASE:?BASE: the tern binary to compare against}
NEW=${NEW:-$ROOT/target/release/tern}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
PORT=${PORT:-18990}
OUT=${OUT:-$(mktemp -d /tmp/tern-metrics-cost.XXXXXX)}
SCENARIOS=("fanin-q0|fanin --clients 8 --qos 0" "fanout-q0|fanout --clients 100 --qos 0")

run() { # run ROUND NAME BINARY SCENARIO ARGS...
  local round=$1 name=$2 binary=$3 scenario=$4; shift 4
  (cd "$OUT" && exec "$binary" serve --listen "127.0.0.1:$PORT" --in-memory --log-level warn) \
    >>"$OUT/broker.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.05
  done
  "$NEW" bench "$@" --duration "$DURATION" --warmup "$WARMUP" --port "$PORT" --pid "$pid" \
    --json --quiet >"$OUT/r$round-$name-$scenario.json" 2>>"$OUT/bench.log" || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
  for entry in "${SCENARIOS[@]}"; do
    scenario=${entry%%|*}; read -r -a args <<<"${entry#*|}"
    if [ $((round % 2)) -eq 1 ]; then order="base new"; else order="new base"; fi
    for name in $order; do
      binary=$BASE; [ "$name" = new ] && binary=$NEW
      run "$round" "$name" "$binary" "$scenario" "${args[@]}"
    done
  done
done

python3 - "$OUT" <<'PY'
import glob, json, os, re, statistics, sys
out = sys.argv[1]
runs = {}
for path in glob.glob(os.path.join(out, "r*-*.json")):
    m = re.match(r"r(\d+)-(base|new)-(.+)\.json$", os.path.basename(path))
    try:
        d = json.load(open(path))
    except ValueError:
        continue
    rate, cpu = d.get("received_per_s"), (d.get("broker") or {}).get("cpu_pct")
    runs.setdefault((m.group(3), m.group(2)), []).append((rate, rate / (cpu / 100) if cpu else None))
print(f"| scenario | figure | base | new | new/base | rounds |")
print("|---|---|---|---|---|---|")
for scenario in sorted({s for s, _ in runs}):
    for i, label in enumerate(["deliveries/s", "deliveries per broker CPU-s"]):
        med = {}
        for name in ("base", "new"):
            values = [r[i] for r in runs.get((scenario, name), []) if r[i]]
            med[name] = statistics.median(values) if values else None
        ratio = med["new"] / med["base"] if med["base"] and med["new"] else float("nan")
        n = len(runs.get((scenario, "new"), []))
        print(f"| {scenario} | {label} | {med['base'] or 0:,.0f} | {med['new'] or 0:,.0f} | {ratio:.3f} | {n} |")
print(f"(results in {out})")
PY
