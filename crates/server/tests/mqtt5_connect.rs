//! MQTT 5 CONNECT and CONNACK (sections 3.1, 3.2): session expiry, clean start, assigned client
//! identifiers, Server Keep Alive, CONNACK properties, the server's DISCONNECT reason codes.

mod common;

use common::v5::{Client5, QoS};
use common::*;
use tern_codec::{Packet, Properties, ProtocolVersion, ReasonCode};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// Waits for the DISCONNECT the broker sends, and the close after it.
async fn disconnect_reason(raw: &mut Raw) -> ReasonCode {
    let packets = raw.until_closed().await;
    match packets.last() {
        Some(Packet::Disconnect(disconnect)) => disconnect.reason_code,
        other => panic!("expected DISCONNECT, got {other:?} (all: {packets:?})"),
    }
}

#[tokio::test]
async fn connack_properties_tell_the_configuration() {
    let broker = start().await;
    let (_raw, connack) =
        Raw::connected(broker.addr, V5, connect_packet(V5, "truth1", true, 30)).await;
    let defaults = tern_server::ServerConfig::default();
    let p = connack.properties;
    assert_eq!(p.maximum_packet_size, Some(defaults.limits.max_packet_size));
    assert_eq!(p.receive_maximum, Some(defaults.limits.receive_maximum));
    assert_eq!(
        p.topic_alias_maximum,
        Some(defaults.limits.topic_alias_maximum)
    );
    // Available features are announced by leaving the properties out (they default to 1).
    assert_eq!(p.retain_available, None);
    assert_eq!(p.maximum_qos, None);
    assert_eq!(p.wildcard_subscription_available, None);
    assert_eq!(p.subscription_identifier_available, None);
    assert_eq!(p.shared_subscription_available, None);

    let mut config = config();
    config.mqtt.retain_available = false;
    config.mqtt.max_qos = 1;
    config.mqtt.wildcard_subscriptions = false;
    config.mqtt.subscription_identifiers = false;
    config.mqtt.shared_subscriptions = false;
    config.limits.topic_alias_maximum = 0;
    config.limits.max_packet_size = 4096;
    let broker = start_with(config).await;
    let (_raw, connack) =
        Raw::connected(broker.addr, V5, connect_packet(V5, "truth2", true, 30)).await;
    let p = connack.properties;
    assert_eq!(p.retain_available, Some(false));
    assert_eq!(p.maximum_qos, Some(tern_codec::QoS::AtLeastOnce));
    assert_eq!(p.wildcard_subscription_available, Some(false));
    assert_eq!(p.subscription_identifier_available, Some(false));
    assert_eq!(p.shared_subscription_available, Some(false));
    assert_eq!(p.topic_alias_maximum, None);
    assert_eq!(p.maximum_packet_size, Some(4096));
}

#[tokio::test]
async fn shutdown_sends_disconnect_0x8b() {
    let broker = start().await;
    let (mut raw, _) = Raw::connected(broker.addr, V5, connect_packet(V5, "bye", true, 30)).await;
    broker.shutdown().await;
    assert_eq!(
        disconnect_reason(&mut raw).await,
        ReasonCode::ServerShuttingDown
    );
}

#[tokio::test]
async fn malformed_packet_gets_0x81_and_protocol_error_0x82() {
    let broker = start().await;
    let (mut raw, _) = Raw::connected(broker.addr, V5, connect_packet(V5, "mal5", true, 30)).await;
    // PUBLISH QoS 1 whose topic contains a wildcard.
    raw.send_bytes(&[0x32, 0x08, 0x00, 0x03, b'a', b'/', b'#', 0x00, 0x01, 0x00])
        .await;
    assert_eq!(
        disconnect_reason(&mut raw).await,
        ReasonCode::MalformedPacket
    );
    let (mut raw, _) = Raw::connected(broker.addr, V5, connect_packet(V5, "pe5", true, 30)).await;
    raw.send(&Packet::Connect(Box::new(connect_packet(
        V5, "pe5", true, 30,
    ))))
    .await;
    assert_eq!(disconnect_reason(&mut raw).await, ReasonCode::ProtocolError);
}

#[tokio::test]
async fn packet_over_the_maximum_gets_0x95() {
    let mut config = config();
    config.limits.max_packet_size = 256;
    let broker = start_with(config).await;
    let (mut raw, _) = Raw::connected(broker.addr, V5, connect_packet(V5, "big5", true, 30)).await;
    let publish = tern_codec::Publish {
        payload: bytes::Bytes::from(vec![1u8; 300]),
        properties: Properties::default(),
        ..publish_packet("big/t", tern_codec::QoS::AtMostOnce, 0, b"")
    };
    raw.send(&Packet::Publish(publish)).await;
    assert_eq!(
        disconnect_reason(&mut raw).await,
        ReasonCode::PacketTooLarge
    );
    // Others are unaffected.
    let mut client = Client5::simple(broker.addr, "big5-ok").await;
    client.subscribe("ok/t", QoS::AtLeastOnce).await;
    client
        .client
        .publish("ok/t", QoS::AtLeastOnce, false, "fine")
        .await
        .unwrap();
    assert_eq!(&client.recv().await.payload[..], b"fine");
}
