//! SUBSCRIBE and UNSUBSCRIBE (sections 3.8-3.11), topic matching (4.7) and shared
//! subscriptions (4.8.2). The MQTT 5 subscription options, identifiers and reason codes are in
//! `mqtt5_subscribe.rs`.

mod common;

use bytes::Bytes;
use common::*;
use tern_broker::{BrokerConfig, Message};
use tern_codec::{MqttStr, Packet, QoS, ReasonCode, UnsubAck, Unsubscribe};

#[test]
fn single_and_multi_level_wildcards_match_mqtt_4_7_1() {
    let net = Net::new();
    let mut plus = net.connected(V311, "wild-plus");
    plus.subscribe("home/+/temp", QoS::AtLeastOnce);
    let mut hash = net.connected(V311, "wild-hash");
    hash.subscribe("home/#", QoS::AtLeastOnce);
    let mut publisher = net.connected(V311, "wild-pub");
    for (topic, payload) in [
        ("home/kitchen/temp", "1"),
        ("home/kitchen/humidity", "2"),
        ("home", "3"),
        ("office/kitchen/temp", "4"),
        ("home/kitchen/temp/x", "5"),
    ] {
        publisher.publish(topic, QoS::AtLeastOnce, payload.as_bytes());
    }
    assert_eq!(plus.payloads(), ["1"]);
    // "#" also matches the parent level itself [MQTT-4.7.1-2].
    assert_eq!(hash.payloads(), ["1", "2", "3", "5"]);
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards_mqtt_4_7_2_1() {
    let net = Net::new();
    let mut everything = net.connected(V311, "dollar-hash");
    everything.subscribe("#", QoS::AtMostOnce);
    let mut plus = net.connected(V311, "dollar-plus");
    plus.subscribe("+/info", QoS::AtMostOnce);
    let mut sys = net.connected(V311, "dollar-sys");
    sys.subscribe("$SYS/#", QoS::AtMostOnce);
    // Clients may not publish to `$` topics; the broker itself may.
    let message = Message {
        cluster_id: None,
        topic: MqttStr::from_static("$SYS/info"),
        payload: Bytes::from_static(b"uptime"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: None,
        expires_at: None,
        publisher: None,
        id: 0,
    };
    net.broker.publish(message, net.now());
    assert_eq!(sys.payloads(), ["uptime"]);
    everything.nothing();
    plus.nothing();
}

#[test]
fn clients_cannot_publish_to_dollar_topics() {
    let net = Net::new();
    let mut subscriber = net.connected(V311, "dollar-sub");
    subscriber.subscribe("$SYS/#", QoS::AtLeastOnce);
    let mut publisher = net.connected(V311, "dollar-pub");
    let packet_id = publisher.publish("$SYS/fake", QoS::AtLeastOnce, b"x");
    // 3.1.1 cannot refuse: the PUBLISH is acknowledged and dropped.
    assert_eq!(publisher.received(), [ack(Packet::PubAck, packet_id)]);
    subscriber.nothing();
    assert!(!publisher.is_closed());
}

#[test]
fn suback_has_one_code_per_filter_in_order_mqtt_3_8_4_5() {
    let net = Net::with_config(BrokerConfig {
        max_topic_levels: 3,
        max_qos: QoS::AtLeastOnce,
        ..BrokerConfig::default()
    });
    let mut client = net.connected(V311, "codes");
    client.send(subscribe_packet(
        1,
        &[
            ("a/b", QoS::ExactlyOnce),
            ("a/b/c/d", QoS::AtMostOnce),
            ("x/#", QoS::AtMostOnce),
        ],
    ));
    let Some(Packet::SubAck(suback)) = client.next() else {
        panic!("expected SUBACK")
    };
    // QoS 2 asked, QoS 1 granted (the configured maximum) [MQTT-3.8.4-6]; four levels refused
    // with 0x80 [MQTT-3.9.3-2]; the last one granted as asked.
    assert_eq!(suback.packet_id, 1);
    assert_eq!(
        suback.reason_codes,
        [
            ReasonCode::GrantedQos1,
            ReasonCode::UnspecifiedError,
            ReasonCode::GRANTED_QOS_0
        ]
    );
}

#[test]
fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos_mqtt_3_3_5_1() {
    let net = Net::new();
    let mut client = net.connected(V311, "overlap");
    client.subscribe("ov/+", QoS::AtMostOnce);
    client.subscribe("ov/#", QoS::ExactlyOnce);
    client.subscribe("ov/x", QoS::AtLeastOnce);
    let mut publisher = net.connected(V311, "overlap-pub");
    publisher.publish("ov/x", QoS::ExactlyOnce, b"one");
    let publish = client.publish_received();
    assert_eq!(publish.qos, QoS::ExactlyOnce);
}

#[test]
fn resubscribing_replaces_the_subscription_and_resends_retained_mqtt_3_8_4_3() {
    let net = Net::new();
    let mut publisher = net.connected(V311, "resub-pub");
    publisher.publish_with(retained("resub/t", QoS::ExactlyOnce, b"kept"));
    let mut client = net.connected(V311, "resub");
    client.subscribe("resub/t", QoS::AtMostOnce);
    let first = client.publish_received();
    assert!(first.retain);
    assert_eq!(first.qos, QoS::AtMostOnce);
    client.subscribe("resub/t", QoS::ExactlyOnce);
    let again = client.publish_received();
    assert!(again.retain);
    assert_eq!(
        again.qos,
        QoS::ExactlyOnce,
        "the new subscription's QoS applies"
    );
    client.ack(&again);
    client.received();
    client.send(ack(Packet::PubComp, again.packet_id));
    // One subscription, not two: a message arrives once.
    publisher.publish("resub/t", QoS::AtLeastOnce, b"live");
    assert_eq!(client.payloads(), ["live"]);
    assert_eq!(net.broker.subscription_count(), 1);
}

#[test]
fn unsubscribe_stops_delivery_and_unsuback_is_always_sent_mqtt_3_10_4_5() {
    let net = Net::new();
    let mut client = net.connected(V311, "unsub");
    client.subscribe("unsub/t", QoS::AtMostOnce);
    let unsubscribe = |packet_id, filter: &str| {
        Packet::Unsubscribe(Unsubscribe {
            packet_id,
            properties: Default::default(),
            filters: vec![text(filter)],
        })
    };
    let expected = |packet_id| {
        Packet::UnsubAck(UnsubAck {
            packet_id,
            properties: Default::default(),
            reason_codes: vec![],
        })
    };
    client.send(unsubscribe(2, "unsub/t"));
    assert_eq!(client.received(), [expected(2)]);
    // Nothing subscribed to that filter: UNSUBACK all the same.
    client.send(unsubscribe(3, "never/subscribed"));
    assert_eq!(client.received(), [expected(3)]);
    let mut publisher = net.connected(V311, "unsub-pub");
    publisher.publish("unsub/t", QoS::AtMostOnce, b"x");
    client.nothing();
    assert_eq!(net.broker.subscription_count(), 0);
}

#[test]
fn shared_subscription_gives_each_message_to_one_member_mqtt_4_8_2() {
    let net = Net::new();
    let mut a = net.connected(V311, "share-a");
    let mut b = net.connected(V311, "share-b");
    a.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce);
    b.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce);
    let mut publisher = net.connected(V311, "share-pub");
    for n in 0..10u8 {
        publisher.publish("jobs/new", QoS::AtLeastOnce, &[n]);
    }
    let by_a: Vec<u8> = a.payloads().iter().map(|p| p[0]).collect();
    let by_b: Vec<u8> = b.payloads().iter().map(|p| p[0]).collect();
    assert_eq!((by_a.len(), by_b.len()), (5, 5), "{by_a:?} {by_b:?}");
    let mut seen = [by_a, by_b].concat();
    seen.sort();
    assert_eq!(seen, (0..10).collect::<Vec<u8>>(), "each one once");
}

#[test]
fn shared_subscription_member_that_leaves_hands_over_its_messages() {
    let net = Net::new();
    // Member A takes messages but never acknowledges them.
    let mut a = net.connected(V5, "share-a5");
    a.subscribe("$share/g/work", QoS::AtLeastOnce);
    let mut b = net.connected(V5, "share-b5");
    b.subscribe("$share/g/work", QoS::AtLeastOnce);
    let mut publisher = net.connected(V5, "share-pub5");
    for n in 0..4u8 {
        publisher.publish("work", QoS::AtLeastOnce, &[n]);
    }
    let got_by_a = a.payloads();
    assert_eq!(got_by_a.len(), 2);
    let mut got_by_b: Vec<u8> = b.payloads().iter().map(|p| p[0]).collect();
    assert_eq!(got_by_b.len(), 2);
    // A leaves without acknowledging: its two messages go to B.
    drop(a);
    got_by_b.extend(b.payloads().iter().map(|p| p[0]));
    got_by_b.sort();
    assert_eq!(got_by_b, [0, 1, 2, 3]);
}

#[test]
fn subscribe_with_invalid_filter_closes_the_connection_mqtt_4_7_1_2() {
    let net = Net::new();
    let mut client = net.connected(V311, "bad-filter");
    // "a/b#" has '#' not as a whole level: malformed, so the connection is closed.
    client.send_bytes(&[
        0x82, 0x09, 0x00, 0x01, 0x00, 0x04, b'a', b'/', b'b', b'#', 0x00,
    ]);
    client.closed_silently();
    assert_eq!(net.broker.subscription_count(), 0);
}
