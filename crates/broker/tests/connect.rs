//! CONNECT and CONNACK (sections 3.1 and 3.2) in all three versions: CONNECT first and once,
//! the connect timeout, client identifiers, take-over, the CONNACK properties of MQTT 5 and
//! authentication methods. Keep-alive and protocol levels have their own files.

mod common;

use common::*;
use tern_broker::{BrokerConfig, CloseReason};
use tern_codec::{Packet, QoS, ReasonCode};

#[test]
fn first_packet_must_be_connect_mqtt_3_1_0_1() {
    let net = Net::new();
    let mut client = net.open(V311);
    client.send(Packet::PingReq);
    // No CONNACK, no PINGRESP: the connection is closed.
    client.closed_silently();
}

#[test]
fn second_connect_is_a_protocol_violation_mqtt_3_1_0_2() {
    let net = Net::new();
    let mut client = net.connected(V311, "twice");
    client.send(Packet::Connect(Box::new(connect_packet(V311, "twice"))));
    client.closed_silently();
}

#[test]
fn no_connect_within_the_timeout_closes_the_connection() {
    let net = Net::with_config(BrokerConfig {
        connect_timeout: std::time::Duration::from_secs(1),
        ..BrokerConfig::default()
    });
    let mut client = net.open(V311);
    net.advance(999);
    assert!(!client.is_closed(), "open until the timeout");
    net.advance(1);
    client.closed_silently();
    assert_eq!(client.close_reason(), Some(CloseReason::ConnectTimeout));
}

#[test]
fn empty_client_id_with_clean_session_gets_one_assigned_mqtt_3_1_3_6() {
    let net = Net::new();
    let mut client = net.connected(V311, "");
    // The assigned identifier works like any other: the client can subscribe and receive.
    client.subscribe("assigned/t", QoS::AtLeastOnce);
    let packet_id = client.publish("assigned/t", QoS::AtLeastOnce, b"x");
    let packets = client.received();
    assert_eq!(packets.len(), 2, "{packets:?}");
    assert!(packets.contains(&ack(Packet::PubAck, packet_id)));
    assert!(
        packets
            .iter()
            .any(|p| matches!(p, Packet::Publish(publish) if &publish.payload[..] == b"x"))
    );
    assert_eq!(net.broker.session_count(), 1);
}

#[test]
fn empty_client_id_without_clean_session_is_refused_0x02_mqtt_3_1_3_8() {
    let net = Net::new();
    let (mut client, connack) = net.connect(persistent(V311, ""));
    assert_eq!(connack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert!(!connack.session_present, "[MQTT-3.2.2-4]");
    client.closed_silently();
    assert_eq!(net.broker.session_count(), 0);
}

#[test]
fn mqtt31_client_connects_and_an_empty_id_is_refused() {
    let net = Net::new();
    let mut client = net.connected(V31, "old-client");
    client.subscribe("v31/t", QoS::AtLeastOnce);
    let packet_id = client.publish("v31/t", QoS::AtLeastOnce, b"hi");
    let packets = client.received();
    assert_eq!(packets.len(), 2, "{packets:?}");
    assert!(packets.contains(&ack(Packet::PubAck, packet_id)));
    assert!(
        packets
            .iter()
            .any(|p| matches!(p, Packet::Publish(publish) if &publish.payload[..] == b"hi"))
    );

    let (mut refused, connack) = net.connect(connect_packet(V31, ""));
    assert_eq!(connack.reason_code, ReasonCode::ClientIdentifierNotValid);
    refused.closed_silently();
}

#[test]
fn same_client_id_closes_the_existing_connection_mqtt_3_1_4_2() {
    let net = Net::new();
    let mut first = net.connected(V311, "dup-id");
    let mut second = net.connected(V311, "dup-id");
    first.closed_silently();
    assert_eq!(first.close_reason(), Some(CloseReason::SessionTakenOver));
    // The new connection is the one that works.
    second.subscribe("takeover/t", QoS::AtMostOnce);
    second.publish("takeover/t", QoS::AtMostOnce, b"ok");
    assert_eq!(second.payloads(), ["ok"]);
}

#[test]
fn take_over_sends_disconnect_0x8e_mqtt_3_1_4_3() {
    let net = Net::new();
    let mut first = net.connected(V5, "dup5");
    let _second = net.connected(V5, "dup5");
    assert_eq!(first.disconnect_reason(), ReasonCode::SessionTakenOver);
}

#[test]
fn empty_client_id_gets_an_assigned_client_identifier_mqtt_3_2_2_16() {
    let net = Net::new();
    let (_client, connack) = net.connect(connect_packet(V5, ""));
    assert_eq!(connack.reason_code, ReasonCode::Success);
    let assigned = connack
        .properties
        .assigned_client_identifier
        .expect("Assigned Client Identifier in CONNACK");
    assert!(!assigned.is_empty());
    assert!(net.session(&assigned).is_some());
}

#[test]
fn clean_start_discards_an_existing_session_mqtt_3_2_2_2() {
    let net = Net::new();
    let (mut client, connack) = net.connect(persistent(V5, "cs5"));
    assert!(!connack.session_present, "nothing to resume [MQTT-3.2.2-3]");
    client.disconnect();
    let (mut client, connack) = net.connect(persistent(V5, "cs5"));
    assert!(connack.session_present, "resumed");
    client.disconnect();
    let mut clean = persistent(V5, "cs5");
    clean.clean_start = true;
    let (_client, connack) = net.connect(clean);
    assert!(!connack.session_present, "clean start");
}

#[test]
fn connack_properties_tell_the_configuration() {
    let net = Net::new();
    let (_client, connack) = net.connect(connect_packet(V5, "truth1"));
    let defaults = BrokerConfig::default();
    let p = connack.properties;
    assert_eq!(p.maximum_packet_size, Some(defaults.max_packet_size));
    assert_eq!(p.receive_maximum, Some(defaults.receive_maximum));
    assert_eq!(p.topic_alias_maximum, Some(defaults.topic_alias_maximum));
    // Available features are announced by leaving the properties out (they default to 1).
    assert_eq!(p.retain_available, None);
    assert_eq!(p.maximum_qos, None);
    assert_eq!(p.wildcard_subscription_available, None);
    assert_eq!(p.subscription_identifier_available, None);
    assert_eq!(p.shared_subscription_available, None);

    let net = Net::with_config(BrokerConfig {
        retain_available: false,
        max_qos: QoS::AtLeastOnce,
        wildcard_subscriptions: false,
        subscription_identifiers: false,
        shared_subscriptions: false,
        topic_alias_maximum: 0,
        max_packet_size: 4096,
        ..BrokerConfig::default()
    });
    let (_client, connack) = net.connect(connect_packet(V5, "truth2"));
    let p = connack.properties;
    assert_eq!(p.retain_available, Some(false));
    assert_eq!(p.maximum_qos, Some(QoS::AtLeastOnce));
    assert_eq!(p.wildcard_subscription_available, Some(false));
    assert_eq!(p.subscription_identifier_available, Some(false));
    assert_eq!(p.shared_subscription_available, Some(false));
    assert_eq!(p.topic_alias_maximum, None);
    assert_eq!(p.maximum_packet_size, Some(4096));
}

#[test]
fn unknown_authentication_method_gets_0x8c() {
    let net = Net::new();
    let mut connect = connect_packet(V5, "auth-method");
    connect.properties.authentication_method = Some(text("NO-SUCH-METHOD"));
    let (mut client, connack) = net.connect(connect);
    assert_eq!(connack.reason_code, ReasonCode::BadAuthenticationMethod);
    client.closed_silently();
}
