//! `$` topics are the broker's [MQTT-4.7.2-1]: by default no client may publish into one, but
//! the rule is the authorizer's, so access rules can open a given `$` topic like any other.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::text;
use common::{Net, V311, connect_packet};
use tern_broker::{Authorizer, BrokerConfig, ClientInfo, Hooks};
use tern_codec::{Packet, Properties, QoS, Will};

/// Opens `$app/...` to clients, and nothing else of the `$` space.
struct OpensApp;

impl Authorizer for OpensApp {
    fn may_publish(&self, _: &ClientInfo, topic: &str) -> bool {
        !topic.starts_with('$') || topic.starts_with("$app/")
    }

    fn may_subscribe(&self, _: &ClientInfo, _: &str) -> bool {
        true
    }
}

fn opens_app() -> Net {
    let hooks = Hooks {
        authorizer: Arc::new(OpensApp),
        ..Hooks::default()
    };
    Net::with_hooks(BrokerConfig::default(), hooks)
}

fn topics(packets: Vec<tern_codec::Publish>) -> Vec<String> {
    packets.iter().map(|p| p.topic.to_string()).collect()
}

#[test]
fn the_default_authorizer_refuses_publishing_to_dollar_topics() {
    let net = Net::new();
    let mut subscriber = net.connected(V311, "sub");
    subscriber.subscribe("$SYS/#", QoS::AtLeastOnce);
    let mut publisher = net.connected(V311, "pub");
    let id = publisher.publish("$SYS/broker/uptime", QoS::AtLeastOnce, b"v");
    // 3.1.1 has no refusal code for PUBLISH: acknowledged, and not forwarded.
    assert!(
        matches!(publisher.received().as_slice(), [Packet::PubAck(ack)] if ack.packet_id == id)
    );
    assert!(subscriber.publishes().is_empty());
}

#[test]
fn an_authorizer_can_open_a_dollar_topic_to_clients() {
    let net = opens_app();
    let mut subscriber = net.connected(V311, "sub");
    subscriber.subscribe("$app/#", QoS::AtLeastOnce);
    subscriber.subscribe("$SYS/#", QoS::AtLeastOnce);
    let mut publisher = net.connected(V311, "pub");
    publisher.publish("$app/config", QoS::AtLeastOnce, b"v");
    publisher.publish("$SYS/forged", QoS::AtLeastOnce, b"v");
    assert_eq!(topics(subscriber.publishes()), ["$app/config"]);
}

#[test]
fn a_will_on_a_dollar_topic_follows_the_authorizer() {
    let willing = || {
        let mut connect = connect_packet(V311, "willing");
        connect.will = Some(Will {
            topic: text("$app/status"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        });
        connect
    };
    // Refused by default: CONNACK 0x05 (not authorized) in 3.1.1.
    let (_, connack) = Net::new().connect(willing());
    assert!(connack.reason_code.is_error());

    let net = opens_app();
    let mut subscriber = net.connected(V311, "sub");
    subscriber.subscribe("$app/#", QoS::AtMostOnce);
    let client = net.accepted(willing());
    // Lost without DISCONNECT: the will goes out.
    drop(client);
    assert_eq!(topics(subscriber.publishes()), ["$app/status"]);
}
