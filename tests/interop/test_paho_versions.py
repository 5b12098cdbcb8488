"""paho-mqtt 2.x tests that apply to one protocol version only: the MQTT 3.1 specification (IBM,
2010) and MQTT 3.1.1 (OASIS, 2014) differ on client identifiers and on the CONNACK flags."""

from __future__ import annotations

import pytest

from mqtt_clients import PROTOCOLS

V31 = PROTOCOLS["v31"]
V311 = PROTOCOLS["v311"]


def test_v311_empty_client_id_assigned__MQTT_3_1_3_6(broker, paho):
    """[MQTT-3.1.3-6] a zero-byte client identifier with clean session 1 is accepted and the
    server assigns a unique one [MQTT-3.1.3-7]: two such clients coexist."""
    first = paho("", V311)
    assert first.connect().reason_code == 0
    first.subscribe("e/t", 1)
    second = paho("", V311)
    assert second.connect().reason_code == 0
    second.publish("e/t", b"hi", qos=1)
    [message] = first.wait_messages(1)
    assert message.payload == b"hi"
    assert not first.disconnected.is_set() and not second.disconnected.is_set()


def test_v31_client_id_over_23_chars_rejected__MQTT31_CONNECT(broker, paho):
    """MQTT 3.1, CONNECT payload: the client identifier must be 1 to 23 characters; "if the
    Client ID contains more than 23 characters, the server responds to the CONNECT message with
    a CONNACK return code 2: Identifier Rejected" (3.1.1 made longer ones a server's option,
    [MQTT-3.1.3-5], but only for protocol level 4)."""
    client = paho("c" * 24, V31)
    result = client.connect()
    # paho-mqtt 2 reports a 3.x CONNACK return code as its MQTT 5 equivalent: 2 -> 0x85 (133).
    assert result.reason_code in (2, 0x85)
    client.wait_disconnected()


def test_v31_client_id_of_23_chars_accepted__MQTT31_CONNECT(broker, paho):
    """MQTT 3.1: a 23-character client identifier is within the limit and accepted."""
    assert paho("c" * 23, V31).connect().reason_code == 0


def test_v31_connack_first_byte_reserved__MQTT31_CONNACK(broker, paho):
    """MQTT 3.1 has no Session Present flag: byte 1 of the CONNACK variable header is the
    reserved, unused "Topic Name Compression Response". Resuming a clean-session-0 session must
    therefore still give 0 there (mosquitto sets the bit for 3.1.1 and 5 only); a 3.1 client
    that checks the reserved byte, or 3.1.1-aware libraries reading it as flags, see 0x01."""
    first = paho("v31-persistent", V31, clean_session=False)
    first.connect()
    first.subscribe("v/t", 1)
    first.disconnect()
    broker.wait_client_gone("v31-persistent")
    again = paho("v31-persistent", V31, clean_session=False)
    result = again.connect()
    assert result.reason_code == 0
    assert result.session_present is False, "CONNACK byte 1 is 0x01 for MQTT 3.1"
