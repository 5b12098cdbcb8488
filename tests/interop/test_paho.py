"""Tern driven by paho-mqtt 2.x (MQTT 3.1 and 3.1.1). Rule numbers are those of MQTT 3.1.1
(OASIS standard, 2014); MQTT 3.1 has the same behaviour where the test runs for both."""

from __future__ import annotations

import time

import pytest

from mqtt_clients import PROTOCOLS

pytestmark = pytest.mark.parametrize("protocol", list(PROTOCOLS.values()), ids=list(PROTOCOLS))

BINARY = bytes(range(256)) * 4 + b"\x00\xff\x00"


def is_v311(protocol) -> bool:
    return protocol == PROTOCOLS["v311"]


# --- CONNECT / CONNACK ----------------------------------------------------------------------


def test_connect_accepted_connack_0__MQTT_3_1_4_4(broker, paho, protocol, unique):
    """[MQTT-3.1.4-4] a valid CONNECT is answered by CONNACK with return code 0;
    [MQTT-3.2.2-1] clean session 1 gives session present 0."""
    client = paho(f"{unique}-c", protocol)
    result = client.connect()
    assert result.reason_code == 0
    assert result.session_present is False
    assert client.client.is_connected()
    client.disconnect()


@pytest.mark.skip(reason="paho-mqtt cannot send an unsupported protocol level; the Rust tests "
                  "of crates/broker and crates/server cover CONNACK 0x01 [MQTT-3.1.2-2]")
def test_unsupported_protocol_level_refused__MQTT_3_1_2_2(protocol):
    """[MQTT-3.1.2-2] an unsupported protocol level gets CONNACK 0x01 and the connection closes."""


# --- PUBLISH / SUBSCRIBE --------------------------------------------------------------------


@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_delivered_qos_is_min_of_published_and_granted__MQTT_3_8_4_6(
    broker, paho, protocol, unique, sub_qos
):
    """[MQTT-3.8.4-6] messages are delivered at min(published QoS, granted QoS); [MQTT-3.9.3]
    SUBACK grants the requested QoS; QoS 0, 1 and 2 flows work in both directions (client to
    broker at the published QoS, broker to client at the delivered QoS), payloads (binary too)
    arrive intact, and each message exactly once [MQTT-4.3.3]."""
    sub = paho(f"{unique}-s", protocol)
    sub.connect()
    assert sub.subscribe("q/t", sub_qos) == [sub_qos]
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    sent = {}
    for pub_qos in (0, 1, 2):
        payload = bytes([pub_qos]) + BINARY
        sent[pub_qos] = payload
        pub.publish("q/t", payload, qos=pub_qos)
    pub.publish("q/t", b"end", qos=2)
    before = sub.wait_marker("q/t", b"end")
    assert [m.payload for m in before] == [sent[0], sent[1], sent[2]]
    for message, pub_qos in zip(before, (0, 1, 2)):
        assert message.qos == min(pub_qos, sub_qos), message
        assert message.retain is False
        assert message.topic == "q/t"


def test_overlapping_subscriptions_max_qos__MQTT_3_3_5_1(broker, paho, protocol, unique):
    """[MQTT-3.3.5-1] a message matching several subscriptions of one client is delivered
    respecting the maximum QoS of the matching subscriptions."""
    sub = paho(f"{unique}-s", protocol)
    sub.connect()
    assert sub.subscribe([("o/#", 0), ("o/a", 2)]) == [0, 2]
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    pub.publish("o/a", b"x", qos=2)
    pub.publish("o/a", b"end", qos=2)
    before = sub.wait_marker("o/a", b"end")
    assert before, "nothing delivered"
    assert all(m.payload == b"x" for m in before)
    assert max(m.qos for m in before) == 2, before


def test_empty_and_large_payloads_intact(broker, paho, protocol, unique):
    """(MQTT 3.1.1 section 3.3.3, Payload) the payload is forwarded unchanged: zero-length,
    binary with NUL bytes, UTF-8, and 512 KiB (below the default 1 MiB maximum packet size)."""
    sub = paho(f"{unique}-s", protocol)
    sub.connect()
    sub.subscribe("p/#", 2)
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    big = bytes((i * 7 + 3) % 256 for i in range(512 * 1024))
    payloads = [b"", BINARY, big, "grüße ✓".encode()]
    for payload in payloads:
        pub.publish("p/x", payload, qos=1)
    got = sub.wait_messages(len(payloads), timeout=10)
    assert [m.payload for m in got] == payloads


def test_unsubscribe_stops_delivery__MQTT_3_10_4_2(broker, paho, protocol, unique):
    """[MQTT-3.10.4-1/-2] UNSUBSCRIBE removes the matching subscription (exact filter string):
    no new messages for it afterwards; other subscriptions stay; [MQTT-3.10.4-4/-5] UNSUBACK
    comes, also for a filter that was not subscribed."""
    sub = paho(f"{unique}-s", protocol)
    sub.connect()
    sub.subscribe([("u/a", 1), ("u/b", 1)])
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    pub.publish("u/a", b"before", qos=1)
    sub.wait_messages(1, topic="u/a")
    sub.unsubscribe("u/a")
    sub.unsubscribe("u/+")  # never subscribed: UNSUBACK all the same
    pub.publish("u/a", b"after", qos=1)
    pub.publish("u/b", b"end", qos=2)
    before = sub.wait_marker("u/b", b"end")
    assert [(m.topic, m.payload) for m in before] == [("u/a", b"before")]


def test_resubscribe_replaces_subscription__MQTT_3_8_4_3(broker, paho, protocol, unique):
    """[MQTT-3.8.4-3] a SUBSCRIBE with a filter identical to an existing subscription replaces it
    (new maximum QoS, one copy per message, not two) and re-sends the matching retained
    messages."""
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    pub.publish("rs/t", b"kept", qos=2, retain=True)
    sub = paho(f"{unique}-s", protocol)
    sub.connect()
    assert sub.subscribe("rs/t", 2) == [2]
    [first] = sub.wait_messages(1)
    assert (first.payload, first.qos, first.retain) == (b"kept", 2, True)
    assert sub.subscribe("rs/t", 0) == [0]
    [_, again] = sub.wait_messages(2)
    assert (again.payload, again.qos, again.retain) == (b"kept", 0, True)
    pub.publish("rs/t", b"live", qos=2)
    pub.publish("rs/t", b"end", qos=2)
    before = sub.wait_marker("rs/t", b"end")
    assert [(m.payload, m.qos, m.retain) for m in before[2:]] == [(b"live", 0, False)]


# --- topic filters --------------------------------------------------------------------------


def test_wildcards_plus_and_hash__MQTT_4_7_1_2_and_4_7_1_3(broker, paho, protocol, unique):
    """[MQTT-4.7.1-2] `#` matches the parent level and any number of child levels;
    [MQTT-4.7.1-3] `+` matches exactly one level, including an empty one."""
    plus = paho(f"{unique}-a", protocol)
    plus.connect()
    plus.subscribe("w/+/c", 1)
    hash_ = paho(f"{unique}-b", protocol)
    hash_.connect()
    hash_.subscribe("w/a/#", 1)
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    topics = ["w/a/c", "w/b/c", "w//c", "w/a/b/c", "w/a", "w/b/d", "w/a/c/d", "w/c", "x/a/c"]
    for topic in topics:
        pub.publish(topic, topic.encode(), qos=1)
    pub.publish("w/a/c", b"end", qos=2)  # matches both filters
    assert [m.topic for m in plus.wait_marker("w/a/c", b"end")] == ["w/a/c", "w/b/c", "w//c"]
    assert [m.topic for m in hash_.wait_marker("w/a/c", b"end")] == [
        "w/a/c", "w/a/b/c", "w/a", "w/a/c/d"]


def test_dollar_topics_not_matched_by_wildcards__MQTT_4_7_2_1(broker, paho, protocol, unique):
    """[MQTT-4.7.2-1] filters starting with a wildcard do not match topics starting with `$`;
    and a client's PUBLISH to `$SYS/...` (reserved for the server) is not forwarded to anyone,
    not even to a `$SYS/#` subscriber, while the publisher's connection stays usable.
    Tern's own `$SYS/broker/...` topics (issue 13) reach the `$SYS/#` subscriber; the clients'
    `$` messages reach no one."""
    everything = paho(f"{unique}-a", protocol)
    everything.connect()
    assert everything.subscribe([("#", 1), ("+/x", 1), ("+/+/#", 1)]) == [1, 1, 1]
    sys_sub = paho(f"{unique}-b", protocol)
    sys_sub.connect()
    assert sys_sub.subscribe([("$SYS/#", 1), ("$x/#", 1), ("m/x", 1)]) == [1, 1, 1]
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    pub.publish("$SYS/test", b"sys", qos=1)
    pub.publish("$SYS/broker/x", b"sys2", qos=0)
    pub.publish("$x/x", b"dollar", qos=2)
    pub.publish("m/x", b"end", qos=2)  # the publisher is still connected and forwarded
    assert everything.wait_marker("m/x", b"end") == []
    clients = [b"sys", b"sys2", b"dollar"]
    got = sys_sub.wait_marker("m/x", b"end")
    assert [m for m in got if m.payload in clients or not m.topic.startswith("$SYS/broker/")] == []


# --- retained messages ----------------------------------------------------------------------


def test_retained_stored_and_sent_to_new_subscriber__MQTT_3_3_1_5_6_8(
    broker, paho, protocol, unique
):
    """[MQTT-3.3.1-5] a RETAIN=1 message is stored with its QoS; [MQTT-3.3.1-6] a new
    subscription gets the retained message of each matching topic; [MQTT-3.3.1-8] with the
    RETAIN flag set; delivered QoS = min(stored QoS, granted QoS)."""
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    pub.publish("r/0", b"zero", qos=0, retain=True)
    pub.publish("r/1", BINARY, qos=1, retain=True)
    pub.publish("r/2", b"two", qos=2, retain=True)
    pub.disconnect()
    sub = paho(f"{unique}-s", protocol)
    sub.connect()
    sub.subscribe("r/#", 2)
    got = {m.topic: m for m in sub.wait_messages(3)}
    assert {t: (m.payload, m.qos, m.retain) for t, m in got.items()} == {
        "r/0": (b"zero", 0, True),
        "r/1": (BINARY, 1, True),
        "r/2": (b"two", 2, True),
    }
    low = paho(f"{unique}-l", protocol)
    low.connect()
    low.subscribe("r/2", 1)
    [message] = low.wait_messages(1)
    assert (message.payload, message.qos, message.retain) == (b"two", 1, True)


def test_retained_publish_crossing_a_subscribe_arrives_once__MQTT_3_3_1_6(
    broker, paho, protocol, unique
):
    """[MQTT-3.3.1-6] a new subscription gets the retained message of its topic; a retained QoS 2
    PUBLISH sent at the moment the SUBSCRIBE is reaches the new subscriber once, from its route
    or from the retained set, never from both [MQTT-4.3.3-1]. Before the broker's retained
    clock, 73 of 300 such crossings (a paho script, QoS 2) delivered it twice: the publish
    stored it, the subscription was added, the publish routed it to the new subscription, and
    the subscription's retained set sent it again."""
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    for n in range(30):
        topic = f"{unique}/cross/{n}"
        sub = paho(f"{unique}-s{n}", protocol)
        sub.connect()
        # Not waited for: the SUBSCRIBE and the PUBLISH cross.
        result, mid = sub.client.subscribe(topic, 2)
        assert result == 0
        crossing = pub.publish(topic, b"x", qos=2, retain=True, wait=False)
        sub.wait_suback(mid)
        pub.wait_published(crossing)
        # A copy of the retained set not sent yet when the first marker is takes its turn
        # before the second (the connection takes turns between its queue and the set).
        pub.publish(topic, b"end", qos=2)
        pub.publish(topic, b"end2", qos=2)
        before = sub.wait_marker(topic, b"end2")
        copies = [(m.payload, m.retain) for m in before if m.payload == b"x"]
        assert len(copies) == 1, (n, [(m.payload, m.retain) for m in before])
        sub.disconnect()


def test_retained_replaced__MQTT_3_3_1_7(broker, paho, protocol, unique):
    """[MQTT-3.3.1-7] a new retained message replaces the one stored for its topic (here a
    QoS 0 one replacing a QoS 1 one)."""
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    pub.publish("r/a", b"v1", qos=1, retain=True)
    pub.publish("r/a", b"v2", qos=0, retain=True)
    pub.publish("r/a", b"flush", qos=1)  # same connection: v2 has been handled before this
    sub = paho(f"{unique}-s", protocol)
    sub.connect()
    sub.subscribe("r/a", 1)
    pub.publish("r/a", b"end", qos=2)
    before = sub.wait_marker("r/a", b"end")
    assert [(m.payload, m.qos, m.retain) for m in before] == [(b"v2", 0, True)]


def test_retained_deleted_by_empty_payload__MQTT_3_3_1_10_11(broker, paho, protocol, unique):
    """[MQTT-3.3.1-10] a RETAIN=1 PUBLISH with an empty payload is forwarded as normal to current
    subscribers and removes the retained message; [MQTT-3.3.1-11] it is not stored itself: a new
    subscriber gets nothing."""
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    pub.publish("r/a", b"v1", qos=1, retain=True)
    existing = paho(f"{unique}-e", protocol)
    existing.connect()
    existing.subscribe("r/a", 1)
    [stored] = existing.wait_messages(1)
    assert (stored.payload, stored.retain) == (b"v1", True)
    pub.publish("r/a", b"", qos=1, retain=True)
    [_, cleared] = existing.wait_messages(2)
    assert (cleared.payload, cleared.qos, cleared.retain) == (b"", 1, False)
    late = paho(f"{unique}-s", protocol)
    late.connect()
    late.subscribe("r/#", 1)
    pub.publish("r/a", b"end", qos=2)
    assert late.wait_marker("r/a", b"end") == []


def test_retain_flag_cleared_for_established_subscription__MQTT_3_3_1_9(
    broker, paho, protocol, unique
):
    """[MQTT-3.3.1-9] a message forwarded to an established subscription has RETAIN 0, however
    it was published."""
    sub = paho(f"{unique}-s", protocol)
    sub.connect()
    sub.subscribe("r/#", 2)
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    for qos in (0, 1, 2):
        pub.publish(f"r/{qos}", b"live", qos=qos, retain=True)
    got = sub.wait_messages(3)
    assert [(m.topic, m.retain, m.qos) for m in got] == [
        ("r/0", False, 0), ("r/1", False, 1), ("r/2", False, 2)]


def test_non_retained_publish_keeps_retained__MQTT_3_3_1_12(broker, paho, protocol, unique):
    """[MQTT-3.3.1-12] a RETAIN=0 PUBLISH neither stores nor replaces the retained message."""
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    pub.publish("r/a", b"kept", qos=1, retain=True)
    pub.publish("r/a", b"transient", qos=1, retain=False)
    pub.publish("r/b", b"transient", qos=1, retain=False)
    sub = paho(f"{unique}-s", protocol)
    sub.connect()
    sub.subscribe("r/#", 1)
    pub.publish("r/a", b"end", qos=2)
    before = sub.wait_marker("r/a", b"end")
    assert [(m.topic, m.payload, m.retain) for m in before] == [("r/a", b"kept", True)]


# --- will -----------------------------------------------------------------------------------


@pytest.mark.parametrize("will_qos", [0, 1, 2])
def test_will_published_on_abrupt_close__MQTT_3_1_2_8(broker, paho, protocol, unique, will_qos):
    """[MQTT-3.1.2-8] the will is published when the network connection closes without
    DISCONNECT; [MQTT-3.1.2-14/-15] at the will QoS; [MQTT-3.1.2-16] not retained."""
    watcher = paho(f"{unique}-w", protocol)
    watcher.connect()
    watcher.subscribe("will/#", 2)
    dying = paho(f"{unique}-d", protocol, will=("will/d", b"gone" + BINARY, will_qos, False))
    dying.connect()
    dying.kill()
    [will] = watcher.wait_messages(1)
    assert (will.topic, will.payload, will.qos, will.retain) == (
        "will/d", b"gone" + BINARY, will_qos, False)


def test_will_retained__MQTT_3_1_2_17(broker, paho, protocol, unique):
    """[MQTT-3.1.2-17] a will with Will Retain 1 is published as a retained message."""
    dying = paho(f"{unique}-d", protocol, will=("will/r", b"bye", 1, True))
    dying.connect()
    dying.kill()
    broker.wait_client_gone(dying.client_id)
    late = paho(f"{unique}-l", protocol)
    late.connect()
    late.subscribe("will/r", 1)
    [will] = late.wait_messages(1)
    assert (will.payload, will.qos, will.retain) == (b"bye", 1, True)


def test_will_not_published_after_disconnect__MQTT_3_1_2_10(broker, paho, protocol, unique):
    """[MQTT-3.1.2-10] the will is removed, not published, when the client sends DISCONNECT."""
    watcher = paho(f"{unique}-w", protocol)
    watcher.connect()
    watcher.subscribe("will/#", 1)
    leaving = paho(f"{unique}-d", protocol, will=("will/d", b"gone", 1, False))
    leaving.connect()
    leaving.disconnect()
    # The broker logs the end of the connection after the will would have been published.
    broker.wait_client_gone(leaving.client_id)
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    pub.publish("will/d", b"end", qos=2)
    assert watcher.wait_marker("will/d", b"end") == []


# --- sessions -------------------------------------------------------------------------------


def test_persistent_session_queues_qos1_in_order__MQTT_3_2_2_2(broker, paho, protocol, unique):
    """[MQTT-3.1.2-4] with clean session 0 the session (subscriptions, QoS 1 messages that
    arrive while offline: 100 of them) outlives the connection; on resumption they are delivered
    in order
    [MQTT-4.6.0-6]; [MQTT-3.2.2-3] session present 0 on the first connection and [MQTT-3.2.2-2]
    1 on resumption (MQTT 3.1 has no session present flag: not checked there)."""
    client_id = f"{unique}-s"
    sub = paho(client_id, protocol, clean_session=False)
    first = sub.connect()
    if is_v311(protocol):
        assert first.session_present is False
    sub.subscribe("s/t", 1)
    sub.disconnect()
    broker.wait_client_gone(client_id)

    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    payloads = [f"m{i}".encode() for i in range(100)]  # more than the in-flight window (32)
    for payload in payloads:
        pub.publish("s/t", payload, qos=1)

    again = paho(client_id, protocol, clean_session=False)
    resumed = again.connect()
    assert resumed.reason_code == 0
    if is_v311(protocol):
        assert resumed.session_present is True
    got = again.wait_messages(len(payloads))
    assert [m.payload for m in got] == payloads
    assert all(m.qos == 1 for m in got)
    # The subscription itself survived too.
    pub.publish("s/t", b"live", qos=2)
    again.wait_marker("s/t", b"live")


def test_clean_session_discards_state__MQTT_3_1_2_6(broker, paho, protocol, unique):
    """[MQTT-3.1.2-6] with clean session 1 the session lasts only as long as the connection:
    messages published while away are not delivered, the subscription is gone, and
    [MQTT-3.2.2-1] session present is 0; a clean-session connection also discards an earlier
    persistent session [MQTT-3.1.2-6] (no session present afterwards)."""
    client_id = f"{unique}-s"
    gone = 0  # connections of client_id that have ended
    for clean in (True, False):
        sub = paho(client_id, protocol, clean_session=clean)
        sub.connect()
        sub.subscribe("c/t", 1)
        sub.disconnect()
        gone += 1
        broker.wait_client_gone(client_id, count=gone)

        pub = paho(f"{unique}-p{int(clean)}", protocol)
        pub.connect()
        pub.publish("c/t", b"while away", qos=1)

        back = paho(client_id, protocol, clean_session=True)
        result = back.connect()
        assert result.session_present is False
        assert back.subscribe("c/x", 1) == [1]
        pub.publish("c/t", b"not subscribed", qos=1)
        pub.publish("c/x", b"end", qos=2)
        assert back.wait_marker("c/x", b"end") == []
        back.disconnect()
        gone += 1
        broker.wait_client_gone(client_id, count=gone)

    # The persistent session of the second round was discarded by the clean connection.
    resumed = paho(client_id, protocol, clean_session=False)
    result = resumed.connect()
    if is_v311(protocol):
        assert result.session_present is False
    resumed.subscribe("c/x", 1)
    pub = paho(f"{unique}-p9", protocol)
    pub.connect()
    pub.publish("c/x", b"end", qos=2)
    assert resumed.wait_marker("c/x", b"end") == []


def test_unacknowledged_resent_with_dup_on_resume__MQTT_4_4_0_1(broker, paho, protocol, unique):
    """[MQTT-4.4.0-1] on resumption of a clean-session-0 session the server re-sends the QoS 1
    PUBLISH packets that were not acknowledged, [MQTT-3.3.1-1] with DUP set, before the messages
    queued while offline, in order."""
    client_id = f"{unique}-s"
    sub = paho(client_id, protocol, clean_session=False, manual_ack=True)  # never PUBACKs
    sub.connect()
    sub.subscribe("d/t", 1)
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    for i in range(3):
        pub.publish("d/t", f"unacked{i}".encode(), qos=1)
    got = sub.wait_messages(3)
    assert [m.dup for m in got] == [False] * 3
    sub.kill()
    broker.wait_client_gone(client_id)
    for i in range(2):
        pub.publish("d/t", f"queued{i}".encode(), qos=1)

    again = paho(client_id, protocol, clean_session=False)
    again.connect()
    pub.publish("d/t", b"end", qos=2)
    before = again.wait_marker("d/t", b"end")
    assert [(m.payload, m.dup, m.qos) for m in before] == [
        (b"unacked0", True, 1), (b"unacked1", True, 1), (b"unacked2", True, 1),
        (b"queued0", False, 1), (b"queued1", False, 1),
    ]


@pytest.mark.tern_config("[limits]\nmax_queued_messages = 5\n")
def test_offline_queue_bounded_oldest_dropped(broker, paho, protocol, unique):
    """Tern's rule (configuration `limits.max_queued_messages`): an offline session keeps at most
    that many messages; the oldest are dropped, the newest delivered in order."""
    client_id = f"{unique}-s"
    sub = paho(client_id, protocol, clean_session=False)
    sub.connect()
    sub.subscribe("b/t", 1)
    sub.disconnect()
    broker.wait_client_gone(client_id)
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    for i in range(12):
        pub.publish("b/t", f"m{i}".encode(), qos=1)
    again = paho(client_id, protocol, clean_session=False)
    again.connect()
    pub.publish("b/t", b"end", qos=2)
    before = again.wait_marker("b/t", b"end")
    assert [m.payload for m in before] == [f"m{i}".encode() for i in range(7, 12)]


@pytest.mark.parametrize("second_clean", [True, False], ids=["clean", "persistent"])
def test_client_id_takeover_closes_first__MQTT_3_1_4_2(
    broker, paho, protocol, unique, second_clean
):
    """[MQTT-3.1.4-2] a second connection with the client id of a connected client makes the
    server disconnect the first; the second one works. With clean session 0 on both, the second
    resumes the session [MQTT-3.2.2-2]."""
    client_id = f"{unique}-x"
    first = paho(client_id, protocol, clean_session=second_clean)
    first.connect()
    first.subscribe("k/t", 1)
    second = paho(client_id, protocol, clean_session=second_clean)
    result = second.connect()
    assert result.reason_code == 0
    first.wait_disconnected()
    if is_v311(protocol):
        assert result.session_present is (not second_clean)
    if second_clean:
        second.subscribe("k/t", 1)
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    pub.publish("k/t", b"to the second", qos=1)
    [message] = second.wait_messages(1)
    assert message.payload == b"to the second"
    assert first.messages == []
    assert second.client.is_connected()


def test_takeover_publishes_will_of_first__MQTT_3_1_2_8(broker, paho, protocol, unique):
    """[MQTT-3.1.4-2] the take-over closes the first connection without a DISCONNECT from its
    client, so [MQTT-3.1.2-8] its will is published."""
    watcher = paho(f"{unique}-w", protocol)
    watcher.connect()
    watcher.subscribe("will/#", 1)
    client_id = f"{unique}-x"
    first = paho(client_id, protocol, will=("will/x", b"taken over", 1, False))
    first.connect()
    second = paho(client_id, protocol)
    second.connect()
    first.wait_disconnected()
    [will] = watcher.wait_messages(1)
    assert (will.topic, will.payload) == ("will/x", b"taken over")


# --- keep-alive -----------------------------------------------------------------------------


def test_keepalive_timeout_disconnects_and_publishes_will__MQTT_3_1_2_24(
    broker, paho, protocol, unique
):
    """[MQTT-3.1.2-24] with keep-alive 1 s, a client that sends PINGREQs stays connected; once it
    goes silent, the server disconnects it within 1.5 × keep-alive and [MQTT-3.1.2-8] publishes
    its will."""
    watcher = paho(f"{unique}-w", protocol)
    watcher.connect()
    watcher.subscribe("ka/#", 1)
    silent = paho(f"{unique}-k", protocol, keepalive=1, will=("ka/will", b"timed out", 1, False),
                  threaded=False)
    silent.connect()
    silent.pump(2.2)  # paho sends PINGREQ every second: more than 1.5 s in all, still connected
    assert not silent.disconnected.is_set(), "disconnected although it sent PINGREQs"
    assert silent.client.is_connected()
    assert watcher.messages == []
    stopped = time.monotonic()  # the network loop stops: nothing more is sent
    [will] = watcher.wait_messages(1, timeout=5)
    elapsed = time.monotonic() - stopped
    assert will.payload == b"timed out"
    # The last PINGREQ went out at most 1 s before `stopped`; the limit is 1.5 s after it.
    assert 0.3 <= elapsed <= 3.0, f"will after {elapsed:.2f} s"
    silent.wait_disconnected(timeout=3)  # the broker closed the connection
    assert broker.wait_for_log(r"reason=keep-alive timeout"), "no keep-alive timeout logged"


# --- ordering -------------------------------------------------------------------------------


@pytest.mark.parametrize("qos", [1, 2])
def test_ordering_200_messages__MQTT_4_6_0_6(broker, paho, protocol, unique, qos):
    """[MQTT-4.6.0-6] messages from one client on one topic are delivered in the order they were
    received: 200 messages, none lost or duplicated."""
    sub = paho(f"{unique}-s", protocol)
    sub.connect()
    sub.subscribe("o/t", qos)
    pub = paho(f"{unique}-p", protocol)
    pub.connect()
    infos = [pub.publish("o/t", f"{i:03d}".encode(), qos=qos, wait=False) for i in range(200)]
    for info in infos:
        pub.wait_published(info, timeout=10)
    pub.publish("o/t", b"end", qos=qos)
    before = sub.wait_marker("o/t", b"end", timeout=10)
    assert [m.payload for m in before] == [f"{i:03d}".encode() for i in range(200)]
    assert all(m.qos == qos and not m.dup for m in before)
