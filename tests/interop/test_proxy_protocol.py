"""Tern behind HAProxy with the PROXY protocol (issue 11): HAProxy's `send-proxy` (v1) and
`send-proxy-v2` in front of a `[[listeners]]` entry with `proxy_protocol = true`, driven by
mosquitto_pub / mosquitto_sub. The clients bind 127.0.0.2, HAProxy connects from 127.0.0.1: the
address Tern logs for the client must be the one the header carries (127.0.0.2), not HAProxy's.

Skipped when haproxy is not installed (tests/interop/install-clients.sh installs it)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import HOST, _start_broker, _stop_broker, free_port
from mqtt_clients import MosquittoSub, mosquitto_pub

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").is_file() else None
)
pytestmark = pytest.mark.skipif(
    HAPROXY is None,
    reason="haproxy is not installed (tests/interop/install-clients.sh installs the Debian package)",
)

#: The address the clients bind, so that the client's address differs from HAProxy's.
CLIENT_ADDR = "127.0.0.2"


def wait_listening(port: int, proc: subprocess.Popen, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}", pytrace=False)
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    pytest.fail(f"{what} did not listen on {port} within {timeout} s", pytrace=False)


@pytest.fixture
def proxied_tern(tmp_path):
    """`tern serve` with a PROXY protocol listener trusting 127.0.0.1; yields (broker, port of
    that listener)."""
    port = free_port()
    config = f"""
[[listeners]]
name = "behind-haproxy"
kind = "mqtt"
bind = "{HOST}:{port}"
proxy_protocol = true
trusted_proxies = ["127.0.0.1/32"]
auth = {{ allow_anonymous = true }}
"""
    broker = _start_broker(tmp_path, config)
    try:
        wait_listening(port, broker.proc, "tern's PROXY listener")
        yield broker, port
    finally:
        _stop_broker(broker)


def start_haproxy(tmp_path: Path, backend_port: int, send_proxy: str):
    front = free_port()
    cfg = tmp_path / f"haproxy-{send_proxy}.cfg"
    cfg.write_text(f"""
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend mqtt_in
    bind {HOST}:{front}
    default_backend tern

backend tern
    server tern1 {HOST}:{backend_port} {send_proxy}
""")
    log = open(tmp_path / f"haproxy-{send_proxy}.log", "wb")
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log)
    log.close()
    wait_listening(front, proc, "haproxy")
    return proc, front


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_haproxy_send_proxy_carries_the_client_address(proxied_tern, tmp_path, unique,
                                                       send_proxy):
    """Issue 11: mosquitto_sub and mosquitto_pub through HAProxy (`send-proxy` is v1,
    `send-proxy-v2` v2): messages flow, and the address Tern logs for each client is the
    client's (127.0.0.2, carried in the header), not HAProxy's (127.0.0.1)."""
    broker, port = proxied_tern
    haproxy, front = start_haproxy(tmp_path, port, send_proxy)
    sub = None
    try:
        via = (HOST, front)
        sub = MosquittoSub(via, [f"{unique}/t"], qos=1, count=1, client_id=f"{unique}-s",
                           extra=["-A", CLIENT_ADDR])
        pattern = (r"client connected client_id=\"" + re.escape(f"{unique}-s") + "\""
                   + r" peer=127\.0\.0\.2:\d+")
        assert broker.wait_for_log(pattern), "the subscriber's carried address is not logged"
        # The subscription is in place once the broker has logged the connection and handled
        # the SUBSCRIBE; a retained message makes delivery independent of that race.
        mosquitto_pub(via, "-t", f"{unique}/t", "-m", "through haproxy", "-q", "1", "-r",
                      "-i", f"{unique}-p", "-A", CLIENT_ADDR)
        lines = sub.wait_data(1)
        assert lines[0].payload == b"through haproxy"
        assert sub.wait_exit() == 0
        pub_pattern = (r"client connected client_id=\"" + re.escape(f"{unique}-p") + "\""
                       + r" peer=127\.0\.0\.2:\d+")
        assert broker.wait_for_log(pub_pattern)
        assert broker.count_log(r"client connected client_id=\"?" + re.escape(unique)
                                + r"-[sp]\"? peer=127\.0\.0\.1:") == 0
    finally:
        if sub is not None:
            sub.close()
        haproxy.terminate()
        try:
            haproxy.wait(timeout=5)
        except subprocess.TimeoutExpired:
            haproxy.kill()
            haproxy.wait(timeout=5)


def test_client_without_proxy_header_is_closed(proxied_tern, unique):
    """Issue 11: a PROXY listener takes nothing but a header first: mosquitto_pub straight to
    it (no HAProxy) is closed before MQTT, while the same client through the plain listener
    is served."""
    broker, port = proxied_tern
    direct = subprocess.run(
        ["mosquitto_pub", "-h", HOST, "-p", str(port), "-t", f"{unique}/t", "-m", "x",
         "-i", f"{unique}-d"],
        capture_output=True, timeout=10, stdin=subprocess.DEVNULL,
    )
    assert direct.returncode != 0
    assert broker.count_log(r"client connected client_id=\"?" + re.escape(f"{unique}-d")) == 0
    mosquitto_pub(broker, "-t", f"{unique}/t", "-m", "plain", "-i", f"{unique}-ok")
