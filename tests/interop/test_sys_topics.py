"""`$SYS/broker/...` topics (issue 13) read with Debian's mosquitto_sub, after known traffic
sent with mosquitto_pub: Mosquitto's names, published every `sys_interval` seconds, retained
(a late subscriber gets them at once), and the JSON log lines (`log_format = "json"`)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from mqtt_clients import MOSQUITTO_SUB, mosquitto_pub


def sys_values(broker, seconds: int = 2) -> dict[str, str]:
    """Every retained `$SYS/broker/#` value mosquitto_sub gets within `seconds`."""
    host, port = broker
    result = subprocess.run(
        [MOSQUITTO_SUB, "-h", host, "-p", str(port), "-t", "$SYS/broker/#", "-v",
         "--retained-only", "-W", str(seconds)],
        capture_output=True, timeout=seconds + 5, stdin=subprocess.DEVNULL,
    )
    values = {}
    for line in result.stdout.decode().splitlines():
        topic, _, value = line.partition(" ")
        # "retained messages/count" has a space in its name (Mosquitto's).
        if topic == "$SYS/broker/retained":
            name, _, value = value.partition(" ")
            topic = f"{topic} {name}"
        values[topic] = value
    return values


@pytest.mark.tern_config('sys_interval = 1\nlog_format = "json"\n')
def test_sys_topics_after_known_traffic(broker):
    """Three messages published (one retained): `$SYS/broker/publish/messages/received` says 3,
    `retained messages/count` 1, and the version, uptime, client and load topics exist."""
    for i in range(3):
        mosquitto_pub(broker, "-t", "t/x", "-m", f"m{i}", *(["-r"] if i == 0 else []))
    deadline = time.monotonic() + 8
    values: dict[str, str] = {}
    while time.monotonic() < deadline:
        values = sys_values(broker)
        if values.get("$SYS/broker/publish/messages/received") == "3":
            break
    assert values.get("$SYS/broker/publish/messages/received") == "3", values
    assert values["$SYS/broker/messages/received"] == "3"
    assert values["$SYS/broker/retained messages/count"] == "1"
    assert values["$SYS/broker/version"].startswith("tern version ")
    assert values["$SYS/broker/uptime"].endswith(" seconds")
    assert values["$SYS/broker/subscriptions/count"] == "1"  # mosquitto_sub's own
    for name in ["clients/connected", "clients/total", "bytes/received", "bytes/sent",
                 "load/messages/received/1min", "load/bytes/sent/15min",
                 "load/connections/5min"]:
        assert f"$SYS/broker/{name}" in values, name
    # The log is JSON, one object a line, with the stable connect/disconnect events.
    events = [json.loads(line) for line in broker.log().splitlines() if line.startswith("{")]
    kinds = {e["fields"].get("event") for e in events}
    assert {"connect", "disconnect"} <= kinds, kinds


@pytest.mark.tern_config("sys_interval = 0\n")
def test_sys_interval_zero_publishes_nothing(broker):
    """sys_interval = 0 turns `$SYS` off."""
    assert sys_values(broker, seconds=1) == {}
