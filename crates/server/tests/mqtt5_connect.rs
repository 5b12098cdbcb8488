//! MQTT 5 through the server: its configuration reaches CONNACK, and shutdown sends DISCONNECT
//! 0x8B. The CONNECT rules and the DISCONNECT reason codes are tested on the core's harness in
//! `crates/broker/tests/connect.rs`, `keep_alive.rs` and `limits.rs`.

mod common;

use common::*;
use tern_codec::{Packet, ProtocolVersion, ReasonCode};

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
async fn the_server_configuration_reaches_connack() {
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
