//! The answer to a CONNECT of a protocol level the broker does not speak [MQTT-3.1.2-2]: raw
//! bytes go through the path the server uses (`Packet::decode`, then `handle_packet` or
//! `handle_decode_error`), and the exact bytes from `poll_transmit` are checked.

mod common;

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use common::Quiet;
use tern_broker::{Broker, BrokerConfig, CloseReason, Connection};
use tern_codec::{Packet, ProtocolVersion, ReasonCode};

/// CONNACK, session present 0, return code 0x01 (unacceptable protocol version): the 3.1.1
/// layout, the same as 3.1's.
const REFUSED_V3: [u8; 4] = [0x20, 0x02, 0x00, 0x01];

/// A CONNECT with protocol `name` and `level`, clean start, keep-alive 60, client id "id", and a
/// properties length of 0 where level 5 has one.
fn connect_bytes(name: &[u8], level: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, 0x02, 0x00, 0x3C]);
    if level == 5 {
        body.push(0x00);
    }
    body.extend_from_slice(&[0x00, 0x02, b'i', b'd']);
    let mut packet = vec![0x10, u8::try_from(body.len()).unwrap()];
    packet.extend_from_slice(&body);
    packet
}

/// Feeds `bytes` to a new connection as the server does, and returns it with the bytes it
/// answers.
fn answer(bytes: &[u8]) -> (Connection, Vec<u8>) {
    let now = Instant::now();
    let broker = Broker::new(BrokerConfig::default());
    let mut conn = Connection::new(broker, Arc::new(Quiet), None, now);
    let mut rbuf = BytesMut::from(bytes);
    while !conn.is_closed() {
        match Packet::decode(&mut rbuf, conn.protocol_version(), conn.max_packet_size()) {
            Ok(Some(packet)) => conn.handle_packet(packet, now),
            Ok(None) => break,
            Err(error) => conn.handle_decode_error(&error, now),
        }
    }
    let mut out = BytesMut::new();
    conn.poll_transmit(&mut out, usize::MAX, now);
    (conn, out.to_vec())
}

fn assert_refused_v3(name: &[u8], level: u8) {
    let (conn, sent) = answer(&connect_bytes(name, level));
    let shown = String::from_utf8_lossy(name);
    assert_eq!(sent, REFUSED_V3, "{shown} level {level}");
    assert_eq!(
        conn.close_reason(),
        Some(&CloseReason::ConnectRefused(
            ReasonCode::UnsupportedProtocolVersion
        )),
        "{shown} level {level}"
    );
}

/// Levels that no MQTT version has, below and above the known ones: `20 02 00 01`, not an
/// MQTT 5 CONNACK 0x84 that a client of an unknown level cannot be expected to read.
#[test]
fn unknown_levels_get_the_v311_connack_0x01_mqtt_3_1_2_2() {
    for level in [0, 1, 2, 6, 7, 255] {
        assert_refused_v3(b"MQTT", level);
        assert_refused_v3(b"MQIsdp", level);
    }
}

/// A known level under the other version's protocol name: "MQTT" level 3 (3.1 is "MQIsdp"),
/// "MQIsdp" levels 4 and 5. 3.1's own answer to a level it does not support is the same
/// `20 02 00 01`.
#[test]
fn known_levels_under_the_wrong_name_get_the_v311_connack_0x01_mqtt_3_1_2_2() {
    assert_refused_v3(b"MQTT", 3);
    assert_refused_v3(b"MQIsdp", 4);
    assert_refused_v3(b"MQIsdp", 5);
}

/// Levels 3, 4 and 5 under their own names still connect, each answered in its own layout.
#[test]
fn levels_3_4_and_5_connect() {
    for (name, level, version) in [
        (&b"MQIsdp"[..], 3, ProtocolVersion::V31),
        (&b"MQTT"[..], 4, ProtocolVersion::V311),
        (&b"MQTT"[..], 5, ProtocolVersion::V5),
    ] {
        let (conn, sent) = answer(&connect_bytes(name, level));
        assert!(conn.is_connected(), "level {level}");
        assert_eq!(conn.protocol_version(), version);
        let mut sent = BytesMut::from(&sent[..]);
        match Packet::decode(&mut sent, version, u32::MAX) {
            Ok(Some(Packet::ConnAck(connack))) => {
                assert_eq!(connack.reason_code, ReasonCode::Success, "level {level}");
            }
            other => panic!("level {level}: expected CONNACK, got {other:?}"),
        }
        assert!(sent.is_empty(), "level {level}: nothing after the CONNACK");
    }
}
