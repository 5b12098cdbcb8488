//! Sessions that outlive their connection (sections 3.1.2.4, 3.1.2.11, 3.2.2.2 and 4.1): the
//! Session Present flag, subscriptions and messages kept while the client is away (bounded, the
//! oldest dropped), clean start, and when a session expires, on the fake clock.

mod common;

use std::time::Duration;

use common::*;
use tern_broker::BrokerConfig;
use tern_codec::{Disconnect, Packet, ProtocolVersion, QoS, ReasonCode};

/// A persistent session subscribed to `filter`, whose connection has gone (DISCONNECT).
fn away(net: &Net, version: ProtocolVersion, id: &str, filter: &str, qos: QoS) {
    let mut client = net.accepted(persistent(version, id));
    client.subscribe(filter, qos);
    client.disconnect();
}

fn with_expiry(version: ProtocolVersion, id: &str, seconds: Option<u32>) -> tern_codec::Connect {
    let mut connect = connect_packet(version, id);
    connect.properties.session_expiry_interval = seconds;
    connect
}

fn persistent_for(version: ProtocolVersion, id: &str, seconds: u32) -> tern_codec::Connect {
    let mut connect = persistent(version, id);
    connect.properties.session_expiry_interval = Some(seconds);
    connect
}

#[test]
fn no_session_present_for_a_first_persistent_connection_mqtt_3_2_2_3() {
    let net = Net::new();
    let (_client, connack) = net.connect(persistent(V311, "first-time"));
    assert_eq!(connack.reason_code, ReasonCode::Success);
    assert!(!connack.session_present);
}

#[test]
fn queued_messages_are_delivered_in_order_on_return_mqtt_3_2_2_2() {
    let net = Net::new();
    away(&net, V311, "away", "away/#", QoS::ExactlyOnce);
    let mut publisher = net.connected(V311, "away-pub");
    for n in 0..20u8 {
        let qos = if n % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        publisher.publish("away/t", qos, &[n]);
    }
    publisher.publish("away/t", QoS::AtMostOnce, &[99]);
    assert_eq!(
        net.session("away").unwrap().queued_len(),
        20,
        "QoS 0 not queued by default"
    );

    let (mut subscriber, connack) = net.connect(persistent(V311, "away"));
    assert!(connack.session_present, "[MQTT-3.2.2-2]");
    let publishes = subscriber.publishes();
    let payloads: Vec<u8> = publishes.iter().map(|p| p.payload[0]).collect();
    assert_eq!(payloads, (0..20).collect::<Vec<u8>>(), "in order, no QoS 0");
    for publish in &publishes {
        let expected = if publish.payload[0] % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        assert_eq!(publish.qos, expected);
        assert!(!publish.dup, "sent for the first time");
    }
}

#[test]
fn subscriptions_survive_a_disconnect() {
    let net = Net::new();
    away(&net, V311, "keeps-subs", "keep/t", QoS::AtLeastOnce);
    let (mut subscriber, connack) = net.connect(persistent(V311, "keeps-subs"));
    assert!(connack.session_present);
    let mut publisher = net.connected(V311, "keeps-subs-pub");
    publisher.publish("keep/t", QoS::AtLeastOnce, b"still");
    assert_eq!(subscriber.payloads(), ["still"]);
}

#[test]
fn clean_session_discards_the_stored_session_mqtt_3_2_2_1() {
    let net = Net::new();
    away(&net, V311, "cleaned", "cleaned/t", QoS::AtLeastOnce);
    let mut publisher = net.connected(V311, "cleaned-pub");
    publisher.publish("cleaned/t", QoS::AtLeastOnce, b"lost");

    let (mut clean, connack) = net.connect(connect_packet(V311, "cleaned"));
    assert!(!connack.session_present);
    clean.nothing();
    publisher.publish("cleaned/t", QoS::AtLeastOnce, b"unsubscribed");
    clean.nothing();
    assert_eq!(net.broker.subscription_count(), 0);
    clean.disconnect();
    assert!(
        net.session("cleaned").is_none(),
        "a clean session ends with its connection"
    );
}

#[test]
fn queue_overflow_drops_the_oldest_and_counts_it() {
    let net = Net::with_config(BrokerConfig {
        max_queued_messages: 5,
        ..BrokerConfig::default()
    });
    away(&net, V311, "overflow", "overflow/t", QoS::AtLeastOnce);
    let mut publisher = net.connected(V311, "overflow-pub");
    for n in 0..8u8 {
        publisher.publish("overflow/t", QoS::AtLeastOnce, &[n]);
    }
    let session = net.session("overflow").unwrap();
    assert_eq!(session.queued_len(), 5);
    assert_eq!(session.dropped_count(), 3);
    assert_eq!(
        net.broker.metrics().snapshot().messages_dropped_queue_full,
        3
    );
    let (mut subscriber, _) = net.connect(persistent(V311, "overflow"));
    let payloads: Vec<u8> = subscriber.payloads().iter().map(|p| p[0]).collect();
    assert_eq!(payloads, [3, 4, 5, 6, 7]);
}

#[test]
fn qos0_is_queued_offline_when_configured() {
    let net = Net::with_config(BrokerConfig {
        queue_qos0_offline: true,
        ..BrokerConfig::default()
    });
    away(&net, V311, "q0-queue", "q0q/t", QoS::AtMostOnce);
    let mut publisher = net.connected(V311, "q0-queue-pub");
    publisher.publish("q0q/t", QoS::AtMostOnce, b"kept");
    let (mut subscriber, _) = net.connect(persistent(V311, "q0-queue"));
    assert_eq!(subscriber.payloads(), ["kept"]);
}

#[test]
fn persistent_session_expiry_for_3x_is_configurable() {
    let net = Net::with_config(BrokerConfig {
        persistent_session_expiry: Some(Duration::from_secs(1)),
        ..BrokerConfig::default()
    });
    away(&net, V311, "expiring", "exp/t", QoS::AtLeastOnce);
    net.advance(999);
    assert!(net.session("expiring").is_some(), "kept for the interval");
    net.advance(1);
    assert!(net.session("expiring").is_none(), "ended after it");
    assert_eq!(net.broker.subscription_count(), 0);
    let (_subscriber, connack) = net.connect(persistent(V311, "expiring"));
    assert!(!connack.session_present);
}

#[test]
fn a_3x_persistent_session_never_expires_by_default() {
    let net = Net::new();
    away(&net, V311, "kept", "kept/t", QoS::AtLeastOnce);
    net.advance(365 * 24 * 3600 * 1000);
    let (_subscriber, connack) = net.connect(persistent(V311, "kept"));
    assert!(connack.session_present);
}

#[test]
fn session_expiry_zero_ends_the_session_with_the_connection_mqtt_3_1_2_11() {
    let net = Net::new();
    let mut client = net.accepted(with_expiry(V5, "exp0", None));
    client.subscribe("exp0/t", QoS::AtLeastOnce);
    client.disconnect();
    assert!(net.session("exp0").is_none());
    assert_eq!(net.broker.subscription_count(), 0);
}

#[test]
fn session_outlives_the_connection_for_its_expiry_interval_mqtt_3_1_2_23() {
    let net = Net::new();
    let mut client = net.accepted(with_expiry(V5, "exp1", Some(1)));
    client.disconnect();
    net.advance(999);
    assert!(net.session("exp1").is_some(), "kept during the interval");
    net.advance(1);
    assert!(net.session("exp1").is_none(), "ended after it");

    // A lost connection counts the same as DISCONNECT.
    let client = net.accepted(with_expiry(V5, "exp-lost", Some(2)));
    drop(client);
    net.advance(1999);
    assert!(net.session("exp-lost").is_some());
    net.advance(1);
    assert!(net.session("exp-lost").is_none());

    // 0xFFFFFFFF never expires.
    let mut client = net.accepted(with_expiry(V5, "exp-max", Some(u32::MAX)));
    client.disconnect();
    net.advance(10 * 365 * 24 * 3600 * 1000);
    assert!(net.session("exp-max").is_some());
}

#[test]
fn a_session_resumed_within_its_interval_is_not_ended_by_the_old_deadline() {
    let net = Net::new();
    let mut client = net.accepted(persistent_for(V5, "back", 1));
    client.disconnect();
    net.advance(500);
    let (_client, connack) = net.connect(persistent_for(V5, "back", 1));
    assert!(connack.session_present);
    net.advance(5000);
    assert!(
        net.session("back").is_some(),
        "a connected session does not expire"
    );
}

#[test]
fn disconnect_may_shorten_the_expiry_but_not_set_it_after_zero_mqtt_3_14_2_2() {
    let net = Net::new();
    let mut client = net.accepted(with_expiry(V5, "exp-zero", None));
    let mut disconnect = Disconnect::default();
    disconnect.properties.session_expiry_interval = Some(60);
    client.send(Packet::Disconnect(disconnect));
    assert_eq!(client.disconnect_reason(), ReasonCode::ProtocolError);

    let mut client = net.accepted(with_expiry(V5, "exp-change", Some(600)));
    let mut disconnect = Disconnect::default();
    disconnect.properties.session_expiry_interval = Some(0);
    client.send(Packet::Disconnect(disconnect));
    client.closed_silently();
    assert!(
        net.session("exp-change").is_none(),
        "expiry set to 0 at DISCONNECT"
    );

    let mut client = net.accepted(with_expiry(V5, "exp-shorter", Some(600)));
    let mut disconnect = Disconnect::default();
    disconnect.properties.session_expiry_interval = Some(2);
    client.send(Packet::Disconnect(disconnect));
    client.closed_silently();
    net.advance(1999);
    assert!(net.session("exp-shorter").is_some());
    net.advance(1);
    assert!(net.session("exp-shorter").is_none(), "the new interval");
}
