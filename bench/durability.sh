#!/usr/bin/env bash
# Persistent QoS 1 throughput of Tern at each durability level (memory, process, fsync):
# subscribers keep persistent sessions (tern bench --persistent), so their messages go through
# the store. Each stored level runs twice: as configured by default (a delivery its subscriber
# acknowledges within unstored_grace_ms is never written) and with unstored_grace_ms = 0
# (levels `process/0`, `fsync/0`: every delivery is written before its publisher's PUBACK, the
# store's own throughput). A fresh broker and data directory per level and round; prints one
# line per run.
# Settings: DURATION (seconds per run, default 5), ROUNDS (default 3), TERN (the binary, default
# target/release/tern, built if missing), PORT (default 18840).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18840}
TERN=${TERN:-target/release/tern}
[ -x "$TERN" ] || cargo build --release -j2 -p tern
OUT=$(mktemp -d /tmp/tern-durability.XXXXXX)
echo "round level scenario deliveries/s check"
for round in $(seq "$ROUNDS"); do
  for level in memory process fsync process/0 fsync/0; do
    rm -rf "$OUT/data"
    grace=5
    [ "${level#*/}" = 0 ] && grace=0
    printf 'durability = "%s"\nunstored_grace_ms = %s\ndata_dir = "%s/data"\nlog_level = "warn"\n[limits]\nmax_queued_messages = 1000000\n' \
      "${level%/*}" "$grace" "$OUT" > "$OUT/tern.toml"
    "$TERN" serve --listen "127.0.0.1:$PORT" --config "$OUT/tern.toml" >>"$OUT/tern.log" 2>&1 &
    broker=$!
    sleep 0.7
    for scenario in "fanin --clients 8" "pairs --clients 20"; do
      # shellcheck disable=SC2086 # the scenario is words on purpose
      result=$("$TERN" bench $scenario --qos 1 --persistent --duration "$DURATION" \
        --port "$PORT" --quiet --json 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(int(d["received_per_s"]), d["check"])')
      echo "$round $level ${scenario%% *} $result"
    done
    kill "$broker"
    wait "$broker" 2>/dev/null || true
  done
done
rm -rf "$OUT"
