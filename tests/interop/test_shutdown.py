"""Tern's shutdown rule: on SIGTERM or SIGINT the broker closes every connection and exits with
code 0 within 5 s, whatever its clients are doing. (Every other test checks the same at its
teardown, with its clients already gone; here they are still connected.)"""

from __future__ import annotations

import re
import signal
import socket

import pytest

from mqtt_clients import PROTOCOLS, mosquitto_pub

V311 = PROTOCOLS["v311"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_with_busy_clients_exits_0_within_5s(broker, paho, mosquitto_sub, unique, sig):
    """Connected at the signal: an idle paho client, a persistent session with queued
    messages, a mosquitto_sub, a TCP connection that never sent CONNECT, and a client that
    stopped reading while megabytes are queued for it. Exit code 0 within 5 s; every
    client's connection is closed by then (the broker logs each one; mosquitto_sub reconnects
    by itself, so its own exit proves nothing)."""
    idle = paho(f"{unique}-i", V311)
    idle.connect()
    idle.subscribe("idle/#", 1)

    stalled = paho(f"{unique}-st", V311, threaded=False)  # never reads after SUBACK
    stalled.connect()
    stalled.subscribe("big/#", 0)

    persistent = paho(f"{unique}-ps", V311, clean_session=False)
    persistent.connect()
    persistent.subscribe("big/#", 1)
    persistent.disconnect()

    mosquitto_pub(broker, "-t", "ready", "-m", "r", "-r")
    sub = mosquitto_sub(["big/#"], ready_topic="ready", client_id=f"{unique}-ms")
    sub.wait_ready()

    silent = socket.create_connection(broker, timeout=5)  # no CONNECT

    pub = paho(f"{unique}-p", V311)
    pub.connect()
    chunk = bytes(64 * 1024)
    for i in range(150):  # ~10 MB towards the stalled client, more than socket buffers hold
        pub.publish("big/x", chunk, qos=1, wait=False)
    pub.publish("big/x", b"last", qos=1)
    idle.publish("idle/x", b"x", qos=1)
    idle.wait_messages(1)

    code, elapsed = broker.stop(sig)
    assert code == 0, f"exit code {code} after {elapsed:.2f} s"
    assert elapsed < 5.0
    idle.wait_disconnected(timeout=2)
    log = broker.log()
    for client_id in (idle.client_id, stalled.client_id, f"{unique}-ms", pub.client_id):
        assert re.search(
            rf"client disconnected client_id=\"{re.escape(client_id)}\" .*reason=server shutting down",
            log), f"{client_id} not closed at shutdown"
    silent.settimeout(2)
    try:
        while silent.recv(65536):
            pass
    except ConnectionResetError:
        pass  # closed, abruptly
    except socket.timeout:
        pytest.fail("the connection without CONNECT was still open after the broker exited")
    silent.close()
