#!/usr/bin/env bash
# Runs every test suite of Tern: the Rust tests (unit, integration, property tests, rumqttc) and
# the interop suite in tests/interop (paho-mqtt, mosquitto_pub/mosquitto_sub against the built
# binary). Installs the interop clients first when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs="${CARGO_BUILD_JOBS:-2}"

if [ -d tests/interop ]; then
  tests/interop/install-clients.sh
fi

cargo test -j"$jobs" --workspace

if [ -d tests/interop ]; then
  cargo build -j"$jobs" -p tern
  TERN_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/tern" python3 -m pytest -q tests/interop
fi
