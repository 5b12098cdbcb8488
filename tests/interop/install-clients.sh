#!/usr/bin/env bash
# Installs the third-party MQTT clients the interop suite (tests/interop) drives, when missing:
#   - mosquitto_pub / mosquitto_sub  (Debian package mosquitto-clients, via apt-get)
#   - mosquitto_passwd, mosquitto     (Debian package mosquitto, via apt-get; password files, and
#                                     the remote broker of test_bridge.py)
#   - haproxy                         (Debian package haproxy, via apt-get; the PROXY protocol tests)
#   - chromium                        (Debian package chromium, via apt-get; the dashboard test)
#   - paho-mqtt 2.x and pytest        (PyPI, via python3 -m pip)
# Idempotent: prints nothing and changes nothing when everything is already there.
set -euo pipefail

log() { printf 'install-clients: %s\n' "$*" >&2; }

# Runs a command as root: directly when we are root, through sudo when it exists.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    log "need root to run: $* (not root, and sudo is not installed)"
    return 1
  fi
}

apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# --- mosquitto-clients -----------------------------------------------------------------------
if ! command -v mosquitto_pub >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1; then
  log "installing mosquitto-clients"
  if ! apt_install mosquitto-clients >/dev/null 2>&1; then
    # A fresh machine often has no package lists yet: update once, then try again.
    as_root apt-get update -q >/dev/null
    apt_install mosquitto-clients >/dev/null
  fi
fi

# --- mosquitto (mosquitto_passwd: password files of test_auth.py; the broker: test_bridge.py) -
if ! command -v mosquitto_passwd >/dev/null 2>&1; then
  log "installing mosquitto (for mosquitto_passwd)"
  if ! apt_install mosquitto >/dev/null 2>&1; then
    as_root apt-get update -q >/dev/null
    apt_install mosquitto >/dev/null
  fi
fi

# --- haproxy (in front of tern in test_proxy_protocol.py) ------------------------------------
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
  log "installing haproxy"
  if ! apt_install haproxy >/dev/null 2>&1; then
    as_root apt-get update -q >/dev/null
    apt_install haproxy >/dev/null
  fi
fi

# --- chromium (headless: the dashboard's browser test, crates/admin/tests/dashboard.rs) -------
if ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium"
  if ! apt_install chromium fonts-dejavu-core >/dev/null 2>&1; then
    as_root apt-get update -q >/dev/null
    apt_install chromium fonts-dejavu-core >/dev/null
  fi
fi

# --- python3 and pip -------------------------------------------------------------------------
if ! command -v python3 >/dev/null 2>&1; then
  log "installing python3"
  if ! apt_install python3 python3-pip >/dev/null 2>&1; then
    as_root apt-get update -q >/dev/null
    apt_install python3 python3-pip >/dev/null
  fi
fi

# True when the installed versions satisfy the pins (paho-mqtt>=2,<3, pytest>=7).
python_deps_ok() {
  python3 - <<'PY' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
def major(name):
    try:
        return int(version(name).split(".")[0])
    except (PackageNotFoundError, ValueError):
        return None
paho, pytest = major("paho-mqtt"), major("pytest")
sys.exit(0 if paho == 2 and pytest is not None and pytest >= 7 else 1)
PY
}

if ! python_deps_ok; then
  log "installing paho-mqtt and pytest from PyPI"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    if ! apt_install python3-pip >/dev/null 2>&1; then
      as_root apt-get update -q >/dev/null
      apt_install python3-pip >/dev/null
    fi
  fi
  pins=("paho-mqtt>=2,<3" "pytest>=7")
  # Debian's python3 is "externally managed" (PEP 668): install for the user when pip says so.
  if ! python3 -m pip install -q "${pins[@]}" 2>/dev/null; then
    python3 -m pip install -q --user --break-system-packages "${pins[@]}" 2>/dev/null \
      || python3 -m pip install -q --user "${pins[@]}"
  fi
  python_deps_ok || { log "paho-mqtt 2.x / pytest>=7 still not importable"; exit 1; }
fi
