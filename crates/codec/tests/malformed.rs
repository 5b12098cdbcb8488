//! Malformed input, one row per rule the decoder checks: the exact `DecodeError`, the rule of the
//! specification it enforces, and the reason code a 5.0 receiver answers with (0x81 Malformed
//! Packet, 0x82 Protocol Error, 0x84 Unsupported Protocol Version, 0x94 Topic Alias invalid, 0x95
//! Packet too large).
//!
//! Rule numbers are those of MQTT 5.0 unless the row says "3.1.1"; where the specification gives a
//! requirement no number, the row names its section.
//!
//! Every row is also fed one byte at a time: the decoder must answer `Ok(None)` until it can see
//! the fault, then the same error, whatever the split.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in #[test] functions;
// this extends that to the helpers and proptest bodies here).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use bytes::BytesMut;
use tern_codec::{DecodeError, MqttStr, Packet, PacketType, ProtocolVersion};

use DecodeError as E;
use PacketType as P;
use ProtocolVersion::{V5, V31, V311};

const NO_LIMIT: u32 = u32::MAX;
const MALFORMED: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const UNSUPPORTED_VERSION: u8 = 0x84;
const TOPIC_ALIAS_INVALID: u8 = 0x94;
const PACKET_TOO_LARGE: u8 = 0x95;

struct Row {
    what: &'static str,
    rule: &'static str,
    version: ProtocolVersion,
    bytes: Vec<u8>,
    max: u32,
    error: DecodeError,
    reason: u8,
}

fn row(
    what: &'static str,
    rule: &'static str,
    version: ProtocolVersion,
    bytes: Vec<u8>,
    error: DecodeError,
    reason: u8,
) -> Row {
    Row {
        what,
        rule,
        version,
        bytes,
        max: NO_LIMIT,
        error,
        reason,
    }
}

// --- building blocks, so that each row shows only what matters ---

fn varint(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            return out;
        }
    }
}

/// A packet: first byte, remaining length (minimal), body.
fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A length-prefixed string or binary field.
fn st(text: &[u8]) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text);
    out
}

/// A property list: property length, then the properties.
fn props(list: &[u8]) -> Vec<u8> {
    cat(&[&varint(list.len()), list])
}

/// A user property 0x26 name=value.
fn user(name: &[u8], value: &[u8]) -> Vec<u8> {
    cat(&[&[0x26], &st(name), &st(value)])
}

/// CONNECT of level 4 (or 3 with `MQIsdp`) with these flags and payload; keep alive 60.
fn connect_v3(version: ProtocolVersion, flags: u8, payload: &[u8]) -> Vec<u8> {
    let (name, level): (&[u8], u8) = match version {
        V31 => (b"MQIsdp", 3),
        _ => (b"MQTT", 4),
    };
    pkt(0x10, &cat(&[&st(name), &[level, flags, 0, 60], payload]))
}

/// CONNECT of level 5 with these flags, properties and payload.
fn connect_v5(flags: u8, properties: &[u8], payload: &[u8]) -> Vec<u8> {
    pkt(
        0x10,
        &cat(&[
            &st(b"MQTT"),
            &[5, flags, 0, 60],
            &props(properties),
            payload,
        ]),
    )
}

/// A 5.0 QoS 0 PUBLISH to "t" with these properties.
fn publish_v5(properties: &[u8]) -> Vec<u8> {
    pkt(0x30, &cat(&[&st(b"t"), &props(properties), b"x"]))
}

/// A QoS 0 PUBLISH (3.1.1 layout) to this topic.
fn publish_v3(topic: &[u8]) -> Vec<u8> {
    pkt(0x30, &cat(&[&st(topic), b"x"]))
}

/// A 3.1.1 SUBSCRIBE with packet identifier 1 and one filter.
fn subscribe_v3(filter: &[u8], options: u8) -> Vec<u8> {
    pkt(0x82, &cat(&[&[0, 1], &st(filter), &[options]]))
}

/// A 5.0 SUBSCRIBE with packet identifier 1, these properties and one filter.
fn subscribe_v5(properties: &[u8], filter: &[u8], options: u8) -> Vec<u8> {
    pkt(
        0x82,
        &cat(&[&[0, 1], &props(properties), &st(filter), &[options]]),
    )
}

fn rows() -> Vec<Row> {
    let mut rows = vec![
        // --- fixed header (section 2.1) ---
        row(
            "packet type 0",
            "table 2-1: 0 is reserved",
            V311,
            vec![0x00, 0x00],
            E::ReservedPacketType(0),
            MALFORMED,
        ),
        row(
            "packet type 15 in 3.1.1",
            "3.1.1 table 2.1: 15 is reserved",
            V311,
            vec![0xF0, 0x00],
            E::ReservedPacketType(15),
            MALFORMED,
        ),
        row(
            "packet type 15 in 3.1",
            "3.1 section 2.1: 15 is reserved",
            V31,
            vec![0xF0, 0x00],
            E::ReservedPacketType(15),
            MALFORMED,
        ),
        row(
            "PUBLISH QoS 3",
            "MQTT-3.3.1-4",
            V311,
            pkt(0x36, &cat(&[&st(b"a"), &[0, 1]])),
            E::InvalidQos,
            MALFORMED,
        ),
        row(
            "PUBLISH DUP at QoS 0",
            "MQTT-3.3.1-2",
            V5,
            pkt(0x38, &cat(&[&st(b"a"), &[0]])),
            E::DupOnQos0,
            MALFORMED,
        ),
        row(
            "remaining length of five bytes",
            "section 1.5.5: at most four bytes",
            V311,
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            E::VarIntTooLong,
            MALFORMED,
        ),
        row(
            "remaining length 0 written in two bytes",
            "MQTT-1.5.5-1",
            V311,
            vec![0xC0, 0x80, 0x00],
            E::VarIntNotMinimal,
            MALFORMED,
        ),
        row(
            "property length 0 written in two bytes",
            "MQTT-1.5.5-1",
            V5,
            pkt(0x30, &cat(&[&st(b"t"), &[0x80, 0x00]])),
            E::VarIntNotMinimal,
            MALFORMED,
        ),
        row(
            "remaining length larger than the content (PINGREQ)",
            "section 2.1.4; 3.12: PINGREQ has no variable header or payload",
            V311,
            vec![0xC0, 0x01, 0x00],
            E::TrailingBytes {
                packet: P::PingReq,
                extra: 1,
            },
            MALFORMED,
        ),
        row(
            "remaining length larger than the content (CONNECT)",
            "section 2.1.4",
            V311,
            connect_v3(V311, 0x02, &cat(&[&st(b"id"), &[0xAB]])),
            E::TrailingBytes {
                packet: P::Connect,
                extra: 1,
            },
            MALFORMED,
        ),
        row(
            "3.1.1 DISCONNECT with a body",
            "3.1.1 section 3.14: no variable header, no payload",
            V311,
            vec![0xE0, 0x01, 0x00],
            E::TrailingBytes {
                packet: P::Disconnect,
                extra: 1,
            },
            MALFORMED,
        ),
        row(
            "3.1.1 UNSUBACK with a reason code",
            "3.1.1 section 3.11.3: no payload",
            V311,
            vec![0xB0, 0x03, 0x00, 0x01, 0x00],
            E::TrailingBytes {
                packet: P::UnsubAck,
                extra: 1,
            },
            MALFORMED,
        ),
        row(
            "remaining length smaller than the content (PUBACK)",
            "section 2.1.4",
            V311,
            vec![0x40, 0x01, 0x00],
            E::Truncated {
                packet: P::PubAck,
                field: "packet identifier",
            },
            MALFORMED,
        ),
        row(
            "PUBACK with remaining length 0",
            "section 3.4.2: a packet identifier",
            V5,
            vec![0x40, 0x00],
            E::Truncated {
                packet: P::PubAck,
                field: "packet identifier",
            },
            MALFORMED,
        ),
        row(
            "3.1.1 PUBREC with a reason code",
            "3.1.1 section 3.5: remaining length 2",
            V311,
            vec![0x50, 0x03, 0x00, 0x01, 0x00],
            E::TrailingBytes {
                packet: P::PubRec,
                extra: 1,
            },
            MALFORMED,
        ),
        row(
            "CONNECT with remaining length 0",
            "section 3.1.2",
            V311,
            vec![0x10, 0x00],
            E::Truncated {
                packet: P::Connect,
                field: "protocol name",
            },
            MALFORMED,
        ),
        row(
            "SUBSCRIBE with remaining length 0",
            "section 3.8.2",
            V5,
            vec![0x82, 0x00],
            E::Truncated {
                packet: P::Subscribe,
                field: "packet identifier",
            },
            MALFORMED,
        ),
        row(
            "5.0 CONNACK with remaining length 2: no property length",
            "section 3.2.2.3.1",
            V5,
            vec![0x20, 0x02, 0x00, 0x00],
            E::Truncated {
                packet: P::ConnAck,
                field: "property length",
            },
            MALFORMED,
        ),
        row(
            "client identifier runs past the remaining length",
            "section 2.1.4, section 1.5.4",
            V311,
            connect_v3(V311, 0x02, &[0x00, 0x05, b'a', b'b']),
            E::Truncated {
                packet: P::Connect,
                field: "client identifier",
            },
            MALFORMED,
        ),
        row(
            "property length past the remaining length",
            "section 2.2.2.1",
            V5,
            pkt(0x30, &cat(&[&st(b"t"), &[0x05, 0x01]])),
            E::Truncated {
                packet: P::Publish,
                field: "properties",
            },
            MALFORMED,
        ),
        row(
            "property value past the property length",
            "section 2.2.2.1",
            V5,
            publish_v5(&[0x26, 0x00, 0x01, b'k', 0x00, 0x03, b'v']),
            E::Truncated {
                packet: P::Publish,
                field: "user property value",
            },
            MALFORMED,
        ),
        Row {
            max: 1024,
            ..row(
                "256 MB announced, 1024 allowed: refused from the fixed header alone",
                "section 3.1.2.11.4 / 3.2.2.3.6 (Maximum Packet Size)",
                V5,
                vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F],
                E::PacketTooLarge {
                    size: 268_435_460,
                    max: 1024,
                },
                PACKET_TOO_LARGE,
            )
        },
        // --- packet identifiers (section 2.2.1) ---
        row(
            "PUBLISH QoS 1 with packet identifier 0",
            "MQTT-2.2.1-3",
            V311,
            pkt(0x32, &cat(&[&st(b"a"), &[0, 0]])),
            E::ZeroPacketId(P::Publish),
            PROTOCOL_ERROR,
        ),
        row(
            "PUBLISH QoS 2 with packet identifier 0",
            "MQTT-2.2.1-3",
            V5,
            pkt(0x34, &cat(&[&st(b"a"), &[0, 0, 0]])),
            E::ZeroPacketId(P::Publish),
            PROTOCOL_ERROR,
        ),
        row(
            "SUBSCRIBE with packet identifier 0",
            "MQTT-2.2.1-3",
            V311,
            pkt(0x82, &cat(&[&[0, 0], &st(b"a"), &[0]])),
            E::ZeroPacketId(P::Subscribe),
            PROTOCOL_ERROR,
        ),
        row(
            "UNSUBSCRIBE with packet identifier 0",
            "MQTT-2.2.1-3",
            V311,
            pkt(0xA2, &cat(&[&[0, 0], &st(b"a")])),
            E::ZeroPacketId(P::Unsubscribe),
            PROTOCOL_ERROR,
        ),
        row(
            "SUBACK with packet identifier 0",
            "section 2.2.1: a non-zero packet identifier",
            V311,
            vec![0x90, 0x03, 0x00, 0x00, 0x00],
            E::ZeroPacketId(P::SubAck),
            PROTOCOL_ERROR,
        ),
        row(
            "UNSUBACK with packet identifier 0",
            "section 2.2.1: a non-zero packet identifier",
            V5,
            vec![0xB0, 0x04, 0x00, 0x00, 0x00, 0x00],
            E::ZeroPacketId(P::UnsubAck),
            PROTOCOL_ERROR,
        ),
        // --- CONNECT (section 3.1) ---
        row(
            "CONNECT reserved flag",
            "MQTT-3.1.2-3",
            V311,
            connect_v3(V311, 0x03, &st(b"id")),
            E::ConnectReservedFlag,
            MALFORMED,
        ),
        row(
            "will QoS without the will flag",
            "MQTT-3.1.2-11",
            V311,
            connect_v3(V311, 0x0A, &st(b"id")),
            E::WillFlagsWithoutWill,
            MALFORMED,
        ),
        row(
            "will retain without the will flag",
            "MQTT-3.1.2-13 (3.1.1: MQTT-3.1.2-15)",
            V5,
            connect_v5(0x22, &[], &st(b"id")),
            E::WillFlagsWithoutWill,
            MALFORMED,
        ),
        row(
            "will QoS 3",
            "MQTT-3.1.2-12 (3.1.1: MQTT-3.1.2-14)",
            V311,
            connect_v3(V311, 0x1E, &cat(&[&st(b"id"), &st(b"w"), &st(b"m")])),
            E::InvalidQos,
            MALFORMED,
        ),
        row(
            "password without user name in 3.1.1",
            "3.1.1 MQTT-3.1.2-22",
            V311,
            connect_v3(V311, 0x42, &cat(&[&st(b"id"), &st(b"pw")])),
            E::PasswordWithoutUsername,
            MALFORMED,
        ),
        row(
            "password without user name in 3.1",
            "3.1 section 3.1: the user name flag is set whenever the password flag is",
            V31,
            connect_v3(V31, 0x42, &cat(&[&st(b"id"), &st(b"pw")])),
            E::PasswordWithoutUsername,
            MALFORMED,
        ),
        row(
            "unknown protocol name",
            "MQTT-3.1.2-1",
            V311,
            pkt(0x10, &cat(&[&st(b"MQTX"), &[4, 2, 0, 60], &st(b"id")])),
            E::InvalidProtocolName,
            MALFORMED,
        ),
        row(
            "MQTT at level 6",
            "MQTT-3.1.2-2",
            V5,
            pkt(0x10, &cat(&[&st(b"MQTT"), &[6, 2, 0, 60], &st(b"id")])),
            E::UnsupportedProtocolVersion(6),
            UNSUPPORTED_VERSION,
        ),
        row(
            "MQTT at level 3 (3.1 is MQIsdp)",
            "MQTT-3.1.2-2",
            V311,
            pkt(0x10, &cat(&[&st(b"MQTT"), &[3, 2, 0, 60], &st(b"id")])),
            E::UnsupportedProtocolVersion(3),
            UNSUPPORTED_VERSION,
        ),
        row(
            "MQIsdp at level 4",
            "MQTT-3.1.2-2",
            V311,
            pkt(0x10, &cat(&[&st(b"MQIsdp"), &[4, 2, 0, 60], &st(b"id")])),
            E::UnsupportedProtocolVersion(4),
            UNSUPPORTED_VERSION,
        ),
        // --- CONNACK (section 3.2) ---
        row(
            "CONNACK reserved flags",
            "MQTT-3.2.2-1 (3.1.1 section 3.2.2.1: bits 7-1 reserved)",
            V311,
            vec![0x20, 0x02, 0x02, 0x00],
            E::ConnAckReservedFlags,
            MALFORMED,
        ),
        // --- UTF-8 strings (section 1.5.4) ---
        row(
            "ill-formed UTF-8 (C3 28)",
            "MQTT-1.5.4-1",
            V311,
            publish_v3(&[b'a', 0xC3, 0x28]),
            E::InvalidUtf8,
            MALFORMED,
        ),
        row(
            "UTF-8 of the surrogate U+D800 (ED A0 80)",
            "MQTT-1.5.4-1",
            V311,
            connect_v3(V311, 0x02, &st(&[0xED, 0xA0, 0x80])),
            E::InvalidUtf8,
            MALFORMED,
        ),
        row(
            "overlong UTF-8 (C0 AF)",
            "MQTT-1.5.4-1",
            V5,
            publish_v5(&user(b"k", &[0xC0, 0xAF])),
            E::InvalidUtf8,
            MALFORMED,
        ),
        row(
            "U+0000 in a topic name",
            "MQTT-1.5.4-2",
            V311,
            publish_v3(b"a\0b"),
            E::NullCharacter,
            MALFORMED,
        ),
        row(
            "U+0000 in a user property",
            "MQTT-1.5.4-2",
            V5,
            publish_v5(&user(b"\0", b"v")),
            E::NullCharacter,
            MALFORMED,
        ),
        // --- topic names (sections 3.3.2.1, 4.7) ---
        row(
            "+ in a topic name",
            "MQTT-3.3.2-2",
            V311,
            publish_v3(b"a/+"),
            E::WildcardInTopicName,
            MALFORMED,
        ),
        row(
            "# in a will topic",
            "MQTT-3.3.2-2 (the will topic is a topic name, MQTT-3.1.3-11)",
            V311,
            connect_v3(V311, 0x06, &cat(&[&st(b"id"), &st(b"w/#"), &st(b"m")])),
            E::WildcardInTopicName,
            MALFORMED,
        ),
        row(
            "+ in a 5.0 topic name, no properties",
            "MQTT-3.3.2-2",
            V5,
            pkt(0x30, &cat(&[&st(b"+"), &props(&[])])),
            E::WildcardInTopicName,
            MALFORMED,
        ),
        row(
            "# in a 5.0 topic name, with properties",
            "MQTT-3.3.2-2",
            V5,
            pkt(0x30, &cat(&[&st("é/#".as_bytes()), &props(&[0x01, 0x01])])),
            E::WildcardInTopicName,
            MALFORMED,
        ),
        row(
            "empty topic name in 3.1.1",
            "MQTT-4.7.3-1",
            V311,
            publish_v3(b""),
            E::EmptyTopicName,
            MALFORMED,
        ),
        row(
            "empty topic name without topic alias in 5.0",
            "section 3.3.2.3.4: zero length topic name without topic alias",
            V5,
            pkt(0x30, &cat(&[&st(b""), &props(&[])])),
            E::EmptyTopicWithoutAlias,
            PROTOCOL_ERROR,
        ),
        row(
            "empty topic name with properties but no topic alias in 5.0",
            "section 3.3.2.3.4: zero length topic name without topic alias",
            V5,
            pkt(0x30, &cat(&[&st(b""), &props(&[0x02, 0, 0, 0, 9])])),
            E::EmptyTopicWithoutAlias,
            PROTOCOL_ERROR,
        ),
        // --- topic filters (sections 4.7, 4.8) ---
        row(
            "# not last in a topic filter",
            "MQTT-4.7.1-1",
            V311,
            subscribe_v3(b"a/#/b", 0),
            E::MisplacedMultiLevelWildcard,
            MALFORMED,
        ),
        row(
            "# not a whole level",
            "MQTT-4.7.1-1",
            V311,
            pkt(0xA2, &cat(&[&[0, 1], &st(b"sport/tennis#")])),
            E::MisplacedMultiLevelWildcard,
            MALFORMED,
        ),
        row(
            "+ not a whole level",
            "MQTT-4.7.1-2",
            V5,
            subscribe_v5(&[], b"a+/b", 0),
            E::MisplacedSingleLevelWildcard,
            MALFORMED,
        ),
        row(
            "empty topic filter",
            "MQTT-4.7.3-1",
            V311,
            subscribe_v3(b"", 0),
            E::EmptyTopicFilter,
            MALFORMED,
        ),
        row(
            "$share without a filter",
            "MQTT-4.8.2-2",
            V5,
            subscribe_v5(&[], b"$share/g", 0),
            E::InvalidSharedSubscription,
            MALFORMED,
        ),
        row(
            "$share with an empty ShareName",
            "MQTT-4.8.2-1",
            V5,
            subscribe_v5(&[], b"$share//a", 0),
            E::InvalidSharedSubscription,
            MALFORMED,
        ),
        row(
            "$share with a wildcard in the ShareName",
            "MQTT-4.8.2-2",
            V5,
            pkt(0xA2, &cat(&[&[0, 1], &props(&[]), &st(b"$share/g+/a")])),
            E::InvalidSharedSubscription,
            MALFORMED,
        ),
        // --- SUBSCRIBE and UNSUBSCRIBE (sections 3.8, 3.10) ---
        row(
            "no local on a shared subscription",
            "MQTT-3.8.3-4",
            V5,
            subscribe_v5(&[], b"$share/g/a", 0x04),
            E::NoLocalOnSharedSubscription,
            PROTOCOL_ERROR,
        ),
        row(
            "SUBSCRIBE without a topic filter in 3.1.1",
            "3.1.1 MQTT-3.8.3-3",
            V311,
            vec![0x82, 0x02, 0x00, 0x01],
            E::NoTopicFilters(P::Subscribe),
            PROTOCOL_ERROR,
        ),
        row(
            "SUBSCRIBE without a topic filter in 5.0",
            "MQTT-3.8.3-2",
            V5,
            vec![0x82, 0x03, 0x00, 0x01, 0x00],
            E::NoTopicFilters(P::Subscribe),
            PROTOCOL_ERROR,
        ),
        row(
            "UNSUBSCRIBE without a topic filter",
            "MQTT-3.10.3-2",
            V311,
            vec![0xA2, 0x02, 0x00, 0x01],
            E::NoTopicFilters(P::Unsubscribe),
            PROTOCOL_ERROR,
        ),
        row(
            "UNSUBSCRIBE without a topic filter in 5.0",
            "MQTT-3.10.3-2",
            V5,
            vec![0xA2, 0x03, 0x00, 0x01, 0x00],
            E::NoTopicFilters(P::Unsubscribe),
            PROTOCOL_ERROR,
        ),
        row(
            "3.1.1 subscription options with bit 2 set",
            "3.1.1 MQTT-3-8.3-4: bits 2-7 reserved",
            V311,
            subscribe_v3(b"a", 0x04),
            E::SubscriptionOptionsReserved,
            MALFORMED,
        ),
        row(
            "3.1 subscription options with bit 7 set",
            "3.1 section 3.8: only the QoS bits",
            V31,
            subscribe_v3(b"a", 0x81),
            E::SubscriptionOptionsReserved,
            MALFORMED,
        ),
        row(
            "5.0 subscription options with bit 6 set",
            "MQTT-3.8.3-5",
            V5,
            subscribe_v5(&[], b"a", 0x40),
            E::SubscriptionOptionsReserved,
            MALFORMED,
        ),
        row(
            "5.0 subscription options with bit 7 set",
            "MQTT-3.8.3-5",
            V5,
            subscribe_v5(&[], b"a", 0x80),
            E::SubscriptionOptionsReserved,
            MALFORMED,
        ),
        row(
            "subscription QoS 3",
            "3.1.1 MQTT-3-8.3-4; 5.0 section 3.8.3.1",
            V311,
            subscribe_v3(b"a", 0x03),
            E::InvalidQos,
            MALFORMED,
        ),
        row(
            "retain handling 3",
            "section 3.8.3.1: retain handling 3 is a Protocol Error",
            V5,
            subscribe_v5(&[], b"a", 0x30),
            E::InvalidRetainHandling,
            PROTOCOL_ERROR,
        ),
        // --- properties (section 2.2.2) ---
        row(
            "unknown property 0x04",
            "section 2.2.2.2: an identifier not valid for the packet is malformed",
            V5,
            publish_v5(&[0x04, 0x00]),
            E::UnknownProperty(0x04),
            MALFORMED,
        ),
        row(
            "unknown two-byte property identifier 128",
            "section 2.2.2.2",
            V5,
            publish_v5(&[0x80, 0x01, 0x00]),
            E::UnknownProperty(128),
            MALFORMED,
        ),
        row(
            "Topic Alias in CONNECT",
            "section 2.2.2.2, table 2-4",
            V5,
            connect_v5(0x02, &[0x23, 0x00, 0x01], &st(b"id")),
            E::PropertyNotAllowed {
                packet: P::Connect,
                property: 0x23,
                in_will: false,
            },
            MALFORMED,
        ),
        row(
            "Will Delay Interval in PUBLISH",
            "section 2.2.2.2, table 2-4",
            V5,
            publish_v5(&[0x18, 0x00, 0x00, 0x00, 0x01]),
            E::PropertyNotAllowed {
                packet: P::Publish,
                property: 0x18,
                in_will: false,
            },
            MALFORMED,
        ),
        row(
            "Topic Alias in will properties",
            "section 3.1.3.2, table 2-4",
            V5,
            connect_v5(
                0x06,
                &[],
                &cat(&[
                    &st(b"id"),
                    &props(&[0x23, 0x00, 0x01]),
                    &st(b"w"),
                    &st(b"m"),
                ]),
            ),
            E::PropertyNotAllowed {
                packet: P::Connect,
                property: 0x23,
                in_will: true,
            },
            MALFORMED,
        ),
        row(
            "Reason String in PUBLISH",
            "section 2.2.2.2, table 2-4",
            V5,
            publish_v5(&cat(&[&[0x1F], &st(b"r")])),
            E::PropertyNotAllowed {
                packet: P::Publish,
                property: 0x1F,
                in_will: false,
            },
            MALFORMED,
        ),
        row(
            "two Message Expiry Intervals",
            "section 3.3.2.3.3: more than once is a Protocol Error",
            V5,
            publish_v5(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2]),
            E::DuplicateProperty(0x02),
            PROTOCOL_ERROR,
        ),
        row(
            "two Subscription Identifiers in SUBSCRIBE",
            "section 3.8.2.1.2: more than once is a Protocol Error",
            V5,
            subscribe_v5(&[0x0B, 0x01, 0x0B, 0x02], b"a", 0),
            E::DuplicateProperty(0x0B),
            PROTOCOL_ERROR,
        ),
        row(
            "two Authentication Methods in AUTH",
            "section 3.15.2.2.2: more than once is a Protocol Error",
            V5,
            pkt(
                0xF0,
                &cat(&[
                    &[0x18],
                    &props(&cat(&[&[0x15], &st(b"a"), &[0x15], &st(b"b")])),
                ]),
            ),
            E::DuplicateProperty(0x15),
            PROTOCOL_ERROR,
        ),
        row(
            "Receive Maximum 0",
            "section 3.1.2.11.3: a value of 0 is a Protocol Error",
            V5,
            connect_v5(0x02, &[0x21, 0x00, 0x00], &st(b"id")),
            E::InvalidPropertyValue {
                property: 0x21,
                value: 0,
            },
            PROTOCOL_ERROR,
        ),
        row(
            "Maximum Packet Size 0",
            "section 3.1.2.11.4: a value of 0 is a Protocol Error",
            V5,
            connect_v5(0x02, &[0x27, 0, 0, 0, 0], &st(b"id")),
            E::InvalidPropertyValue {
                property: 0x27,
                value: 0,
            },
            PROTOCOL_ERROR,
        ),
        row(
            "Payload Format Indicator 2",
            "section 3.3.2.3.2: 0 or 1",
            V5,
            publish_v5(&[0x01, 0x02]),
            E::InvalidPropertyValue {
                property: 0x01,
                value: 2,
            },
            PROTOCOL_ERROR,
        ),
        row(
            "Request Problem Information 2",
            "section 3.1.2.11.7: other than 0 or 1 is a Protocol Error",
            V5,
            connect_v5(0x02, &[0x17, 0x02], &st(b"id")),
            E::InvalidPropertyValue {
                property: 0x17,
                value: 2,
            },
            PROTOCOL_ERROR,
        ),
        row(
            "Maximum QoS 2",
            "section 3.2.2.3.4: other than 0 or 1 is a Protocol Error",
            V5,
            pkt(0x20, &cat(&[&[0x00, 0x00], &props(&[0x24, 0x02])])),
            E::InvalidPropertyValue {
                property: 0x24,
                value: 2,
            },
            PROTOCOL_ERROR,
        ),
        row(
            "Subscription Identifier 0 in SUBSCRIBE",
            "section 3.8.2.1.2: a value of 0 is a Protocol Error",
            V5,
            subscribe_v5(&[0x0B, 0x00], b"a", 0),
            E::InvalidPropertyValue {
                property: 0x0B,
                value: 0,
            },
            PROTOCOL_ERROR,
        ),
        row(
            "Topic Alias 0",
            "MQTT-3.3.2-8",
            V5,
            publish_v5(&[0x23, 0x00, 0x00]),
            E::TopicAliasZero,
            TOPIC_ALIAS_INVALID,
        ),
        row(
            "Authentication Data without Authentication Method",
            "section 3.1.2.11.10: a Protocol Error",
            V5,
            connect_v5(0x02, &cat(&[&[0x16], &st(b"data")]), &st(b"id")),
            E::AuthenticationDataWithoutMethod,
            PROTOCOL_ERROR,
        ),
        row(
            "Response Topic with a wildcard",
            "MQTT-3.3.2-14",
            V5,
            publish_v5(&cat(&[&[0x08], &st(b"r/#")])),
            E::InvalidResponseTopic,
            MALFORMED,
        ),
        // --- reason codes (section 2.4) ---
        row(
            "0x10 in PUBCOMP",
            "section 3.7.2.1: only 0x00 and 0x92",
            V5,
            vec![0x70, 0x03, 0x00, 0x01, 0x10],
            E::InvalidReasonCode {
                packet: P::PubComp,
                code: 0x10,
            },
            MALFORMED,
        ),
        row(
            "0x04 in CONNACK",
            "section 3.2.2.2",
            V5,
            vec![0x20, 0x03, 0x00, 0x04, 0x00],
            E::InvalidReasonCode {
                packet: P::ConnAck,
                code: 0x04,
            },
            MALFORMED,
        ),
        row(
            "3.1.1 CONNACK return code 6",
            "3.1.1 table 3.1: 6-255 are reserved",
            V311,
            vec![0x20, 0x02, 0x00, 0x06],
            E::InvalidReasonCode {
                packet: P::ConnAck,
                code: 0x06,
            },
            MALFORMED,
        ),
        row(
            "3.1.1 SUBACK return code 0x83",
            "3.1.1 MQTT-3.9.3-2: 0x00, 0x01, 0x02, 0x80",
            V311,
            vec![0x90, 0x03, 0x00, 0x01, 0x83],
            E::InvalidReasonCode {
                packet: P::SubAck,
                code: 0x83,
            },
            MALFORMED,
        ),
        row(
            "undefined reason code 0x03 in DISCONNECT",
            "section 3.14.2.1",
            V5,
            vec![0xE0, 0x01, 0x03],
            E::InvalidReasonCode {
                packet: P::Disconnect,
                code: 0x03,
            },
            MALFORMED,
        ),
        row(
            "0x10 in UNSUBACK",
            "section 3.11.3",
            V5,
            vec![0xB0, 0x04, 0x00, 0x01, 0x00, 0x10],
            E::InvalidReasonCode {
                packet: P::UnsubAck,
                code: 0x10,
            },
            MALFORMED,
        ),
        row(
            "0x87 in AUTH",
            "section 3.15.2.1: only 0x00, 0x18, 0x19",
            V5,
            vec![0xF0, 0x01, 0x87],
            E::InvalidReasonCode {
                packet: P::Auth,
                code: 0x87,
            },
            MALFORMED,
        ),
    ];

    // Reserved fixed-header flags of every type but PUBLISH [MQTT-2.1.3-1]: for each, every
    // value of the low nibble but the one table 2-2 fixes.
    let types = [
        (P::Connect, 0x10, V311),
        (P::ConnAck, 0x20, V311),
        (P::PubAck, 0x40, V311),
        (P::PubRec, 0x50, V311),
        (P::PubRel, 0x62, V311),
        (P::PubComp, 0x70, V5),
        (P::Subscribe, 0x82, V311),
        (P::SubAck, 0x90, V5),
        (P::Unsubscribe, 0xA2, V5),
        (P::UnsubAck, 0xB0, V311),
        (P::PingReq, 0xC0, V311),
        (P::PingResp, 0xD0, V5),
        (P::Disconnect, 0xE0, V311),
        (P::Auth, 0xF0, V5),
    ];
    for (packet, first, version) in types {
        for flags in (0..16).filter(|&f| f != first & 0x0F) {
            rows.push(row(
                "reserved fixed-header flags",
                "MQTT-2.1.3-1",
                version,
                vec![(first & 0xF0) | flags, 0x00],
                E::InvalidFixedHeaderFlags { packet, flags },
                MALFORMED,
            ));
        }
    }
    // 3.1 accepts DUP on the QoS 1 packets (see vectors.rs) but nothing else.
    for (packet, first) in [
        (P::PubRel, 0x60),
        (P::Subscribe, 0x80),
        (P::Unsubscribe, 0xA0),
    ] {
        for flags in [0x00, 0x04, 0x03, 0x0B, 0x08] {
            rows.push(row(
                "reserved fixed-header flags in 3.1",
                "3.1 section 2.1: QoS 1, DUP may be set",
                V31,
                vec![first | flags, 0x00],
                E::InvalidFixedHeaderFlags { packet, flags },
                MALFORMED,
            ));
        }
    }
    for (packet, first) in [
        (P::PubAck, 0x40),
        (P::PubRec, 0x50),
        (P::PubComp, 0x70),
        (P::UnsubAck, 0xB0),
    ] {
        let mut bytes = vec![first, 0x02, 0x00, 0x00];
        if packet == P::UnsubAck {
            // 5.0: property length and one reason code follow.
            bytes = vec![first, 0x04, 0x00, 0x00, 0x00, 0x00];
        }
        for version in [V311, V5] {
            if packet == P::UnsubAck && version == V311 {
                continue;
            }
            rows.push(row(
                "acknowledgement with packet identifier 0",
                "section 2.2.1: a non-zero packet identifier",
                version,
                bytes.clone(),
                E::ZeroPacketId(packet),
                PROTOCOL_ERROR,
            ));
        }
    }
    rows.push(row(
        "PUBREL with packet identifier 0",
        "section 2.2.1: a non-zero packet identifier",
        V311,
        vec![0x62, 0x02, 0x00, 0x00],
        E::ZeroPacketId(P::PubRel),
        PROTOCOL_ERROR,
    ));
    rows
}

/// The name of an error's variant; exhaustive, so that a new rule must get a row.
fn variant(error: &DecodeError) -> &'static str {
    match error {
        E::VarIntTooLong => "VarIntTooLong",
        E::VarIntNotMinimal => "VarIntNotMinimal",
        E::PacketTooLarge { .. } => "PacketTooLarge",
        E::ReservedPacketType(_) => "ReservedPacketType",
        E::InvalidFixedHeaderFlags { .. } => "InvalidFixedHeaderFlags",
        E::InvalidQos => "InvalidQos",
        E::DupOnQos0 => "DupOnQos0",
        E::ZeroPacketId(_) => "ZeroPacketId",
        E::Truncated { .. } => "Truncated",
        E::TrailingBytes { .. } => "TrailingBytes",
        E::InvalidUtf8 => "InvalidUtf8",
        E::NullCharacter => "NullCharacter",
        E::StringTooLong => "StringTooLong",
        E::InvalidProtocolName => "InvalidProtocolName",
        E::UnsupportedProtocolVersion(_) => "UnsupportedProtocolVersion",
        E::ConnectReservedFlag => "ConnectReservedFlag",
        E::ConnAckReservedFlags => "ConnAckReservedFlags",
        E::WillFlagsWithoutWill => "WillFlagsWithoutWill",
        E::PasswordWithoutUsername => "PasswordWithoutUsername",
        E::EmptyTopicName => "EmptyTopicName",
        E::EmptyTopicWithoutAlias => "EmptyTopicWithoutAlias",
        E::WildcardInTopicName => "WildcardInTopicName",
        E::EmptyTopicFilter => "EmptyTopicFilter",
        E::MisplacedMultiLevelWildcard => "MisplacedMultiLevelWildcard",
        E::MisplacedSingleLevelWildcard => "MisplacedSingleLevelWildcard",
        E::InvalidSharedSubscription => "InvalidSharedSubscription",
        E::NoTopicFilters(_) => "NoTopicFilters",
        E::SubscriptionOptionsReserved => "SubscriptionOptionsReserved",
        E::InvalidRetainHandling => "InvalidRetainHandling",
        E::NoLocalOnSharedSubscription => "NoLocalOnSharedSubscription",
        E::InvalidReasonCode { .. } => "InvalidReasonCode",
        E::UnknownProperty(_) => "UnknownProperty",
        E::PropertyNotAllowed { .. } => "PropertyNotAllowed",
        E::DuplicateProperty(_) => "DuplicateProperty",
        E::InvalidPropertyValue { .. } => "InvalidPropertyValue",
        E::AuthenticationDataWithoutMethod => "AuthenticationDataWithoutMethod",
        E::TopicAliasZero => "TopicAliasZero",
        E::InvalidResponseTopic => "InvalidResponseTopic",
    }
}

#[test]
fn every_row_fails_with_its_error_and_reason_code() {
    for row in rows() {
        let label = format!("{} ({}, {})", row.what, row.rule, row.version);
        let mut buf = BytesMut::from(&row.bytes[..]);
        let result = Packet::decode(&mut buf, row.version, row.max);
        assert_eq!(result, Err(row.error.clone()), "{label}");
        assert_eq!(
            row.error.reason_code().as_u8(),
            row.reason,
            "{label}: reason code"
        );
    }
}

#[test]
fn every_row_fails_the_same_way_fed_one_byte_at_a_time() {
    for row in rows() {
        let label = format!("{} ({}, {})", row.what, row.rule, row.version);
        let mut buf = BytesMut::new();
        let mut outcome = None;
        for &byte in &row.bytes {
            buf.extend_from_slice(&[byte]);
            match Packet::decode(&mut buf, row.version, row.max) {
                Ok(None) => continue,
                Ok(Some(packet)) => panic!("{label}: decoded {packet:?}"),
                Err(error) => {
                    outcome = Some(error);
                    break;
                }
            }
        }
        assert_eq!(outcome, Some(row.error.clone()), "{label}");
    }
}

#[test]
fn every_rule_has_a_row() {
    let rows = rows();
    println!("{} malformed inputs", rows.len());
    let covered: BTreeSet<&str> = rows.iter().map(|row| variant(&row.error)).collect();
    // StringTooLong cannot come from the wire: a two-byte length cannot announce more than the
    // limit. `string_too_long_is_refused_by_the_constructor` covers it.
    let all = [
        E::VarIntTooLong,
        E::VarIntNotMinimal,
        E::PacketTooLarge { size: 0, max: 0 },
        E::ReservedPacketType(0),
        E::InvalidFixedHeaderFlags {
            packet: P::Connect,
            flags: 0,
        },
        E::InvalidQos,
        E::DupOnQos0,
        E::ZeroPacketId(P::Publish),
        E::Truncated {
            packet: P::Connect,
            field: "",
        },
        E::TrailingBytes {
            packet: P::Connect,
            extra: 0,
        },
        E::InvalidUtf8,
        E::NullCharacter,
        E::InvalidProtocolName,
        E::UnsupportedProtocolVersion(0),
        E::ConnectReservedFlag,
        E::ConnAckReservedFlags,
        E::WillFlagsWithoutWill,
        E::PasswordWithoutUsername,
        E::EmptyTopicName,
        E::EmptyTopicWithoutAlias,
        E::WildcardInTopicName,
        E::EmptyTopicFilter,
        E::MisplacedMultiLevelWildcard,
        E::MisplacedSingleLevelWildcard,
        E::InvalidSharedSubscription,
        E::NoTopicFilters(P::Subscribe),
        E::SubscriptionOptionsReserved,
        E::InvalidRetainHandling,
        E::NoLocalOnSharedSubscription,
        E::InvalidReasonCode {
            packet: P::Connect,
            code: 0,
        },
        E::UnknownProperty(0),
        E::PropertyNotAllowed {
            packet: P::Connect,
            property: 0,
            in_will: false,
        },
        E::DuplicateProperty(0),
        E::InvalidPropertyValue {
            property: 0,
            value: 0,
        },
        E::AuthenticationDataWithoutMethod,
        E::TopicAliasZero,
        E::InvalidResponseTopic,
    ];
    let expected: BTreeSet<&str> = all.iter().map(variant).collect();
    assert_eq!(covered, expected);
}

#[test]
fn string_too_long_is_refused_by_the_constructor_mqtt_1_5_4() {
    let text = bytes::Bytes::from(vec![b'a'; 65_536]);
    assert_eq!(MqttStr::from_bytes(text), Err(E::StringTooLong));
    assert_eq!(E::StringTooLong.reason_code().as_u8(), MALFORMED);
    let text = bytes::Bytes::from(vec![b'a'; 65_535]);
    assert!(MqttStr::from_bytes(text).is_ok());
}

#[test]
fn packet_too_large_is_refused_with_only_the_fixed_header_in_the_buffer() {
    // A PUBLISH announcing 268 435 455 bytes; the maximum is 1024. Only the five header bytes
    // have arrived: the decoder must not wait for (or reserve room for) the body.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    let error = Packet::decode(&mut buf, V5, 1024).unwrap_err();
    assert_eq!(
        error,
        E::PacketTooLarge {
            size: 268_435_460,
            max: 1024
        }
    );
    assert_eq!(error.reason_code().as_u8(), PACKET_TOO_LARGE);
    assert!(buf.capacity() < 1024, "no room was reserved for the body");

    // Four header bytes are not enough to know the size: wait.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF][..]);
    assert_eq!(Packet::decode(&mut buf, V5, 1024), Ok(None));
}

#[test]
fn maximum_packet_size_counts_the_whole_packet_section_3_1_2_11_4() {
    // "The packet size is the total number of bytes in an MQTT Control Packet": header included.
    let bytes = publish_v3(b"a/b"); // 2 + 5 + 1 = 8 bytes
    assert_eq!(bytes.len(), 8);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        Packet::decode(&mut buf, V311, 7),
        Err(E::PacketTooLarge { size: 8, max: 7 })
    );
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        Packet::decode(&mut buf, V311, 8),
        Ok(Some(Packet::Publish(_)))
    ));
}

#[test]
fn two_subscription_identifiers_in_publish_are_fine_section_3_3_2_3_8() {
    let bytes = publish_v5(&[0x0B, 0x01, 0x0B, 0x02]);
    let mut buf = BytesMut::from(&bytes[..]);
    let Ok(Some(Packet::Publish(publish))) = Packet::decode(&mut buf, V5, NO_LIMIT) else {
        panic!("PUBLISH expected");
    };
    assert_eq!(publish.properties.subscription_identifiers, vec![1, 2]);
}

#[test]
fn password_without_user_name_is_fine_in_5_0_section_3_1_2_9() {
    let bytes = connect_v5(0x42, &[], &cat(&[&st(b"id"), &st(b"pw")]));
    let mut buf = BytesMut::from(&bytes[..]);
    let Ok(Some(Packet::Connect(connect))) = Packet::decode(&mut buf, V5, NO_LIMIT) else {
        panic!("CONNECT expected");
    };
    assert_eq!(connect.username, None);
    assert_eq!(connect.password.as_deref(), Some(&b"pw"[..]));
}
