//! Proptest strategies for valid packets of each protocol version, shared by `roundtrip.rs` and
//! `arbitrary_input.rs`.
//!
//! "Valid" means what a conforming peer can send and the codec can express in that version:
//! - 3.x: acknowledgements carry reason Success and no properties, UNSUBACK has no reason codes,
//!   SUBACK codes are 0x00, 0x01, 0x02 and 0x80, CONNACK codes are the six 3.x return codes,
//!   subscription options are the QoS alone, there is no AUTH and a password needs a user name.
//! - 5.0: each property list holds only properties table 2-4 allows there, with values in range
//!   (non-zero receive maximum, topic alias, packet size and subscription identifiers; maximum
//!   QoS 0 or 1; authentication data only with a method; one subscription identifier outside
//!   PUBLISH), reason codes only those table 2-6 allows in the packet, no local never on a shared
//!   subscription, and an empty topic name only with a topic alias.
//! - Everywhere: strings are valid MQTT strings, topic names have no wildcard, topic filters put
//!   wildcards where section 4.7 allows, packet identifiers are non-zero where present, and
//!   SUBSCRIBE and UNSUBSCRIBE carry at least one filter.

// Each test binary uses part of this module; unwrap and expect fail the test, as intended.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option::of as opt;
use proptest::prelude::*;
use proptest::sample::select;
use tern_codec::{
    Ack, Auth, ConnAck, Connect, Disconnect, MAX_VARINT, MqttStr, Packet, PacketType, Properties,
    PropertyPlace, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    Subscription, SubscriptionOptions, UnsubAck, Unsubscribe, Will, property_allowed,
    property_id as id, topic::split_shared,
};

pub const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V31,
    ProtocolVersion::V311,
    ProtocolVersion::V5,
];

pub fn version() -> impl Strategy<Value = ProtocolVersion> {
    select(VERSIONS.to_vec())
}

fn mqtt_str(text: String) -> MqttStr {
    MqttStr::try_from(text).expect("strategies make valid strings")
}

/// Any MQTT string: any characters but U+0000, mostly short, sometimes ASCII only.
pub fn text() -> impl Strategy<Value = MqttStr> {
    prop_oneof!["[a-zA-Z0-9 _./-]{0,12}", "[^\\x00]{0,8}",].prop_map(mqtt_str)
}

pub fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

/// A topic level without `/`, wildcards or U+0000.
fn level() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9$]{0,5}", "[^\\x00/+#]{0,4}"]
}

/// A topic name: non-empty, no wildcard [MQTT-3.3.2-2, MQTT-4.7.3-1].
pub fn topic_name() -> impl Strategy<Value = MqttStr> {
    vec(level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("topic names are not empty", |topic| !topic.is_empty())
        .prop_map(mqtt_str)
}

/// A topic filter [MQTT-4.7.1-1, MQTT-4.7.1-2], sometimes a shared subscription [MQTT-4.8.2-1].
pub fn topic_filter() -> impl Strategy<Value = MqttStr> {
    let level = prop_oneof![3 => level(), 1 => Just("+".to_string())];
    let plain = (vec(level, 1..5), any::<bool>())
        .prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#".to_string());
            }
            levels.join("/")
        })
        .prop_filter("topic filters are not empty", |filter| !filter.is_empty());
    let shared = ("[^\\x00/+#]{1,5}", plain.clone())
        .prop_map(|(group, filter)| format!("$share/{group}/{filter}"));
    prop_oneof![4 => plain, 1 => shared].prop_map(mqtt_str)
}

pub fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn reason_in(packet: PacketType) -> impl Strategy<Value = ReasonCode> {
    select(
        ReasonCode::ALL
            .iter()
            .copied()
            .filter(|code| code.allowed_in(packet))
            .collect::<Vec<_>>(),
    )
}

/// Clears property `property` in `p`.
fn clear(p: &mut Properties, property: u8) {
    match property {
        id::PAYLOAD_FORMAT_INDICATOR => p.payload_format_indicator = None,
        id::MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = None,
        id::CONTENT_TYPE => p.content_type = None,
        id::RESPONSE_TOPIC => p.response_topic = None,
        id::CORRELATION_DATA => p.correlation_data = None,
        id::SUBSCRIPTION_IDENTIFIER => p.subscription_identifiers.clear(),
        id::SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = None,
        id::ASSIGNED_CLIENT_IDENTIFIER => p.assigned_client_identifier = None,
        id::SERVER_KEEP_ALIVE => p.server_keep_alive = None,
        id::AUTHENTICATION_METHOD => p.authentication_method = None,
        id::AUTHENTICATION_DATA => p.authentication_data = None,
        id::REQUEST_PROBLEM_INFORMATION => p.request_problem_information = None,
        id::WILL_DELAY_INTERVAL => p.will_delay_interval = None,
        id::REQUEST_RESPONSE_INFORMATION => p.request_response_information = None,
        id::RESPONSE_INFORMATION => p.response_information = None,
        id::SERVER_REFERENCE => p.server_reference = None,
        id::REASON_STRING => p.reason_string = None,
        id::RECEIVE_MAXIMUM => p.receive_maximum = None,
        id::TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = None,
        id::TOPIC_ALIAS => p.topic_alias = None,
        id::MAXIMUM_QOS => p.maximum_qos = None,
        id::RETAIN_AVAILABLE => p.retain_available = None,
        id::USER_PROPERTY => p.user_properties.clear(),
        id::MAXIMUM_PACKET_SIZE => p.maximum_packet_size = None,
        id::WILDCARD_SUBSCRIPTION_AVAILABLE => p.wildcard_subscription_available = None,
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => p.subscription_identifier_available = None,
        id::SHARED_SUBSCRIPTION_AVAILABLE => p.shared_subscription_available = None,
        other => panic!("no property 0x{other:02X}"),
    }
}

const ALL_PROPERTIES: [u8; 27] = [
    id::PAYLOAD_FORMAT_INDICATOR,
    id::MESSAGE_EXPIRY_INTERVAL,
    id::CONTENT_TYPE,
    id::RESPONSE_TOPIC,
    id::CORRELATION_DATA,
    id::SUBSCRIPTION_IDENTIFIER,
    id::SESSION_EXPIRY_INTERVAL,
    id::ASSIGNED_CLIENT_IDENTIFIER,
    id::SERVER_KEEP_ALIVE,
    id::AUTHENTICATION_METHOD,
    id::AUTHENTICATION_DATA,
    id::REQUEST_PROBLEM_INFORMATION,
    id::WILL_DELAY_INTERVAL,
    id::REQUEST_RESPONSE_INFORMATION,
    id::RESPONSE_INFORMATION,
    id::SERVER_REFERENCE,
    id::REASON_STRING,
    id::RECEIVE_MAXIMUM,
    id::TOPIC_ALIAS_MAXIMUM,
    id::TOPIC_ALIAS,
    id::MAXIMUM_QOS,
    id::RETAIN_AVAILABLE,
    id::USER_PROPERTY,
    id::MAXIMUM_PACKET_SIZE,
    id::WILDCARD_SUBSCRIPTION_AVAILABLE,
    id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    id::SHARED_SUBSCRIPTION_AVAILABLE,
];

/// Valid MQTT 5 properties for `place`: every property of table 2-4 may be drawn, then those the
/// place does not allow are cleared and the cross-property rules applied.
pub fn properties(place: PropertyPlace) -> BoxedStrategy<Properties> {
    let a = (
        opt(any::<bool>()),
        opt(any::<u32>()),
        opt(text()),
        opt(topic_name()),
        opt(binary()),
        vec(1..=MAX_VARINT, 0..4),
        opt(any::<u32>()),
        opt(text()),
        opt(any::<u16>()),
    );
    let b = (
        opt(text()),
        opt(binary()),
        opt(any::<bool>()),
        opt(any::<u32>()),
        opt(any::<bool>()),
        opt(text()),
        opt(text()),
        opt(text()),
        opt(1..=u16::MAX),
    );
    let c = (
        opt(any::<u16>()),
        opt(1..=u16::MAX),
        opt(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
        opt(any::<bool>()),
        vec((text(), text()), 0..4),
        opt(1..=u32::MAX),
        opt(any::<bool>()),
        opt(any::<bool>()),
        opt(any::<bool>()),
    );
    (a, b, c)
        .prop_map(move |(a, b, c)| {
            let mut p = Properties {
                payload_format_indicator: a.0,
                message_expiry_interval: a.1,
                content_type: a.2,
                response_topic: a.3,
                correlation_data: a.4,
                subscription_identifiers: a.5,
                session_expiry_interval: a.6,
                assigned_client_identifier: a.7,
                server_keep_alive: a.8,
                authentication_method: b.0,
                authentication_data: b.1,
                request_problem_information: b.2,
                will_delay_interval: b.3,
                request_response_information: b.4,
                response_information: b.5,
                server_reference: b.6,
                reason_string: b.7,
                receive_maximum: b.8,
                topic_alias_maximum: c.0,
                topic_alias: c.1,
                maximum_qos: c.2,
                retain_available: c.3,
                user_properties: c.4,
                maximum_packet_size: c.5,
                wildcard_subscription_available: c.6,
                subscription_identifier_available: c.7,
                shared_subscription_available: c.8,
            };
            for property in ALL_PROPERTIES {
                if !property_allowed(property, place) {
                    clear(&mut p, property);
                }
            }
            // Several subscription identifiers only in PUBLISH (section 3.8.2.1.2).
            if place != PropertyPlace::Packet(PacketType::Publish) {
                p.subscription_identifiers.truncate(1);
            }
            // No authentication data without a method (section 3.1.2.11.10).
            if p.authentication_method.is_none() {
                p.authentication_data = None;
            }
            p
        })
        .boxed()
}

fn properties_if(version: ProtocolVersion, place: PropertyPlace) -> BoxedStrategy<Properties> {
    if version.is_v5() {
        properties(place)
    } else {
        Just(Properties::default()).boxed()
    }
}

fn packet_properties(version: ProtocolVersion, packet: PacketType) -> BoxedStrategy<Properties> {
    properties_if(version, PropertyPlace::Packet(packet))
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

/// A CONNECT of any protocol version: it carries its own, whatever the connection's.
pub fn connect() -> BoxedStrategy<Packet> {
    version()
        .prop_flat_map(|protocol| {
            let will = opt((
                topic_name(),
                binary(),
                qos(),
                any::<bool>(),
                properties_if(protocol, PropertyPlace::Will),
            ));
            (
                Just(protocol),
                any::<bool>(),
                any::<u16>(),
                packet_properties(protocol, PacketType::Connect),
                text(),
                will,
                opt(text()),
                opt(binary()),
            )
        })
        .prop_map(
            |(
                protocol,
                clean_start,
                keep_alive,
                properties,
                client_id,
                will,
                username,
                password,
            )| {
                let will = will.map(|(topic, payload, qos, retain, properties)| Will {
                    topic,
                    payload,
                    qos,
                    retain,
                    properties,
                });
                // 3.x: no password without a user name [MQTT-3.1.2-22].
                let password = if protocol.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                }))
            },
        )
        .boxed()
}

pub fn connack(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let reason = if version.is_v5() {
        reason_in(PacketType::ConnAck).boxed()
    } else {
        select(vec![
            ReasonCode::Success,
            ReasonCode::UnsupportedProtocolVersion,
            ReasonCode::ClientIdentifierNotValid,
            ReasonCode::ServerUnavailable,
            ReasonCode::BadUserNameOrPassword,
            ReasonCode::NotAuthorized,
        ])
        .boxed()
    };
    (
        any::<bool>(),
        reason,
        packet_properties(version, PacketType::ConnAck),
    )
        .prop_map(move |(session_present, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                // MQTT 3.1 has no Session Present flag.
                session_present: session_present && version != ProtocolVersion::V31,
                reason_code,
                properties,
            })
        })
        .boxed()
}

pub fn publish(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        packet_id(),
        packet_properties(version, PacketType::Publish),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(
            move |(qos, dup, retain, topic, empty_topic, packet_id, properties, payload)| {
                let aliased = properties.topic_alias.is_some();
                Packet::Publish(Publish {
                    // DUP only at QoS > 0 [MQTT-3.3.1-2].
                    dup: dup && qos != QoS::AtMostOnce,
                    qos,
                    retain,
                    // An empty topic name stands for a topic alias (5.0 section 3.3.2.3.4).
                    topic: if empty_topic && aliased {
                        MqttStr::default()
                    } else {
                        topic
                    },
                    packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
                    properties,
                    payload: Bytes::from(payload),
                })
            },
        )
        .boxed()
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP.
pub fn ack(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    select(vec![
        PacketType::PubAck,
        PacketType::PubRec,
        PacketType::PubRel,
        PacketType::PubComp,
    ])
    .prop_flat_map(move |packet| {
        let reason = if version.is_v5() {
            reason_in(packet).boxed()
        } else {
            Just(ReasonCode::Success).boxed()
        };
        (
            Just(packet),
            packet_id(),
            reason,
            packet_properties(version, packet),
        )
    })
    .prop_map(|(packet, packet_id, reason_code, properties)| {
        let ack = Ack {
            packet_id,
            reason_code,
            properties,
        };
        match packet {
            PacketType::PubAck => Packet::PubAck(ack),
            PacketType::PubRec => Packet::PubRec(ack),
            PacketType::PubRel => Packet::PubRel(ack),
            _ => Packet::PubComp(ack),
        }
    })
    .boxed()
}

fn subscription(version: ProtocolVersion) -> impl Strategy<Value = Subscription> {
    (
        topic_filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        select(vec![
            RetainHandling::SendAtSubscribe,
            RetainHandling::SendAtSubscribeIfNew,
            RetainHandling::DoNotSend,
        ]),
    )
        .prop_map(
            move |(filter, qos, no_local, retain_as_published, retain_handling)| {
                let options = if version.is_v5() {
                    SubscriptionOptions {
                        qos,
                        // Not on a shared subscription [MQTT-3.8.3-4].
                        no_local: no_local && split_shared(&filter).is_none(),
                        retain_as_published,
                        retain_handling,
                    }
                } else {
                    SubscriptionOptions {
                        qos,
                        ..SubscriptionOptions::default()
                    }
                };
                Subscription { filter, options }
            },
        )
}

pub fn subscribe(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    (
        packet_id(),
        packet_properties(version, PacketType::Subscribe),
        vec(subscription(version), 1..5),
    )
        .prop_map(|(packet_id, properties, subscriptions)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                subscriptions,
            })
        })
        .boxed()
}

pub fn suback(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let code = if version.is_v5() {
        reason_in(PacketType::SubAck).boxed()
    } else {
        select(vec![
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GrantedQos1,
            ReasonCode::GrantedQos2,
            ReasonCode::UnspecifiedError,
        ])
        .boxed()
    };
    (
        packet_id(),
        packet_properties(version, PacketType::SubAck),
        vec(code, 0..6),
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reason_codes,
            })
        })
        .boxed()
}

pub fn unsubscribe(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    (
        packet_id(),
        packet_properties(version, PacketType::Unsubscribe),
        vec(topic_filter(), 1..5),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        })
        .boxed()
}

pub fn unsuback(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let codes = if version.is_v5() {
        vec(reason_in(PacketType::UnsubAck), 0..6).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (
        packet_id(),
        packet_properties(version, PacketType::UnsubAck),
        codes,
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reason_codes,
            })
        })
        .boxed()
}

pub fn disconnect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    if !version.is_v5() {
        return Just(Packet::Disconnect(Disconnect::default())).boxed();
    }
    (
        reason_in(PacketType::Disconnect),
        packet_properties(version, PacketType::Disconnect),
    )
        .prop_map(|(reason_code, properties)| {
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        })
        .boxed()
}

pub fn auth() -> BoxedStrategy<Packet> {
    (
        reason_in(PacketType::Auth),
        properties(PropertyPlace::Packet(PacketType::Auth)),
    )
        .prop_map(|(reason_code, properties)| {
            Packet::Auth(Auth {
                reason_code,
                properties,
            })
        })
        .boxed()
}

/// Any valid packet of `version`.
pub fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(),
        connack(version),
        publish(version),
        ack(version),
        subscribe(version),
        suback(version),
        unsubscribe(version),
        unsuback(version),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(version),
    ];
    if version.is_v5() {
        prop_oneof![11 => common, 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

/// A version and a valid packet of it.
pub fn versioned_packet() -> BoxedStrategy<(ProtocolVersion, Packet)> {
    version()
        .prop_flat_map(|version| (Just(version), packet(version)))
        .boxed()
}

pub fn encode(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    packet
        .encode(version, &mut buf)
        .unwrap_or_else(|e| panic!("a valid packet encodes: {e}\n{packet:?}"));
    buf
}
