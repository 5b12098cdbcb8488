//! Retained messages (section 3.3.1.3, rules MQTT-3.3.1-5 to -13): kept per topic, replaced,
//! deleted by an empty payload, sent to new subscriptions with RETAIN set; MQTT 5's Retain
//! Handling and Retain As Published; the limits on retained messages.

mod common;

use common::*;
use tern_broker::BrokerConfig;
use tern_codec::{Packet, Properties, QoS, ReasonCode, RetainHandling, SubscriptionOptions};

#[test]
fn retained_message_is_stored_and_sent_to_new_subscriptions_with_retain_set_mqtt_3_3_1_5_and_8() {
    let net = Net::new();
    let mut publisher = net.connected(V311, "ret-pub");
    publisher.publish_with(retained("ret/a", QoS::AtLeastOnce, b"stored"));
    publisher.publish_with(retained("ret/b", QoS::ExactlyOnce, b"also"));
    assert_eq!(net.broker.retained_count(), 2);
    let mut subscriber = net.connected(V311, "ret-sub");
    subscriber.subscribe("ret/+", QoS::ExactlyOnce);
    let mut got = subscriber.publishes();
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(got.len(), 2);
    assert!(
        got.iter().all(|publish| publish.retain),
        "RETAIN is 1 for a new subscription [MQTT-3.3.1-8]"
    );
    assert_eq!(
        (&got[0].topic[..], &got[0].payload[..], got[0].qos),
        ("ret/a", &b"stored"[..], QoS::AtLeastOnce),
        "stored with its QoS"
    );
    assert_eq!(
        (&got[1].topic[..], &got[1].payload[..], got[1].qos),
        ("ret/b", &b"also"[..], QoS::ExactlyOnce)
    );
}

#[test]
fn forwarded_messages_to_existing_subscriptions_have_retain_0_mqtt_3_3_1_9() {
    let net = Net::new();
    let mut subscriber = net.connected(V311, "ret0-sub");
    subscriber.subscribe("ret0/t", QoS::AtLeastOnce);
    let mut publisher = net.connected(V311, "ret0-pub");
    publisher.publish_with(retained("ret0/t", QoS::AtLeastOnce, b"live"));
    let publish = subscriber.publish_received();
    assert!(!publish.retain);
    assert_eq!(net.broker.retained_count(), 1);
}

#[test]
fn newer_retained_message_replaces_the_old_one_mqtt_3_3_1_7() {
    let net = Net::new();
    let mut publisher = net.connected(V311, "ret-replace");
    publisher.publish_with(retained("ret/replace", QoS::AtLeastOnce, b"old"));
    publisher.publish_with(retained("ret/replace", QoS::AtMostOnce, b"new"));
    let mut subscriber = net.connected(V311, "ret-replace-sub");
    subscriber.subscribe("ret/replace", QoS::AtLeastOnce);
    let publish = subscriber.publish_received();
    assert_eq!(&publish.payload[..], b"new");
    assert_eq!(publish.qos, QoS::AtMostOnce);
    assert_eq!(net.broker.retained_count(), 1);
}

#[test]
fn empty_retained_payload_deletes_and_is_forwarded_mqtt_3_3_1_10_and_11() {
    let net = Net::new();
    let mut live = net.connected(V311, "ret-del-live");
    live.subscribe("ret/del", QoS::AtLeastOnce);
    let mut publisher = net.connected(V311, "ret-del");
    publisher.publish_with(retained("ret/del", QoS::AtLeastOnce, b"x"));
    publisher.publish_with(retained("ret/del", QoS::AtLeastOnce, b""));
    // The zero-byte message is processed as normal and sent to existing subscribers.
    assert_eq!(live.payloads(), [&b"x"[..], &b""[..]]);
    assert_eq!(net.broker.retained_count(), 0, "not stored [MQTT-3.3.1-11]");
    let mut late = net.connected(V311, "ret-del-late");
    late.subscribe("ret/del", QoS::AtLeastOnce);
    late.nothing();
}

#[test]
fn publish_without_retain_leaves_the_retained_message_mqtt_3_3_1_12() {
    let net = Net::new();
    let mut publisher = net.connected(V311, "ret-keep");
    publisher.publish_with(retained("ret/keep", QoS::AtLeastOnce, b"kept"));
    publisher.publish("ret/keep", QoS::AtLeastOnce, b"not retained");
    let mut subscriber = net.connected(V311, "ret-keep-sub");
    subscriber.subscribe("ret/keep", QoS::AtLeastOnce);
    assert_eq!(subscriber.payloads(), ["kept"]);
}

#[test]
fn wildcard_subscription_gets_every_matching_retained_message() {
    let net = Net::new();
    let mut publisher = net.connected(V311, "ret-wild");
    for topic in ["w/1", "w/2/a", "w/3/b/c", "other/x"] {
        publisher.publish_with(retained(topic, QoS::AtLeastOnce, topic.as_bytes()));
    }
    let mut subscriber = net.connected(V311, "ret-wild-sub");
    subscriber.subscribe("w/#", QoS::AtLeastOnce);
    let mut topics: Vec<String> = subscriber
        .publishes()
        .iter()
        .map(|publish| publish.topic.to_string())
        .collect();
    topics.sort();
    assert_eq!(topics, ["w/1", "w/2/a", "w/3/b/c"]);
}

#[test]
fn retain_as_published_keeps_the_flag_mqtt_3_3_1_12() {
    let net = Net::new();
    let mut keep = net.connected(V5, "rap-keep");
    keep.subscribe_with(
        "rap/t",
        SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            retain_as_published: true,
            ..SubscriptionOptions::default()
        },
        Properties::default(),
    );
    let mut clear = net.connected(V5, "rap-clear");
    clear.subscribe("rap/t", QoS::AtLeastOnce);
    let mut publisher = net.connected(V5, "rap-pub");
    publisher.publish_with(retained("rap/t", QoS::AtLeastOnce, b"r"));
    assert!(keep.publish_received().retain);
    assert!(!clear.publish_received().retain);
}

#[test]
fn retain_handling_0_1_2_mqtt_3_3_1_9_to_11() {
    let net = Net::new();
    let mut publisher = net.connected(V5, "rh-pub");
    publisher.publish_with(retained("rh/t", QoS::AtLeastOnce, b"kept"));
    let options = |retain_handling| SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        retain_handling,
        ..SubscriptionOptions::default()
    };
    let none = Properties::default;
    // 0: on every subscribe.
    let mut every = net.connected(V5, "rh-0");
    for _ in 0..2 {
        every.subscribe_with("rh/t", options(RetainHandling::SendAtSubscribe), none());
        assert!(every.publish_received().retain);
    }
    // 1: only when the subscription is new.
    let mut new_only = net.connected(V5, "rh-1");
    new_only.subscribe_with(
        "rh/t",
        options(RetainHandling::SendAtSubscribeIfNew),
        none(),
    );
    assert!(new_only.publish_received().retain);
    new_only.subscribe_with(
        "rh/t",
        options(RetainHandling::SendAtSubscribeIfNew),
        none(),
    );
    new_only.nothing();
    // 2: never.
    let mut never = net.connected(V5, "rh-2");
    never.subscribe_with("rh/t", options(RetainHandling::DoNotSend), none());
    never.nothing();
}

fn retain(client: &mut Client, topic: &str, payload: &[u8]) -> ReasonCode {
    let packet_id = client.publish_with(retained(topic, QoS::AtLeastOnce, payload));
    match client.received()[..] {
        [Packet::PubAck(ref ack)] if ack.packet_id == packet_id => ack.reason_code,
        ref other => panic!("expected PUBACK {packet_id}, got {other:?}"),
    }
}

/// The retained payload bytes limit: a retained message that would take the total past it is
/// refused with Quota exceeded (0x97) and not stored; replacing a topic's message counts the
/// old payload out [MQTT-3.3.1-5] (the broker stores what it accepts, and only that).
#[test]
fn retained_bytes_limit_answers_quota_exceeded() {
    let net = Net::with_config(BrokerConfig {
        max_retained_bytes: 10,
        ..BrokerConfig::default()
    });
    let mut client = net.connected(V5, "bytes5");
    let stored = ReasonCode::NoMatchingSubscribers;
    assert_eq!(retain(&mut client, "bytes/a", b"123456"), stored);
    assert_eq!(
        retain(&mut client, "bytes/b", b"12345"),
        ReasonCode::QuotaExceeded
    );
    // Replacing bytes/a's six bytes with ten fits: the old payload no longer counts.
    assert_eq!(retain(&mut client, "bytes/a", b"1234567890"), stored);
    // Deleting it (an empty retained payload) is always allowed and frees the room.
    assert_eq!(retain(&mut client, "bytes/a", b""), stored);
    assert_eq!(retain(&mut client, "bytes/b", b"12345"), stored);
    let mut subscriber = net.connected(V5, "bytes5-sub");
    subscriber.subscribe("bytes/#", QoS::AtLeastOnce);
    let retained = subscriber.publish_received();
    assert_eq!(
        (&retained.topic[..], &retained.payload[..]),
        ("bytes/b", &b"12345"[..])
    );
}

#[test]
fn retained_messages_limit_answers_quota_exceeded() {
    let net = Net::with_config(BrokerConfig {
        max_retained_messages: 1,
        ..BrokerConfig::default()
    });
    let mut client = net.connected(V5, "count5");
    let stored = ReasonCode::NoMatchingSubscribers;
    assert_eq!(retain(&mut client, "quota/1", b"x"), stored);
    assert_eq!(
        retain(&mut client, "quota/2", b"x"),
        ReasonCode::QuotaExceeded
    );
    // Replacing the one kept is not a new one.
    assert_eq!(retain(&mut client, "quota/1", b"y"), stored);
    assert_eq!(net.broker.retained_count(), 1);
}
