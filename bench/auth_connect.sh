#!/usr/bin/env bash
# bench/auth_connect.sh: the connect rate of clients that log in with a username and password,
# each its own user (issue 12: "measure the connect rate of 10 000 clients with passwords, cold
# and warm"), Tern beside Mosquitto and rumqttd (when installed), 3 interleaved rounds, medians.
#   cold: a broker just started (nothing verified yet); warm: the same broker, the same clients
#   again (Tern remembers verifications; Mosquitto verifies every time).
#   pbkdf2: one password file of N users in Mosquitto's format ($7$, PBKDF2-SHA512, 101
#   iterations: what mosquitto_passwd 2.0 writes), used by both brokers;
#   argon2id: Tern's own hashes (`tern passwd`: argon2id m=19 MiB t=2 p=1), for ARGON users
#   (each verification costs ~20 ms of a core by design: the cold rate is per core, not per
#   client count, so fewer users measure it as well).
# Needs a release build (cargo build --release -j2 -p tern) and mosquitto (apt-get install mosquitto).
# Mosquitto runs with `user root` so it can read the files of the temporary directory.
# Environment: N (10000), ARGON (2000), ROUNDS (3), TERN, MOSQUITTO, RUMQTTD, TW_BUCKETS (2048).
set -u
N=${N:-10000}
ARGON=${ARGON:-2000}
ROUNDS=${ROUNDS:-3}
T=${TERN:-$(dirname "$0")/../target/release/tern}
M=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
R=${RUMQTTD:-$(command -v rumqttd || true)}
D=$(mktemp -d)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# Tens of thousands of connections opened and closed within a minute leave as many sockets in
# TIME_WAIT, which slow the next runs' handshakes down on loopback whichever broker is measured;
# a load-generating host caps them (net.ipv4.tcp_max_tw_buckets; TW_BUCKETS=0 leaves it alone).
TW_BUCKETS=${TW_BUCKETS:-2048}
TW_FILE=/proc/sys/net/ipv4/tcp_max_tw_buckets
TW_OLD=$(cat "$TW_FILE" 2>/dev/null || echo)
cleanup() {
  [ -n "$TW_OLD" ] && [ "$TW_BUCKETS" != 0 ] && echo "$TW_OLD" > "$TW_FILE" 2>/dev/null
  rm -rf "$D"
}
trap cleanup EXIT
if [ "$TW_BUCKETS" != 0 ] && ! echo "$TW_BUCKETS" > "$TW_FILE" 2>/dev/null; then
  echo "cannot set $TW_FILE (not root?): later rounds may measure TIME_WAIT more than the broker" >&2
fi
echo "scratch files in $D, removed at exit (commit $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null))" >&2

# Mosquitto's $7$ format: $7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512>.
python3 - "$D" "$N" <<'PY'
import base64, hashlib, os, sys
d, n = sys.argv[1], int(sys.argv[2])
with open(f"{d}/pbkdf2.passwd", "w") as out:
    for i in range(n):
        salt = os.urandom(12)
        digest = hashlib.pbkdf2_hmac("sha512", f"pw{i}".encode(), salt, 101)
        out.write(f"dev{i}:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n")
PY
# Tern's argon2id hashes, made by `tern passwd` (one small file per user, two at a time).
mkdir -p "$D/argon"
seq 0 $((ARGON - 1)) | xargs -P 2 -I{} "$T" passwd -b -c "$D/argon/{}" "dev{}" "pw{}" >/dev/null
cat "$D"/argon/* > "$D/argon2id.passwd"

for kind in pbkdf2 argon2id; do
  printf 'log_level = "warn"\n[limits]\nmax_connections = 1000000\n[auth]\npassword_file = "%s"\n' \
    "$D/$kind.passwd" > "$D/tern-$kind.toml"
done
# rumqttd keeps users in its configuration, passwords in clear (`[v4.1.connections.auth]`):
# the same users and passwords, compared as they are (no hash to verify).
if [ -n "$R" ]; then
  {
    printf 'id = 0\n[router]\nid = 0\nmax_connections = %s\nmax_outgoing_packet_count = 1000\n' $((N + 10))
    printf 'max_segment_size = 104857600\nmax_segment_count = 10\n[v4.1]\nname = "auth"\n'
    printf 'listen = "127.0.0.1:PORT"\nnext_connection_delay_ms = 0\n[v4.1.connections]\n'
    printf 'connection_timeout_ms = 60000\nmax_payload_size = 20480\nmax_inflight_count = 100\n'
    printf '[v4.1.connections.auth]\n'
    for i in $(seq 0 $((N - 1))); do printf 'dev%s = "pw%s"\n' "$i" "$i"; done
  } > "$D/rumqttd.template"
fi
printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous false\npassword_file %s\nmax_connections -1\nlog_dest none\n' \
  PORT "$D/pbkdf2.passwd" > "$D/mosquitto.template"

port=19950
wait_port() {
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done
  echo "the broker never listened on port $1" >&2; exit 1
}
run() { # who kind clients
  local who=$1 kind=$2 clients=$3 pid
  port=$((port + 1))
  case $who in
    tern) "$T" serve --listen 127.0.0.1:$port --in-memory --config "$D/tern-$kind.toml" >/dev/null 2>&1 & pid=$! ;;
    mosquitto) sed "s/PORT/$port/" "$D/mosquitto.template" > "$D/m.conf"; "$M" -c "$D/m.conf" >/dev/null 2>&1 & pid=$! ;;
    rumqttd) sed "s/PORT/$port/" "$D/rumqttd.template" > "$D/r.toml"; "$R" -c "$D/r.toml" >/dev/null 2>&1 & pid=$! ;;
  esac
  wait_port $port
  for phase in cold warm; do
    "$T" bench conn --port $port --clients "$clients" --rate 0 --concurrency 100 --duration 1 \
      --username 'dev%i' --password 'pw%i' --pid $pid --json --quiet \
      > "$D/$who-$kind-$phase-$round.json" 2> "$D/$who-$kind-$phase-$round.err"
  done
  kill $pid; wait $pid 2>/dev/null
}
for round in $(seq "$ROUNDS"); do
  order=(tern mosquitto ${R:+rumqttd}); [ $((round % 2)) -eq 0 ] && order=(${R:+rumqttd} mosquitto tern)
  for who in "${order[@]}"; do run "$who" pbkdf2 "$N"; done
  [ "$round" -eq 1 ] && run tern argon2id "$ARGON"
done
python3 - "$D" "$ROUNDS" "${R:+rumqttd}" <<'PY'
import json, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
peers = ["mosquitto"] + ([sys.argv[3]] if len(sys.argv) > 3 and sys.argv[3] else [])
def rate(name):
    data = json.load(open(f"{d}/{name}.json"))
    conn = data["connections"]
    assert conn["failed"] == 0, (name, conn)
    return round(conn["connect_rate"])
runs = [(who, "pbkdf2", range(1, rounds + 1)) for who in ["tern"] + peers]
for who, kind, rs in runs + [("tern", "argon2id", (1,))]:
    for phase in ("cold", "warm"):
        values = [rate(f"{who}-{kind}-{phase}-{r}") for r in rs]
        print(f"{who:9} {kind:8} {phase}: {values} connects/s, median {statistics.median(values)}")
PY
