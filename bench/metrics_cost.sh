#!/usr/bin/env bash
# bench/metrics_cost.sh: what the metrics cost (issue 13: "fan-in QoS 0 and fan-out with the
# metrics on within the noise of today's"). Two release binaries of tern, BASE (before the
# metrics) and NEW, each scenario run against each in alternating order (A B, B A, ...), a
# fresh broker per run, the bench being NEW's `tern bench` for both. Prints per scenario the
# median deliveries/s and deliveries per broker CPU-second of each, and NEW / BASE.
#
# NEW runs as an operator runs it: with the admin listener (`[admin] bind`), `sys_interval =
# 1` (a `$SYS` walk of every session each second) and `/metrics` scraped every SCRAPE
# seconds (default 1) during the whole run, so the figure includes the scrapes' and `$SYS`'s
# walks of the sessions, not only the counters. SCRAPE=0 turns the scraping (and the admin
# listener) off, to measure the counters alone. A broker that does not come up, or a scrape
# that fails, ends the script with an error.
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
ADMIN_PORT=${ADMIN_PORT:-18991}
SCRAPE=${SCRAPE:-1}
OUT=${OUT:-$(mktemp -d /tmp/tern-metrics-cost.XXXXXX)}
SCENARIOS=("fanin-q0|fanin --clients 8 --qos 0" "fanout-q0|fanout --clients 100 --qos 0"
           "fanout1k-q0|fanout --clients 1000 --qos 0")
NEW_CONFIG=$OUT/new.toml
if [ "$SCRAPE" != 0 ]; then
  printf 'sys_interval = 1\n[admin]\nbind = "127.0.0.1:%s"\n' "$ADMIN_PORT" >"$NEW_CONFIG"
else
  printf 'sys_interval = 0\n' >"$NEW_CONFIG"
fi

run() { # run ROUND NAME BINARY SCENARIO ARGS...
  local round=$1 name=$2 binary=$3 scenario=$4; shift 4
  local config=()
  [ "$name" = new ] && config=(--config "$NEW_CONFIG")
  (cd "$OUT" && exec "$binary" serve "${config[@]}" --listen "127.0.0.1:$PORT" --in-memory \
    --log-level warn) >>"$OUT/broker.log" 2>&1 &
  local pid=$! up=
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then up=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$up" ]; then
    echo "round $round $name $scenario: the broker did not come up (see $OUT/broker.log)" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
  fi
  local scraper= scrapes=$OUT/r$round-$name-$scenario.scrapes
  if [ "$name" = new ] && [ "$SCRAPE" != 0 ]; then
    ( while :; do
        if curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/metrics"; then echo ok; else echo failed; fi
        sleep "$SCRAPE"
      done ) >"$scrapes" &
    scraper=$!
  fi
  local status=0
  "$NEW" bench "$@" --duration "$DURATION" --warmup "$WARMUP" --port "$PORT" --pid "$pid" \
    --json --quiet >"$OUT/r$round-$name-$scenario.json" 2>>"$OUT/bench.log" || status=$?
  if [ -n "$scraper" ]; then
    kill "$scraper"; wait "$scraper" 2>/dev/null || true
    if grep -q failed "$scrapes" || ! grep -q ok "$scrapes"; then
      echo "round $round $name $scenario: /metrics scrapes failed ($scrapes)" >&2
      kill "$pid"; exit 1
    fi
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  if [ "$status" != 0 ]; then
    echo "round $round $name $scenario: the bench failed ($status; see $OUT/bench.log)" >&2
  fi
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
    if not rate:
        print(f"skipped (no rate): {path}", file=sys.stderr)
        continue
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
scrapes = glob.glob(os.path.join(out, "r*-new-*.scrapes"))
count = sum(open(p).read().count("ok") for p in scrapes)
print(f"(results in {out}; NEW scraped /metrics {count} times during its runs, $SYS every 1 s)"
      if scrapes else f"(results in {out}; no scrapes: SCRAPE=0)")
PY
