//! `$` topics are the broker's [MQTT-4.7.2-1]: by default no client may publish into one, but
//! the rule is the authorizer's, so access rules can open a given `$` topic like any other.

mod common;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::{Quiet, connect, text, transmit};
use tern_broker::{Authorizer, Broker, BrokerConfig, ClientInfo, Connection, Hooks};
use tern_codec::{
    Connect, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe, Subscription,
    SubscriptionOptions, Will,
};

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

fn subscribe(conn: &mut Connection, filter: &str, now: Instant) {
    conn.handle_packet(
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: text(filter),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            }],
        }),
        now,
    );
    transmit(conn, now);
}

fn publish(conn: &mut Connection, topic: &str, now: Instant) -> Vec<Packet> {
    conn.handle_packet(
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: text(topic),
            packet_id: 7,
            properties: Properties::default(),
            payload: Bytes::from_static(b"v"),
        }),
        now,
    );
    transmit(conn, now)
}

fn topics(packets: &[Packet]) -> Vec<String> {
    packets
        .iter()
        .filter_map(|packet| match packet {
            Packet::Publish(publish) => Some(publish.topic.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_default_authorizer_refuses_publishing_to_dollar_topics() {
    let broker = Broker::new(BrokerConfig::default());
    let now = Instant::now();
    let mut subscriber = connect(&broker, "sub", true, now);
    subscribe(&mut subscriber, "$SYS/#", now);
    let mut publisher = connect(&broker, "pub", true, now);
    // 3.1.1 has no refusal code for PUBLISH: acknowledged, and not forwarded.
    let answer = publish(&mut publisher, "$SYS/broker/uptime", now);
    assert!(matches!(answer.as_slice(), [Packet::PubAck(ack)] if ack.packet_id == 7));
    assert!(topics(&transmit(&mut subscriber, now)).is_empty());
}

#[test]
fn an_authorizer_can_open_a_dollar_topic_to_clients() {
    let hooks = Hooks {
        authorizer: Arc::new(OpensApp),
        ..Hooks::default()
    };
    let broker = Broker::with_hooks(BrokerConfig::default(), hooks);
    let now = Instant::now();
    let mut subscriber = connect(&broker, "sub", true, now);
    subscribe(&mut subscriber, "$app/#", now);
    subscribe(&mut subscriber, "$SYS/#", now);
    let mut publisher = connect(&broker, "pub", true, now);
    publish(&mut publisher, "$app/config", now);
    publish(&mut publisher, "$SYS/forged", now);
    assert_eq!(topics(&transmit(&mut subscriber, now)), ["$app/config"]);
}

#[test]
fn a_will_on_a_dollar_topic_follows_the_authorizer() {
    let will_connect = |topic: &str| {
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: text("willing"),
            will: Some(Will {
                topic: text(topic),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Properties::default(),
            }),
            username: None,
            password: None,
        }))
    };
    let now = Instant::now();
    // Refused by default: CONNACK 0x05 (not authorized) in 3.1.1.
    let broker = Broker::new(BrokerConfig::default());
    let mut conn = Connection::new(broker, Arc::new(Quiet), None, now);
    conn.handle_packet(will_connect("$app/status"), now);
    let answer = transmit(&mut conn, now);
    assert!(matches!(answer.as_slice(), [Packet::ConnAck(ack)] if ack.reason_code.is_error()));

    let hooks = Hooks {
        authorizer: Arc::new(OpensApp),
        ..Hooks::default()
    };
    let broker = Broker::with_hooks(BrokerConfig::default(), hooks);
    let mut subscriber = connect(&broker, "sub", true, now);
    subscribe(&mut subscriber, "$app/#", now);
    let mut conn = Connection::new(broker, Arc::new(Quiet), None, now);
    conn.handle_packet(will_connect("$app/status"), now);
    let answer = transmit(&mut conn, now);
    assert!(matches!(answer.as_slice(), [Packet::ConnAck(ack)] if !ack.reason_code.is_error()));
    conn.handle_transport_closed(now);
    assert_eq!(topics(&transmit(&mut subscriber, now)), ["$app/status"]);
}
