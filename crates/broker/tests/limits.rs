//! Misbehaving clients and limits, as the core sees them: bytes that do not decode, packets over
//! the maximum size, topics over the length and level limits. 3.x clients are closed without a
//! word; MQTT 5 clients get DISCONNECT with the reason code the spec names.

mod common;

use common::*;
use tern_broker::BrokerConfig;
use tern_codec::{Packet, QoS, ReasonCode};

#[test]
fn garbage_instead_of_connect_is_closed() {
    let net = Net::new();
    let mut client = net.open(V311);
    client.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    client.closed_silently();
}

#[test]
fn malformed_remaining_length_closes_mqtt_1_5_5_1() {
    let net = Net::new();
    let mut client = net.connected(V311, "bad-length");
    client.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    client.closed_silently();
}

#[test]
fn malformed_packet_gets_0x81_and_protocol_error_0x82() {
    let net = Net::new();
    let mut client = net.connected(V5, "mal5");
    // PUBLISH QoS 1 whose topic contains a wildcard.
    client.send_bytes(&[0x32, 0x08, 0x00, 0x03, b'a', b'/', b'#', 0x00, 0x01, 0x00]);
    assert_eq!(client.disconnect_reason(), ReasonCode::MalformedPacket);

    let mut client = net.connected(V5, "pe5");
    client.send(Packet::Connect(Box::new(connect_packet(V5, "pe5"))));
    assert_eq!(client.disconnect_reason(), ReasonCode::ProtocolError);
}

#[test]
fn packet_over_the_maximum_gets_0x95_or_a_plain_close() {
    let net = Net::with_config(BrokerConfig {
        max_packet_size: 256,
        ..BrokerConfig::default()
    });
    let mut watcher = net.connected(V311, "big-watch");
    watcher.subscribe("big/t", QoS::AtMostOnce);
    let mut publish = bytes::BytesMut::new();
    Packet::Publish(publish_packet("big/t", QoS::AtMostOnce, &[1u8; 300]))
        .encode(V5, &mut publish)
        .unwrap();
    let mut client = net.connected(V5, "big5");
    client.send_bytes(&publish);
    assert_eq!(client.disconnect_reason(), ReasonCode::PacketTooLarge);
    // The fixed header alone is enough to refuse it: 256 MB announced, none of it sent.
    let mut client = net.connected(V311, "big3");
    client.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
    client.closed_silently();
    watcher.nothing();
}

#[test]
fn topic_limits_drop_the_publish_and_refuse_the_subscription() {
    let net = Net::with_config(BrokerConfig {
        max_topic_length: 16,
        max_topic_levels: 3,
        ..BrokerConfig::default()
    });
    let mut subscriber = net.connected(V311, "lim-sub");
    subscriber.subscribe("#", QoS::AtLeastOnce);
    let mut publisher = net.connected(V311, "lim-pub");
    // Acknowledged (3.1.1 has no refusal) and dropped.
    for topic in ["a/very/long/topic/name", "a/b/c/d"] {
        let packet_id = publisher.publish(topic, QoS::AtLeastOnce, b"x");
        assert_eq!(publisher.received(), [ack(Packet::PubAck, packet_id)]);
    }
    subscriber.nothing();
    assert_eq!(net.broker.metrics().snapshot().messages_refused, 2);
    for filter in ["a/very/long/filter/#", "a/b/c/#"] {
        let suback = subscriber.subscribe(filter, QoS::AtLeastOnce);
        assert_eq!(
            suback.reason_codes,
            [ReasonCode::UnspecifiedError],
            "{filter}"
        );
    }
    // Within both limits, all is well.
    publisher.publish("a/b/c", QoS::AtLeastOnce, b"fine");
    assert_eq!(subscriber.payloads(), ["fine"]);
}
