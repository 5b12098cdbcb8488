//! Byte-exact vectors for every packet type in every protocol version, written by hand from the byte
//! layouts of the OASIS MQTT 3.1.1 (chapter 3) and MQTT 5.0 (chapter 3) specifications, and of the
//! IBM MQTT V3.1 protocol specification for level 3 ("MQIsdp").
//!
//! Each vector is checked both ways: the bytes decode to the expected packet (and are consumed
//! whole), and the packet encodes to exactly the bytes, with `encoded_len` agreeing.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in #[test] functions;
// this extends that to the helpers and proptest bodies here).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use tern_codec::{
    Ack, Auth, ConnAck, Connect, Disconnect, MqttStr, Packet, Properties, ProtocolVersion, Publish,
    QoS, ReasonCode, RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions,
    UnsubAck, Unsubscribe, Will,
};

use ProtocolVersion::{V5, V31, V311};

const ALL: [ProtocolVersion; 3] = [V31, V311, V5];
const V3X: [ProtocolVersion; 2] = [V31, V311];
const NO_LIMIT: u32 = u32::MAX;

fn s(text: &'static str) -> MqttStr {
    MqttStr::from_static(text)
}

fn b(data: &'static [u8]) -> Bytes {
    Bytes::from_static(data)
}

/// bytes -> decode -> `expected`, and `expected` -> encode -> bytes.
#[track_caller]
fn vector(version: ProtocolVersion, bytes: &[u8], expected: &Packet) {
    let mut buf = BytesMut::from(bytes);
    let decoded = Packet::decode(&mut buf, version, NO_LIMIT)
        .unwrap_or_else(|e| panic!("{version}: decode failed: {e}"))
        .unwrap_or_else(|| panic!("{version}: decode wants more bytes"));
    assert_eq!(&decoded, expected, "{version}: decoded packet");
    assert!(buf.is_empty(), "{version}: {} bytes left over", buf.len());

    let mut out = BytesMut::new();
    expected.encode(version, &mut out).unwrap();
    assert_eq!(&out[..], bytes, "{version}: encoded bytes");
    assert_eq!(expected.encoded_len(version).unwrap(), bytes.len());
}

/// A valid but non-canonical form: decodes to `expected`, which encodes to the canonical bytes.
#[track_caller]
fn decode_only(version: ProtocolVersion, bytes: &[u8], expected: &Packet) {
    let mut buf = BytesMut::from(bytes);
    let decoded = Packet::decode(&mut buf, version, NO_LIMIT)
        .unwrap()
        .unwrap();
    assert_eq!(&decoded, expected, "{version}");
    assert!(buf.is_empty());
}

// ---------------------------------------------------------------------------------------------
// CONNECT (3.1.1 section 3.1, 5.0 section 3.1, 3.1 "CONNECT")
// ---------------------------------------------------------------------------------------------

#[test]
fn connect_v311_minimal_clean_session_mqtt_3_1_2() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x0F,                               // CONNECT, remaining length 15
        0x00, 0x04, b'M', b'Q', b'T', b'T',       // protocol name [MQTT-3.1.2-1]
        0x04,                                     // level 4 [MQTT-3.1.2-2]
        0x02,                                     // clean session
        0x00, 0x3C,                               // keep alive 60
        0x00, 0x03, b'a', b'b', b'c',             // client identifier
    ];
    let connect = Connect {
        protocol: V311,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: s("abc"),
        will: None,
        username: None,
        password: None,
    };
    // A CONNECT carries its own version: whatever the connection's version, the same bytes.
    for version in ALL {
        vector(version, &bytes, &Packet::Connect(Box::new(connect.clone())));
    }
}

#[test]
fn connect_v311_will_username_password_mqtt_3_1_2_and_3_1_3() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x1F,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04,
        0xEE,                                     // user, password, will retain, will QoS 1, will, clean
        0x00, 0x0A,                               // keep alive 10
        0x00, 0x02, b'c', b'1',                   // client identifier
        0x00, 0x03, b'w', b'/', b't',             // will topic
        0x00, 0x03, b'b', b'y', b'e',             // will message
        0x00, 0x01, b'u',                         // user name
        0x00, 0x02, 0x01, 0x02,                   // password (binary)
    ];
    let connect = Connect {
        protocol: V311,
        clean_start: true,
        keep_alive: 10,
        properties: Properties::default(),
        client_id: s("c1"),
        will: Some(Will {
            topic: s("w/t"),
            payload: b(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some(s("u")),
        password: Some(b(&[1, 2])),
    };
    vector(V311, &bytes, &Packet::Connect(Box::new(connect)));
}

#[test]
fn connect_v31_mqisdp_level_3_with_will_and_credentials() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x1F,
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p',   // MQTT 3.1 protocol name
        0x03,                                             // level 3
        0xD6,                                             // user, password, will QoS 2, will, clean
        0x00, 0x3C,
        0x00, 0x02, b'i', b'd',
        0x00, 0x01, b't',                                 // will topic
        0x00, 0x00,                                       // empty will message
        0x00, 0x04, b'u', b's', b'e', b'r',
        0x00, 0x02, b'p', b'w',
    ];
    let connect = Connect {
        protocol: V31,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: s("id"),
        will: Some(Will {
            topic: s("t"),
            payload: Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Properties::default(),
        }),
        username: Some(s("user")),
        password: Some(b(b"pw")),
    };
    vector(V31, &bytes, &Packet::Connect(Box::new(connect)));
}

#[test]
fn connect_v5_properties_and_will_properties_mqtt5_3_1_2_11_and_3_1_3_2() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x6E,                                       // remaining length 110
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05,
        0xD6,                                             // user, password, will QoS 2, will, clean
        0x00, 0x1E,                                       // keep alive 30
        0x28,                                             // property length 40
        0x11, 0x00, 0x00, 0x0E, 0x10,                     //   session expiry interval 3600
        0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M',   //   authentication method
        0x16, 0x00, 0x02, 0xAA, 0xBB,                     //   authentication data
        0x17, 0x00,                                       //   request problem information 0
        0x19, 0x01,                                       //   request response information 1
        0x21, 0x00, 0x14,                                 //   receive maximum 20
        0x22, 0x00, 0x0A,                                 //   topic alias maximum 10
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v',         //   user property k=v
        0x27, 0x00, 0x00, 0x10, 0x00,                     //   maximum packet size 4096
        0x00, 0x03, b'c', b'i', b'd',                     // client identifier
        0x25,                                             // will property length 37
        0x01, 0x01,                                       //   payload format indicator: UTF-8
        0x02, 0x00, 0x00, 0x00, 0x3C,                     //   message expiry interval 60
        0x03, 0x00, 0x04, b't', b'e', b'x', b't',         //   content type
        0x08, 0x00, 0x03, b'r', b'/', b't',               //   response topic
        0x09, 0x00, 0x02, 0x01, 0x02,                     //   correlation data
        0x18, 0x00, 0x00, 0x00, 0x05,                     //   will delay interval 5
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b',         //   user property a=b
        0x00, 0x01, b'w',                                 // will topic
        0x00, 0x02, b'h', b'i',                           // will payload
        0x00, 0x02, b'm', b'e',                           // user name
        0x00, 0x03, b's', b'e', b'c',                     // password
    ];
    let connect = Connect {
        protocol: V5,
        clean_start: true,
        keep_alive: 30,
        properties: Properties {
            session_expiry_interval: Some(3600),
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(b(&[0xAA, 0xBB])),
            request_problem_information: Some(false),
            request_response_information: Some(true),
            receive_maximum: Some(20),
            topic_alias_maximum: Some(10),
            user_properties: vec![(s("k"), s("v"))],
            maximum_packet_size: Some(4096),
            ..Properties::default()
        },
        client_id: s("cid"),
        will: Some(Will {
            topic: s("w"),
            payload: b(b"hi"),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Properties {
                payload_format_indicator: Some(true),
                message_expiry_interval: Some(60),
                content_type: Some(s("text")),
                response_topic: Some(s("r/t")),
                correlation_data: Some(b(&[1, 2])),
                will_delay_interval: Some(5),
                user_properties: vec![(s("a"), s("b"))],
                ..Properties::default()
            },
        }),
        username: Some(s("me")),
        password: Some(b(b"sec")),
    };
    vector(V5, &bytes, &Packet::Connect(Box::new(connect)));
}

#[test]
fn connect_v5_password_without_user_name_is_allowed_mqtt5_3_1_2_9() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x10,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05,
        0x42,                     // password, clean start; no user name
        0x00, 0x00,               // keep alive off
        0x00,                     // no properties
        0x00, 0x00,               // empty client identifier
        0x00, 0x01, b'x',         // password
    ];
    let connect = Connect {
        protocol: V5,
        clean_start: true,
        keep_alive: 0,
        properties: Properties::default(),
        client_id: MqttStr::default(),
        will: None,
        username: None,
        password: Some(b(b"x")),
    };
    vector(V5, &bytes, &Packet::Connect(Box::new(connect)));
}

// ---------------------------------------------------------------------------------------------
// CONNACK
// ---------------------------------------------------------------------------------------------

#[test]
fn connack_v3_return_codes_0_to_5_map_to_reason_codes() {
    // 3.1.1 table 3.1 "Connect Return code values"; 3.1 has the same six.
    let table = [
        (0x00, ReasonCode::Success),
        (0x01, ReasonCode::UnsupportedProtocolVersion),
        (0x02, ReasonCode::ClientIdentifierNotValid),
        (0x03, ReasonCode::ServerUnavailable),
        (0x04, ReasonCode::BadUserNameOrPassword),
        (0x05, ReasonCode::NotAuthorized),
    ];
    for version in V3X {
        for (code, reason_code) in table {
            let connack = ConnAck {
                session_present: false,
                reason_code,
                properties: Properties::default(),
            };
            vector(
                version,
                &[0x20, 0x02, 0x00, code],
                &Packet::ConnAck(connack),
            );
        }
    }
}

#[test]
fn connack_v311_session_present_mqtt_3_2_2_2() {
    let connack = ConnAck {
        session_present: true,
        reason_code: ReasonCode::Success,
        properties: Properties::default(),
    };
    vector(V311, &[0x20, 0x02, 0x01, 0x00], &Packet::ConnAck(connack));
}

#[test]
fn connack_v5_minimal() {
    let connack = ConnAck {
        session_present: false,
        reason_code: ReasonCode::Success,
        properties: Properties::default(),
    };
    vector(
        V5,
        &[0x20, 0x03, 0x00, 0x00, 0x00],
        &Packet::ConnAck(connack),
    );
}

#[test]
fn connack_v5_with_properties_mqtt5_3_2_2_3() {
    #[rustfmt::skip]
    let bytes = [
        0x20, 0x25,
        0x01,                                 // session present
        0x00,                                 // success
        0x22,                                 // property length 34
        0x12, 0x00, 0x03, b'a', b'b', b'c',   //   assigned client identifier
        0x13, 0x00, 0x3C,                     //   server keep alive 60
        0x1A, 0x00, 0x01, b'r',               //   response information
        0x21, 0x00, 0x0A,                     //   receive maximum 10
        0x22, 0x00, 0x05,                     //   topic alias maximum 5
        0x24, 0x01,                           //   maximum QoS 1
        0x25, 0x00,                           //   retain not available
        0x27, 0x00, 0x01, 0x00, 0x00,         //   maximum packet size 65536
        0x28, 0x01,                           //   wildcard subscription available
        0x29, 0x00,                           //   subscription identifiers not available
        0x2A, 0x01,                           //   shared subscription available
    ];
    let connack = ConnAck {
        session_present: true,
        reason_code: ReasonCode::Success,
        properties: Properties {
            assigned_client_identifier: Some(s("abc")),
            server_keep_alive: Some(60),
            response_information: Some(s("r")),
            receive_maximum: Some(10),
            topic_alias_maximum: Some(5),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            maximum_packet_size: Some(65536),
            wildcard_subscription_available: Some(true),
            subscription_identifier_available: Some(false),
            shared_subscription_available: Some(true),
            ..Properties::default()
        },
    };
    vector(V5, &bytes, &Packet::ConnAck(connack));
}

#[test]
fn connack_v5_refusal_with_server_reference_and_reason_string() {
    #[rustfmt::skip]
    let bytes = [
        0x20, 0x11,
        0x00,
        0x9C,                                             // use another server
        0x0E,
        0x1C, 0x00, 0x05, b'o', b't', b'h', b'e', b'r',   // server reference
        0x1F, 0x00, 0x03, b'b', b'y', b'e',               // reason string
    ];
    let connack = ConnAck {
        session_present: false,
        reason_code: ReasonCode::UseAnotherServer,
        properties: Properties {
            server_reference: Some(s("other")),
            reason_string: Some(s("bye")),
            ..Properties::default()
        },
    };
    vector(V5, &bytes, &Packet::ConnAck(connack));
}

// ---------------------------------------------------------------------------------------------
// PUBLISH
// ---------------------------------------------------------------------------------------------

fn publish(qos: QoS, dup: bool, retain: bool, packet_id: u16, payload: &'static [u8]) -> Publish {
    Publish {
        dup,
        qos,
        retain,
        topic: s("a/b"),
        packet_id,
        properties: Properties::default(),
        payload: b(payload),
    }
}

#[test]
fn publish_v3_qos0_mqtt_3_3_1() {
    for version in V3X {
        let bytes = [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
        let packet = Packet::Publish(publish(QoS::AtMostOnce, false, false, 0, b"hi"));
        vector(version, &bytes, &packet);
        // QoS 0 with RETAIN: no packet identifier [MQTT-2.3.1-5 in 3.1.1, 2.2.1-2 in 5.0].
        let bytes = [0x31, 0x05, 0x00, 0x03, b'a', b'/', b'b'];
        let packet = Packet::Publish(publish(QoS::AtMostOnce, false, true, 0, b""));
        vector(version, &bytes, &packet);
    }
}

#[test]
fn publish_v3_qos1_retain_and_qos2_dup() {
    for version in V3X {
        // QoS 1, RETAIN: flags 0b0011, packet identifier 10.
        let bytes = [0x33, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'x'];
        let packet = Packet::Publish(publish(QoS::AtLeastOnce, false, true, 10, b"x"));
        vector(version, &bytes, &packet);
        // QoS 2, DUP: flags 0b1100, packet identifier 0x1234, empty payload.
        let bytes = [0x3C, 0x07, 0x00, 0x03, b'a', b'/', b'b', 0x12, 0x34];
        let packet = Packet::Publish(publish(QoS::ExactlyOnce, true, false, 0x1234, b""));
        vector(version, &bytes, &packet);
        // QoS 1, DUP and RETAIN: flags 0b1011.
        let bytes = [0x3B, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0xFF, 0xFF, b'z'];
        let packet = Packet::Publish(publish(QoS::AtLeastOnce, true, true, 0xFFFF, b"z"));
        vector(version, &bytes, &packet);
    }
}

#[test]
fn publish_two_byte_remaining_length_mqtt_1_5_5() {
    // Remaining length 203 = 0xCB 0x01 (7 bits a byte, least significant first).
    let payload = vec![0x5A; 200];
    let mut bytes = vec![0x30, 0xCB, 0x01, 0x00, 0x01, b't'];
    bytes.extend_from_slice(&payload);
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: s("t"),
        packet_id: 0,
        properties: Properties::default(),
        payload: Bytes::from(payload),
    });
    for version in V3X {
        vector(version, &bytes, &packet);
    }
}

#[test]
fn publish_v5_qos0_without_properties_mqtt5_3_3_2_3() {
    // In 5.0 the property length is always there, even when 0.
    let bytes = [0x30, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, b'h', b'i'];
    let packet = Packet::Publish(publish(QoS::AtMostOnce, false, false, 0, b"hi"));
    vector(V5, &bytes, &packet);
    let bytes = [0x3D, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x07, 0x00];
    let packet = Packet::Publish(publish(QoS::ExactlyOnce, true, true, 7, b""));
    vector(V5, &bytes, &packet);
}

#[test]
fn publish_v5_qos1_with_properties_user_properties_in_order_and_repeated_subscription_ids() {
    #[rustfmt::skip]
    let bytes = [
        0x32, 0x47,                                   // PUBLISH QoS 1, remaining length 71
        0x00, 0x03, b't', b'/', b'1',                 // topic name
        0x00, 0x01,                                   // packet identifier 1
        0x3D,                                         // property length 61
        0x01, 0x01,                                   //   payload format indicator 1
        0x02, 0x00, 0x00, 0x00, 0x78,                 //   message expiry interval 120
        0x03, 0x00, 0x04, b'j', b's', b'o', b'n',     //   content type
        0x08, 0x00, 0x04, b'r', b'e', b's', b'p',     //   response topic
        0x09, 0x00, 0x03, 0x01, 0x02, 0x03,           //   correlation data
        0x0B, 0x05,                                   //   subscription identifier 5
        0x0B, 0x80, 0x01,                             //   subscription identifier 128
        0x0B, 0xFF, 0xFF, 0xFF, 0x7F,                 //   subscription identifier 268 435 455
        0x23, 0x00, 0x07,                             //   topic alias 7
        0x26, 0x00, 0x01, b'z', 0x00, 0x01, b'1',     //   user property z=1
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'2',     //   user property a=2
        0x26, 0x00, 0x01, b'z', 0x00, 0x01, b'3',     //   user property z=3 (repeated name)
        b'{', b'}',                                   // payload
    ];
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("t/1"),
        packet_id: 1,
        properties: Properties {
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(120),
            content_type: Some(s("json")),
            response_topic: Some(s("resp")),
            correlation_data: Some(b(&[1, 2, 3])),
            subscription_identifiers: vec![5, 128, 268_435_455],
            topic_alias: Some(7),
            user_properties: vec![(s("z"), s("1")), (s("a"), s("2")), (s("z"), s("3"))],
            ..Properties::default()
        },
        payload: b(b"{}"),
    });
    vector(V5, &bytes, &packet);
}

#[test]
fn publish_v5_empty_topic_with_topic_alias_mqtt5_3_3_2_3_4() {
    let bytes = [0x31, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x02, b'p'];
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: MqttStr::default(),
        packet_id: 0,
        properties: Properties {
            topic_alias: Some(2),
            ..Properties::default()
        },
        payload: b(b"p"),
    });
    vector(V5, &bytes, &packet);
}

#[test]
fn publish_v5_two_byte_property_length() {
    // One user property: identifier 1 + name 3 + value 2 + 125 = 131 bytes, so the property
    // length is 131, written 0x83 0x01; remaining length 3 + 2 + 131 = 136, written 0x88 0x01.
    let value = "v".repeat(125);
    let mut bytes = vec![0x30, 0x88, 0x01, 0x00, 0x01, b't', 0x83, 0x01, 0x26];
    bytes.extend_from_slice(&[0x00, 0x01, b'k', 0x00, 125]);
    bytes.extend_from_slice(value.as_bytes());
    assert_eq!(bytes.len() - 3, 136);
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: s("t"),
        packet_id: 0,
        properties: Properties {
            user_properties: vec![(s("k"), MqttStr::try_from(value).unwrap())],
            ..Properties::default()
        },
        payload: Bytes::new(),
    });
    vector(V5, &bytes, &packet);
}

// ---------------------------------------------------------------------------------------------
// PUBACK, PUBREC, PUBREL, PUBCOMP
// ---------------------------------------------------------------------------------------------

fn ack_packet(first: u8, ack: Ack) -> Packet {
    match first >> 4 {
        4 => Packet::PubAck(ack),
        5 => Packet::PubRec(ack),
        6 => Packet::PubRel(ack),
        7 => Packet::PubComp(ack),
        _ => unreachable!(),
    }
}

#[test]
fn acks_v3_packet_identifier_only_mqtt_3_4_to_3_7() {
    // PUBREL has the fixed flags 0b0010 [MQTT-3.6.1-1].
    for version in V3X {
        for first in [0x40, 0x50, 0x62, 0x70] {
            let bytes = [first, 0x02, 0x12, 0x34];
            vector(version, &bytes, &ack_packet(first, Ack::new(0x1234)));
        }
    }
}

#[test]
fn acks_v5_short_form_remaining_length_2_means_success_mqtt5_3_4_2_1() {
    for first in [0x40, 0x50, 0x62, 0x70] {
        let bytes = [first, 0x02, 0x00, 0x01];
        vector(V5, &bytes, &ack_packet(first, Ack::new(1)));
    }
}

#[test]
fn acks_v5_remaining_length_3_reason_code_without_properties_mqtt5_3_4_2_1() {
    let rows = [
        (0x40, ReasonCode::NoMatchingSubscribers),
        (0x50, ReasonCode::QuotaExceeded),
        (0x62, ReasonCode::PacketIdentifierNotFound),
        (0x70, ReasonCode::PacketIdentifierNotFound),
    ];
    for (first, reason_code) in rows {
        let bytes = [first, 0x03, 0x00, 0x02, reason_code.as_u8()];
        let ack = Ack {
            packet_id: 2,
            reason_code,
            properties: Properties::default(),
        };
        vector(V5, &bytes, &ack_packet(first, ack));
    }
}

#[test]
fn acks_v5_long_form_with_properties_mqtt5_3_4_2_2() {
    #[rustfmt::skip]
    let bytes = [
        0x40, 0x12,
        0x00, 0x01,
        0x87,                                         // not authorized
        0x0E,
        0x1F, 0x00, 0x04, b'd', b'e', b'n', b'y',     // reason string
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v',     // user property
    ];
    let ack = Ack {
        packet_id: 1,
        reason_code: ReasonCode::NotAuthorized,
        properties: Properties {
            reason_string: Some(s("deny")),
            user_properties: vec![(s("k"), s("v"))],
            ..Properties::default()
        },
    };
    vector(V5, &bytes, &Packet::PubAck(ack));

    // Success with properties: the reason code must then be written.
    let bytes = [
        0x50, 0x09, 0x00, 0x02, 0x00, 0x05, 0x1F, 0x00, 0x02, b'o', b'k',
    ];
    let ack = Ack {
        packet_id: 2,
        reason_code: ReasonCode::Success,
        properties: Properties {
            reason_string: Some(s("ok")),
            ..Properties::default()
        },
    };
    vector(V5, &bytes, &Packet::PubRec(ack));

    let bytes = [0x62, 0x08, 0x00, 0x03, 0x92, 0x04, 0x1F, 0x00, 0x01, b'x'];
    let ack = Ack {
        packet_id: 3,
        reason_code: ReasonCode::PacketIdentifierNotFound,
        properties: Properties {
            reason_string: Some(s("x")),
            ..Properties::default()
        },
    };
    vector(V5, &bytes, &Packet::PubRel(ack.clone()));
    let mut bytes = bytes;
    bytes[0] = 0x70;
    vector(V5, &bytes, &Packet::PubComp(ack));
}

#[test]
fn acks_v5_non_canonical_forms_decode() {
    // Reason code Success written out, and an empty property list written out: both are valid
    // and mean the same as the short form, which the encoder prefers.
    decode_only(
        V5,
        &[0x40, 0x03, 0x00, 0x01, 0x00],
        &Packet::PubAck(Ack::new(1)),
    );
    decode_only(
        V5,
        &[0x70, 0x04, 0x00, 0x01, 0x00, 0x00],
        &Packet::PubComp(Ack::new(1)),
    );
    decode_only(
        V5,
        &[0xE0, 0x02, 0x00, 0x00],
        &Packet::Disconnect(Disconnect::default()),
    );
    decode_only(V5, &[0xF0, 0x01, 0x00], &Packet::Auth(Auth::default()));
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK
// ---------------------------------------------------------------------------------------------

fn qos_only(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

#[test]
fn subscribe_v3_mqtt_3_8() {
    #[rustfmt::skip]
    let bytes = [
        0x82, 0x0C,                               // flags 0b0010 [MQTT-3.8.1-1]
        0x00, 0x0A,                               // packet identifier 10
        0x00, 0x03, b'a', b'/', b'+', 0x01,       // a/+ at QoS 1
        0x00, 0x01, b'#', 0x02,                   // # at QoS 2
    ];
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 10,
        properties: Properties::default(),
        subscriptions: vec![
            Subscription {
                filter: s("a/+"),
                options: qos_only(QoS::AtLeastOnce),
            },
            Subscription {
                filter: s("#"),
                options: qos_only(QoS::ExactlyOnce),
            },
        ],
    });
    for version in V3X {
        vector(version, &bytes, &packet);
    }
}

#[test]
fn subscribe_v5_options_no_local_retain_as_published_retain_handling_mqtt5_3_8_3_1() {
    #[rustfmt::skip]
    let bytes = [
        0x82, 0x25,
        0x00, 0x0B,
        0x09,                                             // property length 9
        0x0B, 0x2A,                                       //   subscription identifier 42
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v',         //   user property
        0x00, 0x03, b'a', b'/', b'b',
        0x2D,                                             // QoS 1, no local, RAP, retain handling 2
        0x00, 0x0C, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', b'x', b'/', b'#',
        0x12,                                             // QoS 2, retain handling 1
        0x00, 0x01, b'c',
        0x00,                                             // QoS 0, all off
    ];
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 11,
        properties: Properties {
            subscription_identifiers: vec![42],
            user_properties: vec![(s("k"), s("v"))],
            ..Properties::default()
        },
        subscriptions: vec![
            Subscription {
                filter: s("a/b"),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            },
            Subscription {
                filter: s("$share/g/x/#"),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendAtSubscribeIfNew,
                },
            },
            Subscription {
                filter: s("c"),
                options: SubscriptionOptions::default(),
            },
        ],
    });
    vector(V5, &bytes, &packet);
}

#[test]
fn suback_v3_granted_qos_and_failure_mqtt_3_9_3() {
    let bytes = [0x90, 0x06, 0x00, 0x0A, 0x00, 0x01, 0x02, 0x80];
    let packet = Packet::SubAck(SubAck {
        packet_id: 10,
        properties: Properties::default(),
        reason_codes: vec![
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GrantedQos1,
            ReasonCode::GrantedQos2,
            ReasonCode::UnspecifiedError,
        ],
    });
    for version in V3X {
        vector(version, &bytes, &packet);
    }
}

#[test]
fn suback_v5_every_reason_code_with_reason_string_mqtt5_3_9_3() {
    #[rustfmt::skip]
    let bytes = [
        0x90, 0x14,
        0x00, 0x0B,
        0x05, 0x1F, 0x00, 0x02, b'n', b'o',
        0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
    ];
    let reason_codes = bytes[10..]
        .iter()
        .map(|&code| ReasonCode::from_u8(code).unwrap())
        .collect();
    let packet = Packet::SubAck(SubAck {
        packet_id: 11,
        properties: Properties {
            reason_string: Some(s("no")),
            ..Properties::default()
        },
        reason_codes,
    });
    vector(V5, &bytes, &packet);
}

#[test]
fn unsubscribe_v3_mqtt_3_10() {
    #[rustfmt::skip]
    let bytes = [
        0xA2, 0x0C,                               // flags 0b0010 [MQTT-3.10.1-1]
        0x00, 0x0C,
        0x00, 0x03, b'a', b'/', b'b',
        0x00, 0x03, b'c', b'/', b'#',
    ];
    let packet = Packet::Unsubscribe(Unsubscribe {
        packet_id: 12,
        properties: Properties::default(),
        filters: vec![s("a/b"), s("c/#")],
    });
    for version in V3X {
        vector(version, &bytes, &packet);
    }
}

#[test]
fn unsubscribe_v5_with_user_property() {
    #[rustfmt::skip]
    let bytes = [
        0xA2, 0x0F,
        0x00, 0x0D,
        0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v',
        0x00, 0x03, b'a', b'/', b'+',
    ];
    let packet = Packet::Unsubscribe(Unsubscribe {
        packet_id: 13,
        properties: Properties {
            user_properties: vec![(s("k"), s("v"))],
            ..Properties::default()
        },
        filters: vec![s("a/+")],
    });
    vector(V5, &bytes, &packet);
}

#[test]
fn unsuback_v3_has_no_reason_codes_mqtt_3_11() {
    let packet = Packet::UnsubAck(UnsubAck {
        packet_id: 12,
        properties: Properties::default(),
        reason_codes: Vec::new(),
    });
    for version in V3X {
        vector(version, &[0xB0, 0x02, 0x00, 0x0C], &packet);
    }
}

#[test]
fn unsuback_v5_with_reason_codes_mqtt5_3_11_3() {
    #[rustfmt::skip]
    let bytes = [
        0xB0, 0x0E,
        0x00, 0x0D,
        0x04, 0x1F, 0x00, 0x01, b'r',
        0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91,
    ];
    let packet = Packet::UnsubAck(UnsubAck {
        packet_id: 13,
        properties: Properties {
            reason_string: Some(s("r")),
            ..Properties::default()
        },
        reason_codes: vec![
            ReasonCode::Success,
            ReasonCode::NoSubscriptionExisted,
            ReasonCode::UnspecifiedError,
            ReasonCode::ImplementationSpecificError,
            ReasonCode::NotAuthorized,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::PacketIdentifierInUse,
        ],
    });
    vector(V5, &bytes, &packet);

    let bytes = [0xB0, 0x04, 0x00, 0x0D, 0x00, 0x00];
    let packet = Packet::UnsubAck(UnsubAck {
        packet_id: 13,
        properties: Properties::default(),
        reason_codes: vec![ReasonCode::Success],
    });
    vector(V5, &bytes, &packet);
}

// ---------------------------------------------------------------------------------------------
// PINGREQ, PINGRESP, DISCONNECT, AUTH
// ---------------------------------------------------------------------------------------------

#[test]
fn pingreq_and_pingresp_mqtt_3_12_and_3_13() {
    for version in ALL {
        vector(version, &[0xC0, 0x00], &Packet::PingReq);
        vector(version, &[0xD0, 0x00], &Packet::PingResp);
    }
}

#[test]
fn disconnect_v3_is_empty_mqtt_3_14() {
    for version in V3X {
        vector(
            version,
            &[0xE0, 0x00],
            &Packet::Disconnect(Disconnect::default()),
        );
    }
}

#[test]
fn disconnect_v5_remaining_length_0_is_normal_disconnection_mqtt5_3_14_2_1() {
    vector(
        V5,
        &[0xE0, 0x00],
        &Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
    );
}

#[test]
fn disconnect_v5_reason_code_only() {
    vector(
        V5,
        &[0xE0, 0x01, 0x04],
        &Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage)),
    );
}

#[test]
fn disconnect_v5_with_reason_and_properties_mqtt5_3_14_2_2() {
    #[rustfmt::skip]
    let bytes = [
        0xE0, 0x11,
        0x8E,                                     // session taken over
        0x0F,
        0x11, 0x00, 0x00, 0x00, 0x00,             // session expiry interval 0
        0x1C, 0x00, 0x01, b's',                   // server reference
        0x1F, 0x00, 0x03, b'd', b'u', b'p',       // reason string
    ];
    let packet = Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::SessionTakenOver,
        properties: Properties {
            session_expiry_interval: Some(0),
            server_reference: Some(s("s")),
            reason_string: Some(s("dup")),
            ..Properties::default()
        },
    });
    vector(V5, &bytes, &packet);
}

#[test]
fn auth_v5_remaining_length_0_is_success_mqtt5_3_15_2_1() {
    vector(V5, &[0xF0, 0x00], &Packet::Auth(Auth::default()));
}

#[test]
fn auth_v5_continue_authentication_with_properties_mqtt5_3_15_2_2() {
    #[rustfmt::skip]
    let bytes = [
        0xF0, 0x14,
        0x18,                                             // continue authentication
        0x12,                                             // property length 18
        0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M',   // authentication method
        0x16, 0x00, 0x03, 0x01, 0x02, 0x03,               // authentication data
        0x1F, 0x00, 0x01, b'c',                           // reason string
    ];
    let packet = Packet::Auth(Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        properties: Properties {
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(b(&[1, 2, 3])),
            reason_string: Some(s("c")),
            ..Properties::default()
        },
    });
    vector(V5, &bytes, &packet);

    vector(
        V5,
        &[0xF0, 0x01, 0x19],
        &Packet::Auth(Auth {
            reason_code: ReasonCode::ReAuthenticate,
            properties: Properties::default(),
        }),
    );
}

#[test]
fn disconnect_v5_connection_rate_exceeded_is_allowed_mqtt5_table_2_6() {
    // Table 2-6 and section 3.14.2.1 list 0x9F for CONNACK and DISCONNECT.
    vector(
        V5,
        &[0xE0, 0x01, 0x9F],
        &Packet::Disconnect(Disconnect::new(ReasonCode::ConnectionRateExceeded)),
    );
}

#[test]
fn v31_resent_pubrel_subscribe_unsubscribe_may_carry_dup() {
    // MQTT 3.1 section 2.1 (DUP): set when PUBREL, SUBSCRIBE or UNSUBSCRIBE is sent again.
    // The flag carries no meaning for the receiver, so the packet re-encodes without it.
    decode_only(V31, &[0x6A, 0x02, 0x00, 0x05], &Packet::PubRel(Ack::new(5)));
    decode_only(
        V31,
        &[0x8A, 0x06, 0x00, 0x05, 0x00, 0x01, b'a', 0x01],
        &Packet::Subscribe(Subscribe {
            packet_id: 5,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: s("a"),
                options: qos_only(QoS::AtLeastOnce),
            }],
        }),
    );
    decode_only(
        V31,
        &[0xAA, 0x05, 0x00, 0x05, 0x00, 0x01, b'a'],
        &Packet::Unsubscribe(Unsubscribe {
            packet_id: 5,
            properties: Properties::default(),
            filters: vec![s("a")],
        }),
    );
}
