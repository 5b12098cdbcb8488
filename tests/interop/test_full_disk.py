"""A full disk is not an outage (docs/configuration.md, "When the disk is full"), seen by clients
we did not write: the broker's data directory sits on a small tmpfs of its own (mounted by the
test: it needs root, and is skipped otherwise), filled by retained traffic and by a file beside
the store. paho-mqtt (MQTT 5 and 3.1.1) and mosquitto_pub/mosquitto_sub check what a client
sees while it is full, that the broker takes work again by itself when space returns, and that
nothing acknowledged is missing after a restart."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import _start_broker, _stop_broker
from mqtt_clients import (
    MOSQUITTO_SUB, MQTTV5, PROTOCOLS, MosquittoSub, PahoClient, mosquitto_pub,
)

V311 = PROTOCOLS["v311"]
QUOTA_EXCEEDED = 0x97
#: PUBACK codes of a message taken: Success, No matching subscribers.
TAKEN = (0x00, 0x10)
PAYLOAD = b"r" * 20_000
MB = 1_000_000


def _free(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


class SmallDisk:
    def __init__(self, mount: Path):
        self.mount = mount
        self.filler = mount / "filler"

    def fill_to(self, leave: int) -> None:
        """Grows a file beside the data directory until at most `leave` bytes are free."""
        chunk = b"\x5a" * (256 * 1024)
        with open(self.filler, "ab") as file:
            while (free := _free(self.mount)) > leave:
                try:
                    file.write(chunk[: min(len(chunk), free - leave)])
                    file.flush()
                except OSError:
                    break

    def free_space(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
        capture_output=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.decode().strip()}")
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _config(disk: SmallDisk) -> str:
    return (
        f'data_dir = "{disk.mount / "data"}"\n'
        'durability = "process"\n'
        'min_free_disk = "8MB"\n'
    )


def _retain(client: PahoClient, topic: str) -> int:
    info = client.publish(topic, PAYLOAD, qos=1, retain=True)
    return client.puback_reason(info)


def _retained_topics(broker) -> list[str]:
    """The topics of every retained message a new `retained/#` subscription gets (mosquitto_sub
    listens for 3 s, so one that should not be there is seen too)."""
    host, port = broker
    result = subprocess.run(
        [MOSQUITTO_SUB, "-h", host, "-p", str(port), "-t", "retained/#", "--retained-only",
         "-F", "%t", "-W", "3"],
        capture_output=True, timeout=20,
    )
    return sorted(line for line in result.stdout.decode().splitlines() if line)


def test_full_disk_refuses_with_quota_exceeded_serves_the_rest_and_recovers(small_disk, tmp_path):
    """MQTT 5 PUBACK 0x97 Quota exceeded (section 3.4.2.1) and SUBACK 0x97 while the disk is
    below `min_free_disk`; QoS 0 (mosquitto) and clean-session QoS 1 (paho 3.1.1) carry on; a
    3.1.1 client gets no PUBACK and is disconnected; space returns and the broker takes retained
    messages again without a restart; after a restart every acknowledged one is there."""
    broker = _start_broker(tmp_path, _config(small_disk))
    clients: list[PahoClient] = []

    def paho(client_id, protocol, **kwargs) -> PahoClient:
        client = PahoClient(broker, client_id, protocol, **kwargs)
        clients.append(client)
        return client

    mosquitto_pub(broker, "-t", "ready/chat", "-m", "ready", "-r", "-q", "1")
    chat = MosquittoSub(broker, ["chat/#"], wait_seconds=60, ready_topic="ready/chat")
    try:
        chat.wait_ready()
        clean_sub = paho("clean-sub", V311)
        clean_sub.connect()
        clean_sub.subscribe("clean/#", 1)
        clean_pub = paho("clean-pub", V311)
        clean_pub.connect()
        away = paho("away", MQTTV5, clean_session=False, session_expiry=3600)
        away.connect()
        away.subscribe("meters/#", 1)
        away.disconnect()
        publisher = paho("publisher", MQTTV5)
        publisher.connect()

        small_disk.fill_to(12 * MB)
        acknowledged = []
        while True:
            topic = f"retained/{len(acknowledged)}"
            reason = _retain(publisher, topic)
            if reason == QUOTA_EXCEEDED:
                break
            assert reason in TAKEN, f"unexpected PUBACK reason {reason:#x}"
            acknowledged.append(topic)
            assert len(acknowledged) < 2000, "the watermark never stopped the traffic"
        assert acknowledged
        assert _free(small_disk.mount) > 2 * MB, "refused before the engine ran out of space"

        # Full: QoS 1 for a persistent session and a new persistent subscription get 0x97.
        info = publisher.publish("meters/1", b"m", qos=1)
        assert publisher.puback_reason(info) == QUOTA_EXCEEDED
        returning = paho("away", MQTTV5, clean_session=False, session_expiry=3600)
        returning.connect()
        assert returning.subscribe("rooms/#", 1) == [QUOTA_EXCEEDED]
        returning.disconnect()
        # What needs no disk goes on.
        for n in range(3):
            mosquitto_pub(broker, "-t", "chat/t", "-m", f"chat-{n}", "-q", "0")
            clean_pub.publish("clean/t", f"clean-{n}".encode(), qos=1)
        chat.wait_data(3)
        assert [m.payload for m in clean_sub.wait_messages(3)] == [
            b"clean-0", b"clean-1", b"clean-2"]

        # 3.1.1: not acknowledged, and closed after a bounded wait.
        old = paho("old-publisher", V311, clean_session=False)
        old.connect()
        info = old.publish("meters/1", b"m", qos=1, wait=False)
        old.wait_disconnected(timeout=12)
        assert not info.is_published(), "no PUBACK for a message that was not stored"

        # Space returns: retained messages are taken again, without a restart.
        small_disk.free_space()
        deadline = time.monotonic() + 5
        while True:
            topic = f"retained/{len(acknowledged)}"
            if _retain(publisher, topic) in TAKEN:
                acknowledged.append(topic)
                break
            assert time.monotonic() < deadline, "no recovery after space returned"
            time.sleep(0.05)
        assert _retained_topics(broker) == sorted(acknowledged)
    finally:
        for client in clients:
            client.close()
        chat.close()
        assert broker.proc.poll() is None, "the broker never exits"
        _stop_broker(broker)

    restarted = _start_broker(tmp_path, _config(small_disk))
    try:
        assert _retained_topics(restarted) == sorted(acknowledged)
    finally:
        _stop_broker(restarted)
