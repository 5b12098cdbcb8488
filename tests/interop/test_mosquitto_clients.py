"""Tern driven by Debian's mosquitto_pub / mosquitto_sub (libmosquitto), with `-V mqttv31` and
`-V mqttv311`. Rule numbers are those of MQTT 3.1.1.

mosquitto_sub prints one line per message ("%q\\t%r\\t%t\\t%x": QoS, retain, topic, payload in
hex, so binary payloads compare byte for byte). To know when a mosquitto_sub has subscribed, a
test puts a retained message on a "ready" topic first and adds that topic to the subscription:
once the ready message is printed, the broker has handled the whole SUBSCRIBE."""

from __future__ import annotations

import os

import pytest

from mqtt_clients import MOSQUITTO_VERSIONS, PROTOCOLS, mosquitto_pub

pytestmark = pytest.mark.parametrize(
    "version", list(MOSQUITTO_VERSIONS.values()), ids=list(MOSQUITTO_VERSIONS)
)

READY = "ready"


def put_ready(broker, version):
    mosquitto_pub(broker, "-t", READY, "-m", "ready", "-r", "-q", "1", version=version)


@pytest.mark.parametrize(
    "sub_qos,pub_qos", [(0, 0), (1, 1), (2, 2), (1, 2), (2, 1), (0, 2), (2, 0)]
)
def test_pub_sub_qos__MQTT_3_8_4_6(broker, mosquitto_sub, version, unique, sub_qos, pub_qos):
    """mosquitto_pub -q P to mosquitto_sub -q S: delivered once at min(P, S) [MQTT-3.8.4-6],
    RETAIN 0 [MQTT-3.3.1-9], payload intact."""
    put_ready(broker, version)
    sub = mosquitto_sub(["m/t"], version=version, qos=sub_qos, ready_topic=READY,
                        client_id=f"{unique}-s")
    sub.wait_ready()
    mosquitto_pub(broker, "-t", "m/t", "-m", "hello wörld", "-q", str(pub_qos), version=version)
    mosquitto_pub(broker, "-t", "m/t", "-m", "end", "-q", "2", version=version)
    lines = sub.wait_data(2)
    assert [(l.payload, l.qos, l.retain) for l in lines] == [
        ("hello wörld".encode(), min(pub_qos, sub_qos), False),
        (b"end", min(2, sub_qos), False),
    ]


def test_retained_r__MQTT_3_3_1_5_6_8(broker, mosquitto_sub, version, unique):
    """mosquitto_pub -r stores the message [MQTT-3.3.1-5]; a later mosquitto_sub -C 1 gets it
    [MQTT-3.3.1-6] with the retain flag [MQTT-3.3.1-8] at min(stored, requested) QoS; a second
    -r publish replaces it [MQTT-3.3.1-7]."""
    mosquitto_pub(broker, "-t", "r/a", "-m", "first", "-r", "-q", "2", version=version)
    sub = mosquitto_sub(["r/a"], version=version, qos=2, count=1)
    assert sub.wait_exit() == 0
    assert [(l.payload, l.qos, l.retain) for l in sub.lines] == [(b"first", 2, True)]

    mosquitto_pub(broker, "-t", "r/a", "-m", "second", "-r", "-q", "1", version=version)
    sub = mosquitto_sub(["r/#"], version=version, qos=2, count=1)
    assert sub.wait_exit() == 0
    assert [(l.topic, l.payload, l.qos, l.retain) for l in sub.lines] == [
        ("r/a", b"second", 1, True)]


def test_null_retained_clears__MQTT_3_3_1_10_11(broker, mosquitto_sub, version, unique):
    """mosquitto_pub -r -n (zero-length retained) removes the retained message [MQTT-3.3.1-10]
    and is not stored itself [MQTT-3.3.1-11]: a new subscriber gets nothing for the topic."""
    mosquitto_pub(broker, "-t", "n/a", "-m", "stale", "-r", "-q", "1", version=version)
    check = mosquitto_sub(["n/a"], version=version, qos=1, count=1)
    assert check.wait_exit() == 0
    assert [l.payload for l in check.lines] == [b"stale"]

    mosquitto_pub(broker, "-t", "n/a", "-r", "-n", "-q", "1", version=version)
    put_ready(broker, version)
    sub = mosquitto_sub(["n/#"], version=version, qos=1, ready_topic=READY,
                        client_id=f"{unique}-s")
    sub.wait_ready()
    # Any retained message of n/# was queued with the ready one, before this marker.
    mosquitto_pub(broker, "-t", "n/a", "-m", "end", "-q", "2", version=version)
    lines = sub.wait_data(1)
    assert [(l.payload, l.retain) for l in lines] == [(b"end", False)]


def test_counted_receive_C(broker, mosquitto_sub, version, unique):
    """mosquitto_sub -C n exits (code 0) after exactly n messages: 3 retained ones, then 5 live
    ones sent by one mosquitto_pub -l (a message per line), in order [MQTT-4.6.0-6]."""
    for i in range(3):
        mosquitto_pub(broker, "-t", f"c/{i}", "-m", f"kept{i}", "-r", version=version)
    sub = mosquitto_sub(["c/#"], version=version, count=3)
    assert sub.wait_exit() == 0
    assert sorted((l.topic, l.payload) for l in sub.lines) == [
        ("c/0", b"kept0"), ("c/1", b"kept1"), ("c/2", b"kept2")]

    put_ready(broker, version)
    sub = mosquitto_sub(["l/t"], version=version, qos=1, count=1 + 5, ready_topic=READY,
                        client_id=f"{unique}-s")
    sub.wait_ready()
    mosquitto_pub(broker, "-t", "l/t", "-q", "1", "-l", version=version,
                  input=b"one\ntwo\nthree\nfour\nfive\n")
    assert sub.wait_exit() == 0
    assert [l.payload for l in sub.data()] == [b"one", b"two", b"three", b"four", b"five"]


def test_file_payload_100k_byte_exact(broker, mosquitto_sub, paho, version, unique, tmp_path):
    """mosquitto_pub -f with a 100 KB binary file: mosquitto_sub and paho both receive it byte
    for byte (MQTT 3.1.1 section 3.3.3, Payload)."""
    data = os.urandom(100 * 1024)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    protocol = PROTOCOLS["v31" if version == "mqttv31" else "v311"]
    watcher = paho(f"{unique}-p", protocol)
    watcher.connect()
    watcher.subscribe("f/t", 1)
    put_ready(broker, version)
    sub = mosquitto_sub(["f/t"], version=version, qos=1, count=2, ready_topic=READY,
                        client_id=f"{unique}-s")
    sub.wait_ready()
    mosquitto_pub(broker, "-t", "f/t", "-f", str(path), "-q", "1", version=version)
    assert sub.wait_exit() == 0
    [line] = sub.data()
    assert len(line.payload) == len(data)
    assert line.payload == data
    [message] = watcher.wait_messages(1)
    assert message.payload == data


def test_will_on_killed_mosquitto_sub__MQTT_3_1_2_8(broker, mosquitto_sub, version, unique):
    """[MQTT-3.1.2-8] mosquitto_sub --will-topic killed with SIGKILL (no DISCONNECT): the broker
    publishes its will."""
    put_ready(broker, version)
    watcher = mosquitto_sub(["will/#"], version=version, qos=1, ready_topic=READY,
                            client_id=f"{unique}-w")
    watcher.wait_ready()
    dying = mosquitto_sub(
        ["x/none"], version=version, ready_topic=READY, client_id=f"{unique}-d",
        extra=["--will-topic", "will/d", "--will-payload", "killed", "--will-qos", "1"],
    )
    dying.wait_ready()
    dying.kill()
    [will] = watcher.wait_data(1)
    assert (will.topic, will.payload, will.qos, will.retain) == ("will/d", b"killed", 1, False)


def test_no_will_after_clean_exit__MQTT_3_1_2_10(broker, mosquitto_sub, version, unique):
    """[MQTT-3.1.2-10] mosquitto_sub --will-topic that exits normally (-C 1: DISCONNECT sent):
    no will."""
    put_ready(broker, version)
    watcher = mosquitto_sub(["will/#"], version=version, qos=1, ready_topic=READY,
                            client_id=f"{unique}-w")
    watcher.wait_ready()
    leaving_id = f"{unique}-d"
    leaving = mosquitto_sub(
        [], version=version, count=1, ready_topic=READY, client_id=leaving_id,
        extra=["--will-topic", "will/d", "--will-payload", "unexpected", "--will-qos", "1"],
    )
    assert leaving.wait_exit() == 0
    broker.wait_client_gone(leaving_id)
    mosquitto_pub(broker, "-t", "will/d", "-m", "end", "-q", "2", version=version)
    assert [l.payload for l in watcher.wait_data(1)] == [b"end"]


def test_persistent_session_c__MQTT_3_1_2_4(broker, mosquitto_sub, version, unique):
    """mosquitto_sub -c (clean session 0): the subscription outlives the client, and QoS 1/2
    messages published while it is away are delivered when it comes back [MQTT-3.1.2-4], at the
    QoS they were published with (min with the granted 2), in order per QoS [MQTT-4.6.0-6]
    (libmosquitto hands a QoS 2 message over only at PUBREL, so a later QoS 1 message can be
    printed before an earlier QoS 2 one)."""
    client_id = f"{unique}-c"
    first = mosquitto_sub(["p/t"], version=version, qos=2, client_id=client_id,
                          extra=["-c", "-E"])  # -E: exit once subscribed
    assert first.wait_exit() == 0
    broker.wait_client_gone(client_id)
    for i, qos in enumerate((1, 2, 1, 2)):
        mosquitto_pub(broker, "-t", "p/t", "-m", f"m{i}", "-q", str(qos), version=version)
    back = mosquitto_sub(["p/t"], version=version, qos=2, client_id=client_id, count=4,
                         extra=["-c"])
    assert back.wait_exit() == 0
    got = [(l.payload, l.qos) for l in back.lines]
    assert sorted(got) == [(b"m0", 1), (b"m1", 2), (b"m2", 1), (b"m3", 2)]
    assert [p for p, q in got if q == 1] == [b"m0", b"m2"]
    assert [p for p, q in got if q == 2] == [b"m1", b"m3"]
