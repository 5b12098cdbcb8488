#!/usr/bin/env bash
# bench/acl_overhead.sh: fan-out QoS 0 and fan-in QoS 1 with and without an ACL file of 9 999
# rules (4 998 users with two rules each, three lines for anonymous clients and patterns), 3
# interleaved rounds, medians (issue 12: with the ACL at >= 90 % of the figures without).
# Needs a release build: cargo build --release -j2 -p tern
set -u
D=$(mktemp -d)
python3 - "$D" <<'PY'
import sys
d = sys.argv[1]
lines = ["# anonymous clients (the bench)", "topic readwrite bench/#",
         "pattern read status/%c/#", "pattern write devices/%c/out/#"]
for u in range(4998):
    lines += [f"user device-{u}", f"topic readwrite devices/device-{u}/#",
              f"topic read fleet/{u % 50}/+/config"]
open(f"{d}/tern.acl", "w").write("\n".join(lines) + "\n")
base = ('log_level="warn"\n[limits]\nmax_connections=1000000\nmax_inflight=65534\n'
        'max_queued_messages=100000000\n[auth]\nallow_anonymous=true\n')
open(f"{d}/noacl.toml", "w").write(base)
open(f"{d}/acl.toml", "w").write(base + f'acl_file="{d}/tern.acl"\n')
PY
T=${TERN:-$(dirname "$0")/../target/release/tern}
port=19900
for round in 1 2 3; do
  order=(noacl acl); [ $((round%2)) -eq 0 ] && order=(acl noacl)
  for sc in fanout-q0 fanin-q1; do
    case $sc in fanout-q0) args=(fanout --clients 100 --qos 0);; fanin-q1) args=(fanin --clients 8 --qos 1);; esac
    for who in "${order[@]}"; do
      port=$((port+1))
      $T serve --listen 127.0.0.1:$port --in-memory --config $D/$who.toml >/dev/null 2>&1 &
      pid=$!
      for i in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
      $T bench "${args[@]}" --warmup 1 --duration 5 --port $port --pid $pid --json --quiet > $D/$who-$sc-$round.json 2>/dev/null
      kill $pid; wait $pid 2>/dev/null
    done
  done
done
python3 - "$D" <<'PY'
import json,statistics,sys
D=sys.argv[1]
for sc in ('fanout-q0','fanin-q1'):
  med={}
  for who in ('noacl','acl'):
    v=[]; 
    for r in (1,2,3):
      d=json.load(open(f'{D}/{who}-{sc}-{r}.json'))
      v.append(round(d['received_per_s'])); c=d['delivery']
      assert c['lost']==0, c
    med[who]=statistics.median(v); print(sc,who,v,'median',med[who])
  print(sc,'ratio acl/noacl',round(med['acl']/med['noacl'],3))
PY
