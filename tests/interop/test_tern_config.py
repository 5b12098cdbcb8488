"""Tern behaviour that depends on its configuration file (`tern serve --config FILE`), checked
with paho-mqtt 2.x over MQTT 3.1.1. Keys: crates/server/src/config.rs."""

from __future__ import annotations

import time

import pytest

from mqtt_clients import PROTOCOLS

V311 = PROTOCOLS["v311"]


@pytest.mark.tern_config("[mqtt]\nmax_qos = 1\n")
def test_granted_qos_lower_than_requested__MQTT_3_8_4_6(broker, paho, unique):
    """[MQTT-3.8.4-6] the server may grant a lower QoS than requested (mqtt.max_qos = 1: SUBACK
    0x01 for a QoS 2 request); messages are then delivered at min(published, granted)."""
    sub = paho(f"{unique}-s", V311)
    sub.connect()
    assert sub.subscribe([("g/a", 2), ("g/b", 1), ("g/c", 0)]) == [1, 1, 0]
    pub = paho(f"{unique}-p", V311)
    pub.connect()
    pub.publish("g/a", b"a", qos=1)
    pub.publish("g/c", b"c", qos=1)
    got = sub.wait_messages(2)
    assert [(m.topic, m.qos) for m in got] == [("g/a", 1), ("g/c", 0)]


@pytest.mark.tern_config("[mqtt]\npersistent_session_expiry = 1\n")
def test_persistent_session_expires(broker, paho, unique):
    """mqtt.persistent_session_expiry = 1: a clean-session-0 session survives a short absence
    (session present 1 [MQTT-3.2.2-2]) and is gone after it has been offline for more than 1 s
    (session present 0, queued messages and subscription discarded)."""
    client_id = f"{unique}-s"
    sub = paho(client_id, V311, clean_session=False)
    sub.connect()
    sub.subscribe("x/t", 1)
    sub.disconnect()
    back = paho(client_id, V311, clean_session=False)
    assert back.connect().session_present is True
    back.disconnect()
    broker.wait_client_gone(client_id, count=2)
    offline_since = time.monotonic()
    pub = paho(f"{unique}-p", V311)
    pub.connect()
    pub.publish("x/t", b"queued", qos=1)
    time.sleep(max(0.0, offline_since + 1.6 - time.monotonic()))  # expiry 1 s, timer slack
    late = paho(client_id, V311, clean_session=False)
    assert late.connect().session_present is False
    late.subscribe("x/m", 1)
    pub.publish("x/t", b"not subscribed", qos=1)
    pub.publish("x/m", b"end", qos=2)
    assert late.wait_marker("x/m", b"end") == []


@pytest.mark.tern_config("[mqtt]\nqueue_qos0_offline = true\n")
def test_queue_qos0_offline(broker, paho, unique):
    """mqtt.queue_qos0_offline = true: QoS 0 messages for an offline persistent session are
    queued too (MQTT 3.1.1 section 3.1.2.4 allows it) and delivered in order on resumption."""
    client_id = f"{unique}-s"
    sub = paho(client_id, V311, clean_session=False)
    sub.connect()
    sub.subscribe("z/t", 1)
    sub.disconnect()
    broker.wait_client_gone(client_id)
    pub = paho(f"{unique}-p", V311)
    pub.connect()
    for i, qos in enumerate((0, 1, 0)):
        pub.publish("z/t", f"m{i}".encode(), qos=qos)
    back = paho(client_id, V311, clean_session=False)
    back.connect()
    got = back.wait_messages(3)
    assert [(m.payload, m.qos) for m in got] == [(b"m0", 0), (b"m1", 1), (b"m2", 0)]


@pytest.mark.tern_config("[limits]\nmax_packet_size = 4096\n")
def test_oversized_publish_closes_connection_and_publishes_will__MQTT_3_1_2_8(
    broker, paho, unique
):
    """limits.max_packet_size = 4096: a larger PUBLISH is a protocol error for Tern; it closes
    the connection without forwarding the message, and, the connection having ended without
    DISCONNECT, [MQTT-3.1.2-8] publishes the will. A packet just below the limit passes."""
    watcher = paho(f"{unique}-w", V311)
    watcher.connect()
    watcher.subscribe("big/#", 1)
    pub = paho(f"{unique}-p", V311, will=("big/will", b"too big", 1, False))
    pub.connect()
    pub.publish("big/ok", bytes(4000), qos=1)
    # paho may already see the connection closed when publish() returns (rc NO_CONN): the
    # message not being forwarded is checked on the watcher's side.
    pub.client.publish("big/no", bytes(5000), qos=1)
    pub.wait_disconnected()
    got = watcher.wait_messages(2)
    assert [(m.topic, len(m.payload)) for m in got] == [("big/ok", 4000), ("big/will", 7)]
