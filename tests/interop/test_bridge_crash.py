"""Bridges (issue 15) across a crash of Tern, seen by a client we did not write: messages
published here (QoS 1, acknowledged) while the remote broker is down wait in the bridge's stored
session; `tern serve` is killed (SIGKILL, no shutdown), started again, and the bridge carries
every one of them to the remote once it is up (review 15: the restart test used a graceful
shutdown only)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from conftest import HOST, START_TIMEOUT, Broker, _start_broker, _stop_broker, free_port, tern_bin
from mqtt_clients import MQTTV5, PahoClient

COUNT = 40


def start_on(port: int, directory: Path) -> Broker:
    """`tern serve` on `port` (the remote broker, which must come back on its address)."""
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "tern.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [str(tern_bin()), "serve", "--listen", f"{HOST}:{port}", "--log-level", "debug"],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd=directory,
        )
    broker = Broker(HOST, port, proc, log_path)
    assert broker.wait_for_log("listening for MQTT over TCP", timeout=START_TIMEOUT), broker.log()
    return broker


def test_queued_messages_survive_a_crash_of_tern(tmp_path):
    remote_port = free_port()
    data = tmp_path / "data"
    config = (
        f'durability = "process"\ndata_dir = "{data}"\nmin_free_disk = "0"\nsys_interval = 0\n'
        f'[[bridges]]\nname = "b"\naddress = "{HOST}:{remote_port}"\nclient_id = "edge"\n'
        'reconnect_min_ms = 50\nreconnect_max_ms = 200\n'
        'topics = [{ pattern = "c/#", direction = "out", qos = 1 }]\n'
    )
    (tmp_path / "first").mkdir()
    local = _start_broker(tmp_path / "first", config)
    assert local.wait_for_log("bridge connecting"), local.log()
    publisher = PahoClient(local, "pub", MQTTV5)
    publisher.connect()
    for i in range(COUNT):
        publisher.publish(f"c/{i}", str(i).encode(), qos=1)
    publisher.close()
    # A crash: no drain, no shutdown of the store.
    local.stop(signal.SIGKILL)

    remote = start_on(remote_port, tmp_path / "remote")
    subscriber = PahoClient(remote, "sub", MQTTV5)
    try:
        subscriber.connect()
        subscriber.subscribe("c/#", 1)
        (tmp_path / "second").mkdir()
        again = _start_broker(tmp_path / "second", config)
        try:
            messages = subscriber.wait_messages(COUNT, timeout=20)
            # At least once: a duplicate may come, never a gap; the first copies in order.
            first = []
            for message in messages:
                if message.payload not in first:
                    first.append(message.payload)
            assert first == [str(i).encode() for i in range(COUNT)]
        finally:
            _stop_broker(again)
    finally:
        subscriber.close()
        _stop_broker(remote)
