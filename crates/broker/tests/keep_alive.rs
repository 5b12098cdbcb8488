//! Keep-alive (section 3.1.2.10): the broker closes a connection that is silent for one and a
//! half times its keep-alive, any packet restarts the count, 0 turns it off, and MQTT 5's Server
//! Keep Alive replaces what the client asked.

mod common;

use common::*;
use tern_broker::{BrokerConfig, CloseReason};
use tern_codec::{Packet, ProtocolVersion, ReasonCode};

fn with_keep_alive(net: &Net, version: ProtocolVersion, id: &str, seconds: u16) -> Client {
    let mut connect = connect_packet(version, id);
    connect.keep_alive = seconds;
    net.accepted(connect)
}

#[test]
fn keep_alive_is_enforced_at_one_and_a_half_times_mqtt_3_1_2_24() {
    let net = Net::new();
    let mut client = with_keep_alive(&net, V311, "sleepy", 1);
    net.advance(1499);
    assert!(!client.is_closed(), "open within 1.5 times the keep-alive");
    net.advance(1);
    client.closed_silently();
    assert_eq!(client.close_reason(), Some(CloseReason::KeepAliveTimeout));
}

#[test]
fn packets_keep_the_connection_alive_and_pingreq_gets_pingresp_mqtt_3_12_4_1() {
    let net = Net::new();
    let mut client = with_keep_alive(&net, V311, "pinger", 1);
    // Well past 1.5 s in all, never 1.5 s without a packet.
    for _ in 0..4 {
        net.advance(1400);
        client.send(Packet::PingReq);
        assert_eq!(client.received(), [Packet::PingResp]);
    }
    // Any packet counts, not only PINGREQ.
    net.advance(1400);
    client.subscribe("alive/t", tern_codec::QoS::AtMostOnce);
    net.advance(1400);
    assert!(!client.is_closed());
    net.advance(100);
    assert!(client.is_closed());
}

#[test]
fn keep_alive_zero_turns_the_timer_off() {
    let net = Net::new();
    let mut client = with_keep_alive(&net, V311, "forever", 0);
    net.advance(24 * 3600 * 1000);
    assert!(!client.is_closed(), "still open a day later");
    client.send(Packet::PingReq);
    assert_eq!(client.received(), [Packet::PingResp]);
}

#[test]
fn keep_alive_timeout_sends_disconnect_0x8d() {
    let net = Net::new();
    let mut client = with_keep_alive(&net, V5, "ka5", 1);
    net.advance(1500);
    assert_eq!(client.disconnect_reason(), ReasonCode::KeepAliveTimeout);
}

#[test]
fn server_keep_alive_caps_the_keep_alive_mqtt_3_2_2_21() {
    let net = Net::with_config(BrokerConfig {
        max_keep_alive: 1,
        ..BrokerConfig::default()
    });
    let mut connect = connect_packet(V5, "ska");
    connect.keep_alive = 600;
    let (mut client, connack) = net.connect(connect);
    assert_eq!(connack.properties.server_keep_alive, Some(1));
    // The broker holds the client to the keep-alive it gave, not the one asked.
    net.advance(1499);
    assert!(!client.is_closed());
    net.advance(1);
    assert_eq!(client.disconnect_reason(), ReasonCode::KeepAliveTimeout);

    let (_client, connack) = net.connect(connect_packet(V5, "ska0"));
    assert_eq!(
        connack.properties.server_keep_alive,
        Some(1),
        "0 is replaced too"
    );
}

#[test]
fn keep_alive_within_the_maximum_is_granted_as_asked() {
    let net = Net::with_config(BrokerConfig {
        max_keep_alive: 60,
        ..BrokerConfig::default()
    });
    let mut connect = connect_packet(V5, "ska-ok");
    connect.keep_alive = 30;
    let (mut client, connack) = net.connect(connect);
    assert_eq!(connack.properties.server_keep_alive, None);
    net.advance(44_999);
    assert!(!client.is_closed());
    net.advance(1);
    assert_eq!(client.disconnect_reason(), ReasonCode::KeepAliveTimeout);
}
