"""Tern driven by paho-mqtt 2.x over MQTT 5. Rule numbers are those of MQTT Version 5.0 (OASIS
standard, 2019); where the specification states a behaviour without a numbered rule, the
docstring names the section instead.

paho-mqtt 2 reports what the server sent: CONNACK properties (on_connect), the reason code of
PUBACK and PUBCOMP (on_publish), SUBACK reason codes, PUBLISH properties and the server's
DISCONNECT (on_disconnect). Two gaps are filled by `mqtt_clients.PahoClient`: paho ignores the
reason code of PUBREC (the wrapper records it in `pubrecs`), and it does not resolve the Topic
Aliases the server sends (the wrapper does, per connection; `Received.wire_topic` and
`Received.topic_alias` keep what was on the wire).
"""

from __future__ import annotations

import signal
import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

from mqtt_clients import MQTTV5, PROTOCOLS, v5_properties

V5 = MQTTV5
V311 = PROTOCOLS["v311"]

BINARY = bytes(range(256)) * 2 + b"\x00\xff\x00"

# Reason codes (MQTT 5 section 2.4).
SUCCESS = 0x00
NO_MATCHING_SUBSCRIBERS = 0x10
PROTOCOL_ERROR = 0x82
NOT_AUTHORIZED = 0x87
PACKET_IDENTIFIER_NOT_FOUND = 0x92
SERVER_SHUTTING_DOWN = 0x8B
SESSION_TAKEN_OVER = 0x8E
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
PAYLOAD_FORMAT_INVALID = 0x99
SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


def send_fatal(client, topic: str, payload: bytes, qos: int, properties: dict | None = None):
    """Publishes a PUBLISH the server is expected to answer with DISCONNECT. paho's own return
    code is not checked: the server may close the connection before publish() returns."""
    props = v5_properties(PacketTypes.PUBLISH, **properties) if properties else None
    client.client.publish(topic, payload, qos=qos, properties=props)


def options(qos: int, *, no_local=False, retain_as_published=False, retain_handling=0):
    return SubscribeOptions(
        qos=qos, noLocal=no_local, retainAsPublished=retain_as_published,
        retainHandling=retain_handling)


# --- CONNECT / CONNACK ----------------------------------------------------------------------


def test_connack_properties_and_assigned_client_id__MQTT_3_2_2_16(broker, paho, unique):
    """Section 3.2.2.3: the CONNACK of a v5 client announces the limits of the default
    configuration: Maximum Packet Size 1 MiB, Receive Maximum 1024, Topic Alias Maximum 64 (and
    nothing about Maximum QoS, Retain Available, wildcard, shared subscriptions or subscription
    identifiers, which are all available). [MQTT-3.2.2-2] Clean Start 1 gives Session Present 0.
    [MQTT-3.2.2-16] a client with an empty client id gets an Assigned Client Identifier, not
    used by any other session ([MQTT-3.1.3-6]), and [MQTT-3.1.3-7] the CONNECT is processed as
    if the client had sent it: its session can be resumed under that identifier."""
    named = paho(f"{unique}-n", V5)
    result = named.connect()
    assert result.reason_code == SUCCESS
    assert result.session_present is False
    assert result.prop("MaximumPacketSize") == 1048576
    assert result.prop("ReceiveMaximum") == 1024
    assert result.prop("TopicAliasMaximum") == 64
    assert result.prop("AssignedClientIdentifier") is None
    # ... and [MQTT-3.1.2-28] no Response Information, which was not requested.
    for absent in ("MaximumQoS", "RetainAvailable", "WildcardSubscriptionAvailable",
                   "SharedSubscriptionAvailable", "SubscriptionIdentifierAvailable",
                   "ServerKeepAlive", "ResponseInformation"):
        assert result.prop(absent) is None, f"{absent} = {result.prop(absent)}"

    first = paho("", V5, session_expiry=60)
    first_result = first.connect()
    assigned = first_result.prop("AssignedClientIdentifier")
    assert first_result.reason_code == SUCCESS
    assert assigned, "no Assigned Client Identifier for an empty client id"
    second = paho("", V5)
    other = second.connect().prop("AssignedClientIdentifier")
    assert other and other != assigned
    assert other != named.client_id and assigned != named.client_id

    first.subscribe("a/t", 1)
    second.publish("a/t", b"to the first", qos=1)
    [message] = first.wait_messages(1)
    assert message.payload == b"to the first"
    first.disconnect()
    broker.wait_client_gone(assigned)
    resumed = paho(assigned, V5, clean_session=False, session_expiry=60)
    again = resumed.connect()
    assert again.session_present is True
    assert again.prop("AssignedClientIdentifier") is None
    second.publish("a/t", b"to the resumed session", qos=1)
    [message] = resumed.wait_messages(1)
    assert message.payload == b"to the resumed session"


@pytest.mark.tern_config(
    "[limits]\nmax_packet_size = 4096\nreceive_maximum = 10\ntopic_alias_maximum = 5\n"
    "max_keep_alive = 10\n"
    "[mqtt]\nmax_qos = 1\nretain_available = false\nwildcard_subscriptions = false\n"
    "shared_subscriptions = false\nsubscription_identifiers = false\n")
def test_connack_properties_follow_configuration__MQTT_3_2_2_9(broker, paho, unique):
    """Section 3.2.2.3: the CONNACK tells the configured limits: Maximum Packet Size, Receive
    Maximum, Topic Alias Maximum; [MQTT-3.2.2-9] Maximum QoS 1; Retain Available 0; Wildcard,
    Shared Subscription and Subscription Identifier Available 0; and Server Keep Alive (section
    3.2.2.3.14) when the client asked for a longer keep-alive than max_keep_alive."""
    client = paho(f"{unique}-c", V5, keepalive=30)
    result = client.connect()
    assert result.reason_code == SUCCESS
    expected = {
        "MaximumPacketSize": 4096, "ReceiveMaximum": 10, "TopicAliasMaximum": 5,
        "MaximumQoS": 1, "RetainAvailable": 0, "WildcardSubscriptionAvailable": 0,
        "SharedSubscriptionAvailable": 0, "SubscriptionIdentifierAvailable": 0,
        "ServerKeepAlive": 10,
    }
    assert {name: result.prop(name) for name in expected} == expected


# --- sessions -------------------------------------------------------------------------------


def test_session_expiry_keeps_session_and_queued_messages__MQTT_3_1_2_23(broker, paho, unique):
    """[MQTT-3.1.2-23] with Session Expiry Interval 60 the session outlives the connection;
    [MQTT-3.1.2-5] a CONNECT with Clean Start 0 resumes it, [MQTT-3.2.2-3] with Session
    Present 1, and the QoS 1 messages that arrived meanwhile are delivered in order
    ([MQTT-4.6.0-6]), with their properties ([MQTT-3.3.2-15] to [MQTT-3.3.2-20]) and the
    subscription's identifier ([MQTT-3.3.4-3]); the subscription itself is still there."""
    client_id = f"{unique}-s"
    sub = paho(client_id, V5, session_expiry=60)
    assert sub.connect().session_present is False
    sub.subscribe("se/t", 1, subscription_id=5)
    sub.disconnect()
    broker.wait_client_gone(client_id)

    pub = paho(f"{unique}-p", V5)
    pub.connect()
    props = {"ContentType": "c/t", "CorrelationData": b"\x00\x01", "ResponseTopic": "se/r",
             "UserProperty": [("k", "2"), ("k", "1")]}
    for i in range(5):
        pub.publish("se/t", f"queued{i}".encode(), qos=1, properties=props)

    again = paho(client_id, V5, clean_session=False, session_expiry=60)
    result = again.connect()
    assert result.reason_code == SUCCESS
    assert result.session_present is True
    pub.publish("se/t", b"end", qos=2)
    before = again.wait_marker("se/t", b"end")
    assert [(m.payload, m.qos) for m in before] == [(f"queued{i}".encode(), 1) for i in range(5)]
    for message in before:
        assert {name: message.prop(name) for name in props} == props
        assert message.prop("SubscriptionIdentifier") == [5]


@pytest.mark.parametrize("how", ["expiry-0", "expiry-1s", "disconnect-sets-0"])
def test_session_ends_when_expiry_passes__MQTT_4_1_0_2(broker, paho, unique, how):
    """Section 3.1.2.11.2: with Session Expiry Interval 0 (absent, here sent explicitly) the
    session ends with the connection; [MQTT-4.1.0-2] with 1 s it is discarded once 1 s has
    passed; section 3.14.2.2.2: a DISCONNECT can set the interval to 0. Either way a later
    CONNECT with Clean Start 0 gets Session Present 0 ([MQTT-3.2.2-3], [MQTT-3.1.2-6]), no
    subscription and none of the messages published after the first connection closed."""
    client_id = f"{unique}-s"
    expiry = {"expiry-0": 0, "expiry-1s": 1, "disconnect-sets-0": 60}[how]
    sub = paho(client_id, V5, session_expiry=expiry)
    sub.connect()
    sub.subscribe("se/t", 1)
    if how == "disconnect-sets-0":
        sub.disconnect(properties={"SessionExpiryInterval": 0})
    else:
        sub.disconnect()
    broker.wait_client_gone(client_id)
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    pub.publish("se/t", b"while away", qos=1)
    if how == "expiry-1s":
        time.sleep(2.0)

    again = paho(client_id, V5, clean_session=False, session_expiry=60)
    result = again.connect()
    assert result.session_present is False
    again.subscribe("se/x", 1)
    pub.publish("se/t", b"not subscribed", qos=1)
    pub.publish("se/x", b"end", qos=2)
    assert again.wait_marker("se/x", b"end") == []


def test_session_taken_over_disconnect_0x8E__MQTT_3_1_4_3(broker, paho, unique):
    """[MQTT-3.1.4-3] a CONNECT with the client id of a connected client makes the server send
    the existing client DISCONNECT with reason code 0x8E (Session taken over) and close its
    connection; the new connection works and (Clean Start 0) resumes the session."""
    client_id = f"{unique}-x"
    first = paho(client_id, V5, session_expiry=60)
    first.connect()
    first.subscribe("k/t", 1)
    second = paho(client_id, V5, clean_session=False, session_expiry=60)
    result = second.connect()
    assert result.reason_code == SUCCESS
    assert result.session_present is True
    event = first.wait_server_disconnect()
    assert event.reason_code == SESSION_TAKEN_OVER
    first.wait_disconnected()
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    pub.publish("k/t", b"to the second", qos=1)
    [message] = second.wait_messages(1)
    assert message.payload == b"to the second"
    assert first.messages == []


@pytest.mark.parametrize("clean_start", [False, True], ids=["resume", "clean-start"])
def test_takeover_and_will_delay__MQTT_3_1_3_9(broker, paho, unique, clean_start):
    """A take-over ([MQTT-3.1.4-3], 0x8E to the first connection) by a connection with Clean
    Start 0 is a new connection to the session before the Will Delay Interval has passed:
    [MQTT-3.1.3-9] the first connection's will is never sent. With Clean Start 1 the session
    ends ([MQTT-3.1.2-4]), so [MQTT-3.1.2-8] the will is published then, delay or not."""
    watcher = paho(f"{unique}-w", V5)
    watcher.connect()
    watcher.subscribe("tw/#", 1)
    client_id = f"{unique}-x"
    delay = 1 if not clean_start else 5
    first = paho(client_id, V5, session_expiry=60,
                 will=("tw/x", b"first's will", 1, False, {"WillDelayInterval": delay}))
    first.connect()
    second = paho(client_id, V5, clean_session=clean_start, session_expiry=60)
    result = second.connect()
    taken_over = time.monotonic()
    assert result.session_present is (not clean_start)
    assert first.wait_server_disconnect().reason_code == SESSION_TAKEN_OVER
    if clean_start:
        [will] = watcher.wait_messages(1, timeout=3)
        assert will.payload == b"first's will"
        assert time.monotonic() - taken_over < 1.5
        return
    time.sleep(max(0.0, taken_over + delay + 0.8 - time.monotonic()))
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    pub.publish("tw/end", b"end", qos=2)
    assert watcher.wait_marker("tw/end", b"end") == []


def test_server_shutdown_disconnect_0x8B(broker, paho, unique):
    """Section 3.14.2.1 / 4.13: on SIGTERM the broker sends its MQTT 5 clients DISCONNECT with
    0x8B (Server shutting down) before closing, and exits with code 0 within 5 s (Tern's
    shutdown rule); a 3.1.1 client's connection is simply closed."""
    v5 = paho(f"{unique}-5", V5)
    v5.connect()
    v5.subscribe("sd/t", 1)
    v3 = paho(f"{unique}-3", V311)
    v3.connect()
    code, elapsed = broker.stop(signal.SIGTERM)
    assert code == 0, f"exit code {code} after {elapsed:.2f} s"
    assert elapsed < 5.0
    event = v5.wait_server_disconnect(timeout=2)
    assert event.reason_code == SERVER_SHUTTING_DOWN
    v3.wait_disconnected(timeout=2)
    assert not any(e.from_server for e in v3.disconnects)


# --- PUBLISH properties ---------------------------------------------------------------------


def test_publish_properties_forwarded_unaltered__MQTT_3_3_2_15_to_20(broker, paho, unique):
    """[MQTT-3.3.2-4] Payload Format Indicator, [MQTT-3.3.2-15] Response Topic,
    [MQTT-3.3.2-16] Correlation Data (binary, with NUL bytes), [MQTT-3.3.2-17] User Properties
    (a repeated name, non-ASCII) and [MQTT-3.3.2-18] in their order, [MQTT-3.3.2-20] Content
    Type: all forwarded unaltered, at every QoS, to every subscriber (live ones at QoS 1 and 2,
    and a later one that gets the message as retained)."""
    props = {
        "PayloadFormatIndicator": 1,
        "ContentType": "application/json; charset=utf-8",
        "ResponseTopic": "pp/reply/ä",
        "CorrelationData": b"\x00corr\xff" + bytes(range(32)),
        "UserProperty": [("k", "v1"), ("z", "last?"), ("k", "v2"), ("ü", "✓"), ("k", "")],
    }
    binary_props = {"PayloadFormatIndicator": 0, "UserProperty": [("b", "1")]}
    subs = []
    for qos in (1, 2):
        sub = paho(f"{unique}-s{qos}", V5)
        sub.connect()
        sub.subscribe("pp/#", qos)
        subs.append(sub)
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    for qos in (0, 1, 2):
        pub.publish(f"pp/{qos}", '{"grüße": 1}'.encode(), qos=qos, properties=props)
    pub.publish("pp/bin", BINARY, qos=1, properties=binary_props)
    pub.publish("pp/r", b"{}", qos=1, retain=True, properties=props)
    late = paho(f"{unique}-l", V5)
    late.connect()
    late.subscribe("pp/r", 1)

    def check(message, expected):
        for name, value in expected.items():
            assert message.prop(name) == value, (message.topic, name, message.prop(name))

    for sub in subs:
        got = {m.topic: m for m in sub.wait_messages(5)}
        assert set(got) == {"pp/0", "pp/1", "pp/2", "pp/bin", "pp/r"}
        for topic in ("pp/0", "pp/1", "pp/2", "pp/r"):
            check(got[topic], props)
        check(got["pp/bin"], binary_props)
        assert got["pp/bin"].payload == BINARY
        assert got["pp/0"].prop("MessageExpiryInterval") is None
    [retained] = late.wait_messages(1)
    assert retained.retain is True
    check(retained, props)


def test_message_expiry_offline_subscriber__MQTT_3_3_2_5_and_6(broker, paho, unique):
    """[MQTT-3.3.2-5] a message whose Message Expiry Interval (1 s) has passed before delivery
    to an offline session could start is not delivered; [MQTT-3.3.2-6] one with 100 s is
    delivered with the interval minus the time it waited (2 s here); one without the property
    has none. A live subscriber gets the interval (almost) unchanged. The same holds for
    retained messages sent to a new subscription."""
    client_id = f"{unique}-s"
    sub = paho(client_id, V5, session_expiry=60)
    sub.connect()
    sub.subscribe("mx/t", 1)
    sub.disconnect()
    broker.wait_client_gone(client_id)
    live = paho(f"{unique}-l", V5)
    live.connect()
    live.subscribe("mx/t", 1)
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    pub.publish("mx/t", b"short", qos=1, properties={"MessageExpiryInterval": 1})
    pub.publish("mx/t", b"long", qos=1, properties={"MessageExpiryInterval": 100})
    pub.publish("mx/t", b"forever", qos=1)
    for topic, interval in (("mr/short", 1), ("mr/long", 100)):
        pub.publish(topic, b"retained", qos=1, retain=True,
                    properties={"MessageExpiryInterval": interval})
    got = {m.payload: m for m in live.wait_messages(3)}
    assert 99 <= got[b"long"].prop("MessageExpiryInterval") <= 100
    assert 0 <= got[b"short"].prop("MessageExpiryInterval") <= 1
    assert got[b"forever"].prop("MessageExpiryInterval") is None
    time.sleep(2.0)

    again = paho(client_id, V5, clean_session=False, session_expiry=60)
    assert again.connect().session_present is True
    pub.publish("mx/t", b"end", qos=2)
    before = again.wait_marker("mx/t", b"end")
    assert [m.payload for m in before] == [b"long", b"forever"]
    remaining = before[0].prop("MessageExpiryInterval")
    assert remaining is not None and 90 <= remaining <= 98, remaining
    assert before[1].prop("MessageExpiryInterval") is None

    # Retained messages expire too (section 3.3.2.3.3): the expired one is no longer sent to a
    # new subscription, the other one is, with the time it has left.
    late = paho(f"{unique}-r", V5)
    late.connect()
    late.subscribe("mr/#", 1)
    pub.publish("mr/end", b"end", qos=2)
    before = late.wait_marker("mr/end", b"end")
    assert [(m.topic, m.retain) for m in before] == [("mr/long", True)]
    remaining = before[0].prop("MessageExpiryInterval")
    assert remaining is not None and 90 <= remaining <= 98, remaining


# --- SUBSCRIBE options and identifiers ------------------------------------------------------


def test_subscription_identifiers_on_delivery__MQTT_3_3_4_3(broker, paho, unique):
    """[MQTT-3.3.4-3] a message delivered because of subscriptions with Subscription Identifiers
    carries them: [MQTT-3.3.4-4] all of them in a single copy, or [MQTT-3.3.4-5] each copy its
    own; a subscription without identifier adds none; retained messages sent at SUBSCRIBE carry
    that SUBSCRIBE's identifier; a client that never used identifiers gets none."""
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    pub.publish("sr/r", b"kept", qos=1, retain=True)
    sub = paho(f"{unique}-s", V5)
    sub.connect()
    assert sub.subscribe("si/a", 1, subscription_id=1) == [1]
    assert sub.subscribe("si/+", 1, subscription_id=268435455) == [1]  # the largest
    assert sub.subscribe("si/#", 1) == [1]
    assert sub.subscribe("sr/r", 1, subscription_id=7) == [1]
    [kept] = sub.wait_messages(1)
    assert (kept.payload, kept.retain, kept.prop("SubscriptionIdentifier")) == (b"kept", True, [7])
    sub.clear()
    plain = paho(f"{unique}-n", V5)
    plain.connect()
    plain.subscribe("si/#", 1)

    pub.publish("si/a", b"both", qos=1)
    pub.publish("si/b", b"one", qos=1)
    pub.publish("si/x/y", b"none", qos=1)
    pub.publish("si/x/y", b"end", qos=2)
    before = sub.wait_marker("si/x/y", b"end")
    both = [m for m in before if m.payload == b"both"]
    ids = sorted(i for m in both for i in m.prop("SubscriptionIdentifier", []))
    assert ids == [1, 268435455], [m.properties for m in both]
    if len(both) > 1:  # one copy per subscription: each with its own identifier (or none)
        assert all(len(m.prop("SubscriptionIdentifier", [])) <= 1 for m in both)
    one = [m for m in before if m.payload == b"one"]
    assert sorted(i for m in one for i in m.prop("SubscriptionIdentifier", [])) == [268435455]
    assert all(m.prop("SubscriptionIdentifier") is None for m in before if m.payload == b"none")
    assert all(m.prop("SubscriptionIdentifier") is None
               for m in plain.wait_marker("si/x/y", b"end"))

    # [MQTT-3.8.4-3] a SUBSCRIBE to the same filter replaces the subscription, identifier too.
    sub.clear()
    assert sub.subscribe("si/a", 1, subscription_id=9) == [1]
    pub.publish("si/a", b"replaced", qos=1)
    pub.publish("si/x/y", b"end", qos=2)
    before = sub.wait_marker("si/x/y", b"end")
    ids = sorted(i for m in before for i in m.prop("SubscriptionIdentifier", []))
    assert ids == [9, 268435455], [m.properties for m in before]


def test_no_local__MQTT_3_8_3_3(broker, paho, unique):
    """[MQTT-3.8.3-3] with No Local 1, the client's own messages are not forwarded to it, while
    other clients' messages on the same topic are; without No Local (another filter) its own
    messages come back."""
    client = paho(f"{unique}-a", V5)
    client.connect()
    assert client.subscribe("nl/t", options=options(1, no_local=True)) == [1]
    assert client.subscribe("nl/echo", 1) == [1]
    other = paho(f"{unique}-b", V5)
    other.connect()
    client.publish("nl/t", b"own", qos=1)
    other.publish("nl/t", b"theirs", qos=1)
    client.publish("nl/t", b"own again", qos=2)
    client.publish("nl/echo", b"echo", qos=2)
    before = client.wait_marker("nl/echo", b"echo")
    assert [(m.topic, m.payload) for m in before] == [("nl/t", b"theirs")]


def test_no_local_on_shared_subscription_is_protocol_error__MQTT_3_8_3_4(broker, paho, unique):
    """[MQTT-3.8.3-4] No Local 1 on a shared subscription is a Protocol Error: the server ends
    the connection (DISCONNECT 0x82, section 4.13)."""
    client = paho(f"{unique}-a", V5)
    client.connect()
    client.client.subscribe("$share/g/nl/t", options=options(1, no_local=True))
    event = client.wait_server_disconnect()
    assert event.reason_code == PROTOCOL_ERROR
    client.wait_disconnected()


def test_retain_as_published__MQTT_3_3_1_12_and_13(broker, paho, unique):
    """[MQTT-3.3.1-12] with Retain As Published 0 a live message is forwarded with RETAIN 0
    however it was published; [MQTT-3.3.1-13] with 1 its RETAIN flag is kept as published.
    Retained messages sent because of a new subscription have RETAIN 1 either way (section
    3.3.1.3)."""
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    pub.publish("rap/old", b"stored", qos=1, retain=True)
    sub = paho(f"{unique}-s", V5)
    sub.connect()
    assert sub.subscribe("rap/+", options=options(1, retain_as_published=True)) == [1]
    assert sub.subscribe("rapx/+", options=options(1, retain_as_published=False)) == [1]
    [stored] = sub.wait_messages(1)
    assert (stored.topic, stored.retain) == ("rap/old", True)
    for prefix in ("rap", "rapx"):
        pub.publish(f"{prefix}/a", b"retained", qos=1, retain=True)
        pub.publish(f"{prefix}/a", b"plain", qos=1, retain=False)
    pub.publish("rap/a", b"end", qos=2)
    before = sub.wait_marker("rap/a", b"end")
    assert [(m.topic, m.payload, m.retain) for m in before[1:]] == [
        ("rap/a", b"retained", True), ("rap/a", b"plain", False),
        ("rapx/a", b"retained", False), ("rapx/a", b"plain", False),
    ]
    late = paho(f"{unique}-l", V5)
    late.connect()
    late.subscribe("rapx/a", options=options(1, retain_as_published=False))
    [kept] = late.wait_messages(1)
    assert (kept.payload, kept.retain) == (b"retained", True)


def test_retain_handling__MQTT_3_3_1_9_10_11(broker, paho, unique):
    """Retain Handling: [MQTT-3.3.1-9] 0 sends the retained message at every SUBSCRIBE (also
    one that replaces the subscription, [MQTT-3.8.4-4]); [MQTT-3.3.1-10] 1 sends it only if the
    subscription did not exist; [MQTT-3.3.1-11] 2 never sends it."""
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    pub.publish("rh/t", b"kept", qos=1, retain=True)
    counts = {}
    for handling in (0, 1, 2):
        sub = paho(f"{unique}-s{handling}", V5)
        sub.connect()
        for _ in range(2):
            assert sub.subscribe("rh/t", options=options(1, retain_handling=handling)) == [1]
        counts[handling] = sub
    pub.publish("rh/t", b"end", qos=2)
    got = {h: [(m.payload, m.retain) for m in sub.wait_marker("rh/t", b"end")]
           for h, sub in counts.items()}
    assert got == {
        0: [(b"kept", True), (b"kept", True)],
        1: [(b"kept", True)],
        2: [],
    }


@pytest.mark.parametrize("filters,expected,available", [
    pytest.param(
        [("$share/g/t", 1), ("t", 1)], [SHARED_SUBSCRIPTIONS_NOT_SUPPORTED, 1],
        "SharedSubscriptionAvailable", id="shared-off",
        marks=pytest.mark.tern_config("[mqtt]\nshared_subscriptions = false\n")),
    pytest.param(
        [("w/+", 1), ("w/#", 0), ("w/t", 2)],
        [WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED, WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED, 2],
        "WildcardSubscriptionAvailable", id="wildcards-off",
        marks=pytest.mark.tern_config("[mqtt]\nwildcard_subscriptions = false\n")),
])
def test_suback_refusal_codes__MQTT_3_9_3_2(broker, paho, unique, filters, expected, available):
    """[MQTT-3.9.3-2] / [MQTT-3.8.4-7] SUBACK has a reason code per filter, in order
    ([MQTT-3.9.3-1]): 0x9E (Shared Subscriptions not supported) for `$share/g/t` with
    `shared_subscriptions = false`, 0xA2 (Wildcard Subscriptions not supported) for `+` and `#`
    filters with `wildcard_subscriptions = false`; the other filters are granted, and the
    CONNACK said so beforehand (Shared / Wildcard Subscription Available 0)."""
    client = paho(f"{unique}-c", V5)
    assert client.connect().prop(available) == 0
    assert client.subscribe(filters) == expected
    assert client.client.is_connected()


@pytest.mark.tern_config("[mqtt]\nsubscription_identifiers = false\n")
def test_suback_subscription_identifiers_not_supported_0xA1__MQTT_3_9_3_2(broker, paho, unique):
    """[MQTT-3.9.3-2] with `subscription_identifiers = false`, a SUBSCRIBE carrying a
    Subscription Identifier gets 0xA1 (Subscription Identifiers not supported); one without is
    granted."""
    client = paho(f"{unique}-c", V5)
    assert client.connect().prop("SubscriptionIdentifierAvailable") == 0
    assert client.subscribe("t/a", 1, subscription_id=3) == [
        SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED]
    assert client.subscribe("t/a", 1) == [1]


def test_shared_subscription_each_message_to_one_member__MQTT_4_8_2_3(broker, paho, unique):
    """Section 4.8.2: each message matching a shared subscription `$share/g/sh/t` goes to exactly
    one of its two (MQTT 5) members, [MQTT-4.8.2-3] at the QoS granted to that member; a plain
    subscriber of the same topic gets every message; no retained message is sent to a member
    when it subscribes."""
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    pub.publish("sh/t", b"retained", qos=1, retain=True)
    members = []
    for i, qos in enumerate((1, 2)):
        member = paho(f"{unique}-m{i}", V5)
        member.connect()
        assert member.subscribe("$share/g/sh/t", qos) == [qos]
        members.append(member)
    plain = paho(f"{unique}-n", V5)
    plain.connect()
    plain.subscribe("sh/t", 1)
    plain.wait_messages(1)  # its retained message
    count = 20
    for i in range(count):
        pub.publish("sh/t", f"m{i:02d}".encode(), qos=2)
    pub.publish("sh/t", b"end", qos=2)
    assert len(plain.wait_marker("sh/t", b"end")) == count + 1

    deadline = time.monotonic() + 5
    while sum(len(m.messages) for m in members) < count + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # any duplicate would have arrived by now
    payloads = [msg.payload for m in members for msg in m.messages]
    assert sorted(payloads) == sorted([f"m{i:02d}".encode() for i in range(count)] + [b"end"])
    for member, qos in zip(members, (1, 2)):
        assert all(msg.qos == qos and not msg.retain for msg in member.messages)


# --- topic aliases --------------------------------------------------------------------------


def test_inbound_topic_aliases__MQTT_3_3_2_12(broker, paho, unique):
    """[MQTT-3.3.2-12] the server accepts every Topic Alias from 1 to the Topic Alias Maximum it
    announced (64): a PUBLISH with a topic and an alias sets the alias up, later ones with an
    empty topic and the alias go to that topic; an alias can be mapped to another topic
    (section 3.3.2.3.4). Subscribers (3.1.1 and 5) see the real topics; a retained message
    published through an alias is stored under the real topic."""
    v3 = paho(f"{unique}-3", V311)
    v3.connect()
    v3.subscribe("ta/#", 1)
    v5 = paho(f"{unique}-5", V5)
    v5.connect()
    v5.subscribe("ta/#", 1)
    pub = paho(f"{unique}-p", V5)
    assert pub.connect().prop("TopicAliasMaximum") == 64
    sent = [
        ("ta/one", b"1", 1, 1), ("", b"2", 1, 1), ("ta/two", b"3", 64, 1), ("", b"4", 64, 0),
        ("ta/three", b"5", 1, 1), ("", b"6", 1, 2), ("", b"7", 64, 1),
    ]
    for topic, payload, alias, qos in sent:
        info = pub.publish(topic, payload, qos=qos, properties={"TopicAlias": alias})
        if qos == 1:
            assert pub.puback_reason(info) == SUCCESS
    expected = ["ta/one", "ta/one", "ta/two", "ta/two", "ta/three", "ta/three", "ta/two"]
    pub.publish("", b"kept", qos=1, retain=True, properties={"TopicAlias": 1})
    pub.publish("ta/end", b"end", qos=2)
    for sub in (v3, v5):
        before = sub.wait_marker("ta/end", b"end")
        assert sorted((m.payload, m.topic) for m in before) == sorted(
            [(payload, topic) for (_, payload, _, _), topic in zip(sent, expected)]
            + [(b"kept", "ta/three")])
    assert pub.client.is_connected()
    late = paho(f"{unique}-l", V5)
    late.connect()
    late.subscribe("ta/#", 1)
    [kept] = late.wait_messages(1)
    assert (kept.topic, kept.payload, kept.retain) == ("ta/three", b"kept", True)


@pytest.mark.parametrize("case", ["over-maximum", "unknown", "not-carried-over"])
def test_inbound_topic_alias_errors__MQTT_3_3_2_7(broker, paho, unique, case):
    """Section 3.3.2.3.4: a Topic Alias above the server's Topic Alias Maximum (65 > 64) gets
    DISCONNECT 0x94 (Topic Alias invalid); an empty topic with an alias that was never set up is
    a Protocol Error (0x82); [MQTT-3.3.2-7] aliases are not carried from one connection to the
    next, so after reconnecting the old alias is unknown (0x82). Nothing is forwarded."""
    watcher = paho(f"{unique}-w", V5)
    watcher.connect()
    watcher.subscribe("te/#", 1)
    client_id = f"{unique}-p"
    pub = paho(client_id, V5)
    pub.connect()
    if case == "over-maximum":
        send_fatal(pub, "te/a", b"bad", qos=1, properties={"TopicAlias": 65})
        expected = TOPIC_ALIAS_INVALID
    elif case == "unknown":
        send_fatal(pub, "", b"bad", qos=1, properties={"TopicAlias": 3})
        expected = PROTOCOL_ERROR
    else:
        pub.publish("te/a", b"good", qos=1, properties={"TopicAlias": 3})
        pub.disconnect()
        broker.wait_client_gone(client_id)
        pub = paho(client_id, V5)
        pub.connect()
        send_fatal(pub, "", b"bad", qos=1, properties={"TopicAlias": 3})
        expected = PROTOCOL_ERROR
    event = pub.wait_server_disconnect()
    assert event.reason_code == expected
    other = paho(f"{unique}-o", V5)
    other.connect()
    other.publish("te/end", b"end", qos=2)
    before = watcher.wait_marker("te/end", b"end")
    assert [m.payload for m in before] == ([b"good"] if case == "not-carried-over" else [])


@pytest.mark.tern_config("[limits]\ntopic_alias_maximum = 0\n")
def test_inbound_topic_aliases_off__MQTT_3_2_2_18(broker, paho, unique):
    """With `topic_alias_maximum = 0` the CONNACK has no Topic Alias Maximum (section 3.2.2.3.8:
    absent means 0), so [MQTT-3.2.2-18] the client may send no alias; one that does gets
    DISCONNECT 0x94 (Topic Alias invalid)."""
    pub = paho(f"{unique}-p", V5)
    assert pub.connect().prop("TopicAliasMaximum") is None
    pub.publish("tz/a", b"plain", qos=1)
    send_fatal(pub, "tz/a", b"aliased", qos=1, properties={"TopicAlias": 1})
    assert pub.wait_server_disconnect().reason_code == TOPIC_ALIAS_INVALID


def test_outbound_topic_aliases__MQTT_3_3_2_11(broker, paho, unique):
    """A subscriber that announces Topic Alias Maximum 2 gets aliases from the server:
    [MQTT-3.3.2-11] / [MQTT-3.1.2-26] never above 2 (nor 0, [MQTT-3.3.2-8]); the first PUBLISH
    with an alias carries the topic, later ones may leave it empty; resolved, every message has
    the topic it was published to. [MQTT-3.1.2-27] a subscriber without Topic Alias Maximum gets
    no alias. [MQTT-3.3.2-7] a new connection starts without aliases: its first aliased PUBLISH
    carries the topic again."""
    aliased = paho(f"{unique}-a", V5, connect_properties={"TopicAliasMaximum": 2})
    aliased.connect()
    aliased.subscribe("tb/#", 1)
    plain = paho(f"{unique}-n", V5)
    plain.connect()
    plain.subscribe("tb/#", 1)
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    topics = ["tb/a", "tb/b", "tb/a", "tb/c", "tb/a", "tb/b", "tb/c", "tb/a", "tb/a"]
    for i, topic in enumerate(topics):
        pub.publish(topic, f"{i}".encode(), qos=i % 2)
    pub.publish("tb/b", b"end", qos=1)
    expected = [(t, f"{i}".encode()) for i, t in enumerate(topics)] + [("tb/b", b"end")]

    got = aliased.wait_messages(len(expected))
    assert [(m.topic, m.payload) for m in got] == expected
    aliases = [m.topic_alias for m in got if m.topic_alias is not None]
    assert aliases, "the server used no topic alias"
    assert all(1 <= alias <= 2 for alias in aliases), aliases
    assert any(m.wire_topic == "" for m in got), "no PUBLISH left its topic out"
    assert all(m.wire_topic or m.topic_alias for m in got)
    seen = set()
    for m in got:  # an alias first appears together with its topic
        if m.topic_alias is not None and m.topic_alias not in seen:
            assert m.wire_topic, m
            seen.add(m.topic_alias)

    got_plain = plain.wait_messages(len(expected))
    assert [(m.topic, m.payload) for m in got_plain] == expected
    assert all(m.topic_alias is None and m.wire_topic for m in got_plain)

    aliased.disconnect()
    again = paho(f"{unique}-a", V5, connect_properties={"TopicAliasMaximum": 2})
    again.connect()
    again.subscribe("tb/#", 1)
    pub.publish("tb/a", b"after reconnect", qos=1)
    pub.publish("tb/a", b"again", qos=1)
    [first, second] = again.wait_messages(2)
    assert (first.wire_topic, first.topic, second.topic) == ("tb/a", "tb/a", "tb/a")


def test_outbound_topic_aliases_reset_for_resent_messages__MQTT_3_3_2_7(broker, paho, unique):
    """[MQTT-3.3.2-7] Topic Alias mappings do not carry over to a new connection:
    unacknowledged QoS 1 messages re-sent on resumption ([MQTT-4.4.0-1], DUP set) and the ones
    queued meanwhile carry their topic again the first time an alias is used, and every message
    resolves to the topic it was published to."""
    client_id = f"{unique}-a"
    props = {"TopicAliasMaximum": 5}
    sub = paho(client_id, V5, session_expiry=60, manual_ack=True, connect_properties=props)
    sub.connect()
    sub.subscribe("tr/#", 1)
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    topics = ["tr/a", "tr/a", "tr/b", "tr/a"]
    for i, topic in enumerate(topics):
        pub.publish(topic, f"unacked{i}".encode(), qos=1)
    got = sub.wait_messages(len(topics))
    assert [m.topic for m in got] == topics
    assert any(m.wire_topic == "" for m in got), "the server used no topic alias"
    sub.kill()
    broker.wait_client_gone(client_id)
    pub.publish("tr/b", b"queued", qos=1)

    again = paho(client_id, V5, clean_session=False, session_expiry=60, connect_properties=props)
    assert again.connect().session_present is True
    pub.publish("tr/b", b"end", qos=1)
    got = again.wait_marker("tr/b", b"end")
    assert [(m.topic, m.payload, m.dup) for m in got] == [
        (t, f"unacked{i}".encode(), True) for i, t in enumerate(topics)
    ] + [("tr/b", b"queued", False)]
    seen = set()
    for m in got:
        assert 1 <= (m.topic_alias or 1) <= 5
        if m.topic_alias is not None and m.topic_alias not in seen:
            assert m.wire_topic, f"alias {m.topic_alias} used on a new connection without topic"
            seen.add(m.topic_alias)


# --- flow control and sizes -----------------------------------------------------------------


def test_client_maximum_packet_size__MQTT_3_1_2_24_and_25(broker, paho, unique):
    """[MQTT-3.1.2-24] the server sends no packet larger than the client's Maximum Packet Size
    (256 bytes here); [MQTT-3.1.2-25] a message too large for it is discarded as if it had been
    sent, and the messages after it are delivered."""
    sub = paho(f"{unique}-s", V5, connect_properties={"MaximumPacketSize": 256})
    sub.connect()
    sub.subscribe("mp/t", 1)
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    pub.publish("mp/t", b"s" * 100, qos=1)
    pub.publish("mp/t", b"L" * 1000, qos=1)
    pub.publish("mp/t", b"x" * 200, qos=0)  # 200 + headers: under 256
    pub.publish("mp/t", b"end", qos=1)
    before = sub.wait_marker("mp/t", b"end")
    assert [m.payload for m in before] == [b"s" * 100, b"x" * 200]
    assert sub.client.is_connected()


def test_client_receive_maximum__MQTT_3_3_4_9(broker, paho, unique):
    """[MQTT-3.3.4-9] the server has at most Receive Maximum (2) unacknowledged QoS 1 PUBLISH
    packets out to the client; each PUBACK lets the next one go."""
    sub = paho(f"{unique}-s", V5, manual_ack=True, connect_properties={"ReceiveMaximum": 2})
    sub.connect()
    sub.subscribe("rm/t", 1)
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    for i in range(5):
        pub.publish("rm/t", f"m{i}".encode(), qos=1)
    first = sub.wait_messages(2)
    time.sleep(0.5)
    assert len(sub.messages) == 2, sub.messages
    sub.ack(first[0])
    third = sub.wait_messages(3)[2]
    time.sleep(0.3)
    assert len(sub.messages) == 3
    for message in (first[1], third):
        sub.ack(message)
    got = sub.wait_messages(5)
    for message in got[3:]:
        sub.ack(message)
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(5)]


# --- PUBACK reason codes --------------------------------------------------------------------


def test_puback_no_matching_subscribers_0x10__MQTT_3_4_2_1(broker, paho, unique):
    """[MQTT-3.4.2-1] section 3.4.2.1: a QoS 1 PUBLISH nobody is subscribed to is acknowledged
    with 0x10 (No matching subscribers), one with a subscriber (connected or not) with 0x00."""
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    info = pub.publish("nm/t", b"nobody", qos=1)
    assert pub.puback_reason(info) == NO_MATCHING_SUBSCRIBERS
    sub = paho(f"{unique}-s", V5)
    sub.connect()
    sub.subscribe("nm/#", 0)
    info = pub.publish("nm/t", b"somebody", qos=1)
    assert pub.puback_reason(info) == SUCCESS
    info = pub.publish("nm/other", b"still somebody", qos=1)
    assert pub.puback_reason(info) == SUCCESS
    info = pub.publish("xx/t", b"nobody again", qos=1)
    assert pub.puback_reason(info) == NO_MATCHING_SUBSCRIBERS
    assert [m.payload for m in sub.wait_messages(2)] == [b"somebody", b"still somebody"]
    # A subscription of an offline session matches as well.
    offline = paho(f"{unique}-o", V5, session_expiry=60)
    offline.connect()
    offline.subscribe("off/t", 1)
    offline.disconnect()
    broker.wait_client_gone(offline.client_id)
    info = pub.publish("off/t", b"for later", qos=1)
    assert pub.puback_reason(info) == SUCCESS


@pytest.mark.parametrize("qos", [1, 2])
def test_puback_not_authorized_for_sys_0x87__MQTT_3_4_2_1(broker, paho, unique, qos):
    """[MQTT-3.4.2-1] / [MQTT-3.5.2-1] a PUBLISH to `$SYS/x` (topics reserved for the server) is
    refused with 0x87 (Not authorized) in the PUBACK, or for QoS 2 the PUBREC; it is not
    forwarded (not even to a `$SYS/#` subscriber) and the connection stays usable."""
    watcher = paho(f"{unique}-w", V5)
    watcher.connect()
    watcher.subscribe([("$SYS/#", 1), ("ok/t", 1)])
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    info = pub.publish("$SYS/x", b"forbidden", qos=qos)
    if qos == 1:
        assert pub.puback_reason(info) == NOT_AUTHORIZED
    else:
        assert pub.pubrecs[info.mid] == NOT_AUTHORIZED
        # paho answers the refusing PUBREC with PUBREL all the same (its limitation); the server
        # no longer knows the packet identifier and says so in PUBCOMP (section 3.7.2.1).
        assert pub.puback_reason(info) == PACKET_IDENTIFIER_NOT_FOUND
    info = pub.publish("ok/t", b"end", qos=2)
    # The broker's own `$SYS/broker/...` topics (issue 13) come through `$SYS/#`; the refused
    # message does not.
    before = watcher.wait_marker("ok/t", b"end")
    assert [m for m in before if not m.topic.startswith("$SYS/broker/")] == []


def test_request_problem_information_0_no_reason_string__MQTT_3_1_2_29(broker, paho, unique):
    """[MQTT-3.1.2-29] a client that sent Request Problem Information 0 gets no Reason String on
    a PUBACK (here a 0x87 refusal); one that did not send it (default 1) may get one, and Tern
    sends one."""
    quiet = paho(f"{unique}-q", V5, connect_properties={"RequestProblemInformation": 0})
    quiet.connect()
    info = quiet.publish("$SYS/x", b"forbidden", qos=1)
    reason, properties = quiet.pubacks[info.mid]
    assert reason == NOT_AUTHORIZED
    assert getattr(properties, "ReasonString", None) is None
    assert getattr(properties, "UserProperty", None) is None
    chatty = paho(f"{unique}-c", V5)
    chatty.connect()
    info = chatty.publish("$SYS/x", b"forbidden", qos=1)
    reason, properties = chatty.pubacks[info.mid]
    assert reason == NOT_AUTHORIZED
    assert getattr(properties, "ReasonString", None)


@pytest.mark.tern_config("[limits]\nmax_packet_size = 1024\n")
def test_packet_too_large_disconnect_0x95__MQTT_3_2_2_15(broker, paho, unique):
    """Section 3.2.2.3.6: a client sending a packet over the Maximum Packet Size the server
    announced (1024, [MQTT-3.2.2-15]) gets DISCONNECT 0x95 (Packet too large) and the message is
    not forwarded; packets within the limit are."""
    watcher = paho(f"{unique}-w", V5)
    watcher.connect()
    watcher.subscribe("pl/#", 1)
    pub = paho(f"{unique}-p", V5)
    assert pub.connect().prop("MaximumPacketSize") == 1024
    pub.publish("pl/t", b"s" * 900, qos=1)
    send_fatal(pub, "pl/t", b"L" * 2000, qos=1)
    event = pub.wait_server_disconnect()
    assert event.reason_code == PACKET_TOO_LARGE
    other = paho(f"{unique}-o", V5)
    other.connect()
    other.publish("pl/end", b"end", qos=2)
    assert [m.payload for m in watcher.wait_marker("pl/end", b"end")] == [b"s" * 900]


def test_puback_payload_format_invalid_0x99__MQTT_3_3_2_4(broker, paho, unique):
    """Section 3.3.2.3.2: a PUBLISH whose Payload Format Indicator says UTF-8 but whose payload
    is not may be refused with 0x99 (Payload format invalid); Tern does, and forwards nothing."""
    watcher = paho(f"{unique}-w", V5)
    watcher.connect()
    watcher.subscribe("pf/#", 1)
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    info = pub.publish("pf/t", b"\xff\xfe not utf-8", qos=1,
                       properties={"PayloadFormatIndicator": 1})
    assert pub.puback_reason(info) == PAYLOAD_FORMAT_INVALID
    info = pub.publish("pf/t", "ok ✓".encode(), qos=1, properties={"PayloadFormatIndicator": 1})
    assert pub.puback_reason(info) == SUCCESS
    pub.publish("pf/t", b"end", qos=2)
    assert [m.payload for m in watcher.wait_marker("pf/t", b"end")] == ["ok ✓".encode()]


# --- request / response ---------------------------------------------------------------------


def test_request_response_round_trip__MQTT_3_3_2_15_and_16(broker, paho, unique):
    """Section 4.10: a requester publishes requests with a Response Topic and Correlation Data;
    the responder, which got both unaltered ([MQTT-3.3.2-15], [MQTT-3.3.2-16]), publishes each
    response to that topic with that Correlation Data; the requester matches every response to
    its request."""
    responder = paho(f"{unique}-r", V5)
    responder.connect()
    responder.subscribe("rr/req", 1)
    requester = paho(f"{unique}-q", V5)
    requester.connect()
    reply_to = f"rr/resp/{unique}"
    requester.subscribe(reply_to, 1)
    requests = {b"\x00id-1": b"2+2", b"\x01id-2\xff": b"3*3"}
    for correlation, question in requests.items():
        requester.publish("rr/req", question, qos=1,
                          properties={"ResponseTopic": reply_to, "CorrelationData": correlation})
    answers = {b"2+2": b"4", b"3*3": b"9"}
    for request in responder.wait_messages(len(requests)):
        responder.publish(
            request.prop("ResponseTopic"), answers[request.payload], qos=1,
            properties={"CorrelationData": request.prop("CorrelationData")})
    got = {m.prop("CorrelationData"): m.payload for m in requester.wait_messages(2)}
    assert got == {correlation: answers[q] for correlation, q in requests.items()}


# --- wills ----------------------------------------------------------------------------------


def test_will_delay_publishes_after_interval__MQTT_3_1_2_8(broker, paho, unique):
    """[MQTT-3.1.2-8] with Will Delay Interval 2 (and a longer session expiry) the will is
    published once 2 s have passed after the connection was lost, not at once; [MQTT-3.1.3-10]
    with its User Properties in order, and its other properties."""
    watcher = paho(f"{unique}-w", V5)
    watcher.connect()
    watcher.subscribe("wd/#", 1)
    will_props = {"WillDelayInterval": 2, "UserProperty": [("w", "2"), ("a", "1"), ("w", "0")],
                  "ContentType": "text/plain", "MessageExpiryInterval": 100}
    dying = paho(f"{unique}-d", V5, session_expiry=60,
                 will=("wd/d", b"late", 1, False, will_props))
    dying.connect()
    dying.kill()
    lost = time.monotonic()
    [will] = watcher.wait_messages(1, timeout=6)
    elapsed = time.monotonic() - lost
    assert 1.8 <= elapsed <= 4.0, f"will after {elapsed:.2f} s"
    assert (will.topic, will.payload, will.qos, will.retain) == ("wd/d", b"late", 1, False)
    assert will.prop("UserProperty") == will_props["UserProperty"]
    assert will.prop("ContentType") == "text/plain"
    # Section 3.1.3.2.4: the will's Message Expiry Interval is sent as the expiry of the
    # publication: it starts when the will is published, not at CONNECT.
    assert 99 <= will.prop("MessageExpiryInterval") <= 100


@pytest.mark.parametrize("clean_start", [False, True], ids=["resume", "clean-start"])
def test_will_delay_reconnect_within_delay__MQTT_3_1_3_9(broker, paho, unique, clean_start):
    """[MQTT-3.1.3-9] a new connection to the session (Clean Start 0, same client id) before the
    Will Delay Interval (2 s) has passed means the will is never sent. With Clean Start 1 the
    new connection ends the old session instead ([MQTT-3.1.2-4]), and [MQTT-3.1.2-8] a will is
    published when its session ends, without waiting for the rest of the delay."""
    watcher = paho(f"{unique}-w", V5)
    watcher.connect()
    watcher.subscribe("wd/#", 1)
    client_id = f"{unique}-d"
    dying = paho(client_id, V5, session_expiry=60,
                 will=("wd/d", b"gone", 1, False, {"WillDelayInterval": 2}))
    dying.connect()
    dying.kill()
    lost = time.monotonic()
    broker.wait_client_gone(client_id)
    time.sleep(0.3)
    back = paho(client_id, V5, clean_session=clean_start, session_expiry=60)
    result = back.connect()
    reconnected = time.monotonic()
    assert result.session_present is (not clean_start)
    if clean_start:
        [will] = watcher.wait_messages(1, timeout=5)
        elapsed = time.monotonic() - reconnected
        assert will.payload == b"gone"
        assert elapsed < 1.0, f"will {elapsed:.2f} s after the session ended"
        return
    time.sleep(max(0.0, lost + 3.0 - time.monotonic()))  # 1 s past the will delay
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    pub.publish("wd/end", b"end", qos=2)
    assert watcher.wait_marker("wd/end", b"end") == []


@pytest.mark.parametrize("expiry", [1, 0], ids=["expiry-1s", "expiry-0"])
def test_will_published_when_session_ends_before_delay__MQTT_3_1_2_8(
    broker, paho, unique, expiry
):
    """[MQTT-3.1.2-8] the will goes out when the Will Delay Interval passes or the session ends,
    whichever comes first: Will Delay 10 s with Session Expiry 1 s gives the will after ~1 s;
    with Session Expiry 0 the session ends with the connection, and the will goes out at once."""
    watcher = paho(f"{unique}-w", V5)
    watcher.connect()
    watcher.subscribe("wd/#", 1)
    dying = paho(f"{unique}-d", V5, session_expiry=expiry,
                 will=("wd/d", b"session over", 1, False, {"WillDelayInterval": 10}))
    dying.connect()
    dying.kill()
    lost = time.monotonic()
    [will] = watcher.wait_messages(1, timeout=6)
    elapsed = time.monotonic() - lost
    assert will.payload == b"session over"
    low, high = (0.8, 3.0) if expiry else (0.0, 1.0)
    assert low <= elapsed <= high, f"will after {elapsed:.2f} s"


@pytest.mark.parametrize("reason", [0x04, 0x00], ids=["0x04-with-will", "0x00-normal"])
def test_disconnect_reason_and_will__MQTT_3_14_4_3(broker, paho, unique, reason):
    """Section 3.14.2.1: DISCONNECT with 0x04 (Disconnect with Will Message) makes the server
    publish the will ([MQTT-3.1.2-8]); with 0x00 (Normal disconnection) [MQTT-3.14.4-3] /
    [MQTT-3.1.2-10] the will is discarded."""
    watcher = paho(f"{unique}-w", V5)
    watcher.connect()
    watcher.subscribe("wr/#", 1)
    client_id = f"{unique}-d"
    leaving = paho(client_id, V5, will=("wr/d", b"bye", 1, False))
    leaving.connect()
    leaving.disconnect(reason_code=reason)
    broker.wait_client_gone(client_id)
    pub = paho(f"{unique}-p", V5)
    pub.connect()
    pub.publish("wr/end", b"end", qos=2)
    before = watcher.wait_marker("wr/end", b"end")
    if reason == 0x04:
        assert [(m.topic, m.payload, m.qos) for m in before] == [("wr/d", b"bye", 1)]
    else:
        assert before == []


# --- mixed protocol versions ----------------------------------------------------------------


@pytest.mark.parametrize("old", list(PROTOCOLS.values()), ids=list(PROTOCOLS))
def test_mixed_versions_round_trip(broker, paho, unique, old):
    """Messages cross protocol versions intact: a 3.x client's request (binary payload, QoS 1
    and 2, and a retained one) reaches an MQTT 5 subscriber, whose replies (with MQTT 5
    properties, which a 3.x client cannot receive and does not) reach the 3.x client."""
    v3 = paho(f"{unique}-3", old)
    v3.connect()
    v3.subscribe("mix/reply", 2)
    v3.publish("mix/req", b"retained" + BINARY, qos=1, retain=True)
    v5 = paho(f"{unique}-5", V5)
    v5.connect()
    v5.subscribe("mix/req", 2)
    [retained] = v5.wait_messages(1)
    assert (retained.payload, retained.retain, retained.qos) == (b"retained" + BINARY, True, 1)
    v3.publish("mix/req", b"q1" + BINARY, qos=1)
    v3.publish("mix/req", b"q2" + BINARY, qos=2)
    got = v5.wait_messages(3)[1:]
    assert [(m.payload, m.qos, m.retain) for m in got] == [
        (b"q1" + BINARY, 1, False), (b"q2" + BINARY, 2, False)]
    assert all(m.properties is not None for m in got)
    for message in got:
        v5.publish("mix/reply", b"re:" + message.payload, qos=message.qos,
                   properties={"UserProperty": [("k", "v")], "ContentType": "x/y"})
    replies = v3.wait_messages(2)
    assert [(m.payload, m.qos) for m in replies] == [
        (b"re:q1" + BINARY, 1), (b"re:q2" + BINARY, 2)]
