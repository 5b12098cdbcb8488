//! MQTT 5 SUBSCRIBE and UNSUBSCRIBE (sections 3.8-3.11): No Local, Subscription Identifiers,
//! and every SUBACK, UNSUBACK and PUBACK reason code the authoriser and the limits give.
//! (Retain Handling and Retain As Published are in `retained.rs`.)

mod common;

use std::sync::Arc;

use common::*;
use tern_broker::{Authorizer, BrokerConfig, ClientInfo, Hooks};
use tern_codec::{
    Packet, Properties, QoS, ReasonCode, Subscribe, Subscription, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};

/// Forbids every topic under `forbidden/`.
struct DenyForbidden;

impl Authorizer for DenyForbidden {
    fn may_publish(&self, _: &ClientInfo, topic: &str) -> bool {
        !topic.starts_with("forbidden/")
    }

    fn may_subscribe(&self, _: &ClientInfo, filter: &str) -> bool {
        !filter.starts_with("forbidden/")
    }
}

fn denying(config: BrokerConfig) -> Net {
    let hooks = Hooks {
        authorizer: Arc::new(DenyForbidden),
        ..Hooks::default()
    };
    Net::with_hooks(config, hooks)
}

fn subscribe_all(packet_id: u16, filters: &[(&str, QoS)], properties: Properties) -> Packet {
    let Packet::Subscribe(subscribe) = subscribe_packet(packet_id, filters) else {
        unreachable!()
    };
    Packet::Subscribe(Subscribe {
        properties,
        ..subscribe
    })
}

fn suback_codes(client: &mut Client) -> Vec<ReasonCode> {
    match client.next() {
        Some(Packet::SubAck(suback)) => suback.reason_codes,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[test]
fn no_local_keeps_own_messages_away_mqtt_3_8_3_3() {
    let net = Net::new();
    let mut client = net.connected(V5, "nolocal");
    client.subscribe_with(
        "nl/t",
        SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            ..SubscriptionOptions::default()
        },
        Properties::default(),
    );
    let mut other = net.connected(V5, "nolocal-other");
    other.subscribe("nl/t", QoS::AtLeastOnce);
    let packet_id = client.publish("nl/t", QoS::AtLeastOnce, b"mine");
    assert_eq!(other.payloads(), ["mine"]);
    // Only the PUBACK; routed to the other subscriber, so no 0x10.
    assert_eq!(client.received(), [ack(Packet::PubAck, packet_id)]);
    // Someone else's message on the same subscription arrives.
    other.publish("nl/t", QoS::AtLeastOnce, b"theirs");
    assert_eq!(client.payloads(), ["theirs"]);
}

#[test]
fn subscription_identifiers_come_back_on_delivery_mqtt_3_3_4_3() {
    let net = Net::new();
    let mut client = net.connected(V5, "subid");
    for (filter, id) in [("sid/+", 7), ("sid/#", 9)] {
        let properties = Properties {
            subscription_identifiers: vec![id],
            ..Properties::default()
        };
        client.subscribe_with(
            filter,
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            },
            properties,
        );
    }
    let mut publisher = net.connected(V5, "subid-pub");
    publisher.publish("sid/x", QoS::AtLeastOnce, b"both");
    publisher.publish("sid/x/y", QoS::AtLeastOnce, b"one");
    let publishes = client.publishes();
    assert_eq!(publishes.len(), 2, "one copy per message");
    let mut ids = publishes[0].properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, [7, 9], "one copy with both identifiers [MQTT-3.3.4-4]");
    assert_eq!(publishes[1].properties.subscription_identifiers, [9]);
}

#[test]
fn suback_reason_codes_0x87_0x8f_0x97_0x9e_0xa1_0xa2() {
    let net = denying(BrokerConfig {
        max_topic_levels: 4,
        max_subscriptions_per_session: 2,
        ..BrokerConfig::default()
    });
    let mut client = net.connected(V5, "suback-codes");
    client.send(subscribe_packet(
        1,
        &[
            ("ok/1", QoS::ExactlyOnce),
            ("forbidden/x", QoS::AtMostOnce),
            ("a/b/c/d/e", QoS::AtMostOnce),
            ("ok/2", QoS::AtLeastOnce),
            ("ok/3", QoS::AtMostOnce),
        ],
    ));
    assert_eq!(
        suback_codes(&mut client),
        [
            ReasonCode::GrantedQos2,
            ReasonCode::NotAuthorized,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::GrantedQos1,
            ReasonCode::QuotaExceeded,
        ]
    );

    let net = Net::with_config(BrokerConfig {
        shared_subscriptions: false,
        wildcard_subscriptions: false,
        subscription_identifiers: false,
        ..BrokerConfig::default()
    });
    let mut client = net.connected(V5, "suback-off");
    client.send(subscribe_packet(
        1,
        &[("$share/g/t", QoS::AtMostOnce), ("w/+", QoS::AtMostOnce)],
    ));
    assert_eq!(
        suback_codes(&mut client),
        [
            ReasonCode::SharedSubscriptionsNotSupported,
            ReasonCode::WildcardSubscriptionsNotSupported
        ]
    );
    let with_id = Properties {
        subscription_identifiers: vec![3],
        ..Properties::default()
    };
    client.send(subscribe_all(2, &[("plain", QoS::AtMostOnce)], with_id));
    assert_eq!(
        suback_codes(&mut client),
        [ReasonCode::SubscriptionIdentifiersNotSupported]
    );
    assert_eq!(net.broker.subscription_count(), 0);
}

#[test]
fn unsuback_reason_codes_0x00_0x11_0x87_0x8f() {
    let net = denying(BrokerConfig {
        max_topic_levels: 3,
        ..BrokerConfig::default()
    });
    let mut client = net.connected(V5, "unsuback5");
    client.subscribe("u/t", QoS::AtMostOnce);
    client.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        properties: Default::default(),
        filters: vec![
            text("u/t"),
            text("never"),
            text("forbidden/x"),
            text("a/b/c/d"),
        ],
    }));
    let Some(Packet::UnsubAck(UnsubAck {
        packet_id,
        reason_codes,
        ..
    })) = client.next()
    else {
        panic!("expected UNSUBACK")
    };
    assert_eq!(packet_id, 2);
    assert_eq!(
        reason_codes,
        [
            ReasonCode::Success,
            ReasonCode::NoSubscriptionExisted,
            ReasonCode::NotAuthorized,
            ReasonCode::TopicFilterInvalid,
        ]
    );
}

#[test]
fn publish_not_authorized_gets_0x87() {
    let net = denying(BrokerConfig::default());
    let mut watcher = net.connected(V5, "pub-denied-watch");
    watcher.subscribe("#", QoS::AtLeastOnce);
    let mut client = net.connected(V5, "pub-denied");
    let packet_id = client.publish("forbidden/t", QoS::AtLeastOnce, b"x");
    let Some(Packet::PubAck(ack)) = client.next() else {
        panic!("expected PUBACK")
    };
    assert_eq!(
        (ack.packet_id, ack.reason_code),
        (packet_id, ReasonCode::NotAuthorized)
    );
    watcher.nothing();
}

#[test]
fn a_refused_subscription_is_not_added() {
    let net = denying(BrokerConfig::default());
    let mut client = net.connected(V5, "sub-denied");
    client.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        subscriptions: vec![Subscription {
            filter: text("forbidden/#"),
            options: SubscriptionOptions::default(),
        }],
    }));
    assert_eq!(suback_codes(&mut client), [ReasonCode::NotAuthorized]);
    assert_eq!(net.broker.subscription_count(), 0);
    net.broker.publish(
        tern_broker::Message {
            cluster_id: None,
            topic: tern_codec::MqttStr::from_static("forbidden/x"),
            payload: bytes::Bytes::from_static(b"secret"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: None,
            expires_at: None,
            publisher: None,
            id: 0,
        },
        net.now(),
    );
    client.nothing();
}
