//! MQTT 5 PUBLISH (section 3.3): properties passed through, Message Expiry on the fake clock,
//! topic aliases both ways, the client's Maximum Packet Size, PUBACK reason codes, problem
//! information, and messages crossing between 3.1.1 and 5 clients.

mod common;

use bytes::Bytes;
use common::*;
use tern_broker::BrokerConfig;
use tern_codec::{Packet, Properties, QoS, ReasonCode};

fn puback_reason(client: &mut Client, packet_id: u16) -> ReasonCode {
    match client.received()[..] {
        [Packet::PubAck(ref ack)] if ack.packet_id == packet_id => ack.reason_code,
        ref other => panic!("expected PUBACK {packet_id}, got {other:?}"),
    }
}

fn message_properties() -> Properties {
    Properties {
        payload_format_indicator: Some(true),
        content_type: Some(text("text/plain")),
        response_topic: Some(text("props/reply")),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![
            (text("b"), text("2")),
            (text("a"), text("1")),
            (text("b"), text("3")),
        ],
        ..Properties::default()
    }
}

#[test]
fn message_properties_pass_through_in_order_mqtt_3_3_2() {
    let net = Net::new();
    let mut subscriber = net.connected(V5, "props-sub");
    subscriber.subscribe("props/t", QoS::AtLeastOnce);
    let mut publisher = net.connected(V5, "props-pub");
    let mut publish = publish_packet("props/t", QoS::AtLeastOnce, "héllo".as_bytes());
    publish.properties = message_properties();
    publisher.publish_with(publish);
    let got = subscriber.publish_received();
    assert_eq!(
        got.properties,
        message_properties(),
        "every property, user properties in order [MQTT-3.3.2-17, MQTT-3.3.2-18]"
    );
    assert_eq!(&got.payload[..], "héllo".as_bytes());
}

#[test]
fn expired_messages_are_not_delivered_mqtt_3_3_2_5() {
    let net = Net::new();
    let mut subscriber = net.accepted(persistent(V5, "expiry-sub"));
    subscriber.subscribe("expiry/t", QoS::AtLeastOnce);
    subscriber.disconnect();
    let mut publisher = net.connected(V5, "expiry-pub");
    for (payload, seconds) in [(&b"short"[..], 1), (b"long", 100)] {
        let mut publish = publish_packet("expiry/t", QoS::AtLeastOnce, payload);
        publish.properties.message_expiry_interval = Some(seconds);
        publisher.publish_with(publish);
    }
    net.advance(2100);
    let (mut subscriber, connack) = net.connect(persistent(V5, "expiry-sub"));
    assert!(connack.session_present);
    let publish = subscriber.publish_received();
    assert_eq!(&publish.payload[..], b"long", "the expired one is dropped");
    // Forwarded with the time it has left, rounded up: 97.9 s [MQTT-3.3.2-6].
    assert_eq!(publish.properties.message_expiry_interval, Some(98));
}

#[test]
fn a_message_expires_at_its_interval_and_not_before_mqtt_3_3_2_5() {
    let net = Net::new();
    let mut subscriber = net.accepted(persistent(V5, "edge-sub"));
    subscriber.subscribe("edge/t", QoS::AtLeastOnce);
    subscriber.disconnect();
    let mut publisher = net.connected(V5, "edge-pub");
    let mut publish = publish_packet("edge/t", QoS::AtLeastOnce, b"edge");
    publish.properties.message_expiry_interval = Some(1);
    publisher.publish_with(publish.clone());
    net.advance(999);
    let (mut subscriber, _) = net.connect(persistent(V5, "edge-sub"));
    let got = subscriber.publish_received();
    assert_eq!(got.properties.message_expiry_interval, Some(1), "1 ms left");
    subscriber.ack(&got);
    subscriber.disconnect();

    publisher.publish_with(publish);
    net.advance(1000);
    let (mut subscriber, _) = net.connect(persistent(V5, "edge-sub"));
    subscriber.nothing();
}

#[test]
fn an_expired_retained_message_is_not_sent_to_new_subscriptions_mqtt_3_3_2_5() {
    let net = Net::new();
    let mut publisher = net.connected(V5, "ret-exp-pub");
    let mut publish = retained("ret-exp/t", QoS::AtLeastOnce, b"soon gone");
    publish.properties.message_expiry_interval = Some(5);
    publisher.publish_with(publish);
    net.advance(4000);
    let mut early = net.connected(V5, "ret-exp-early");
    early.subscribe("ret-exp/t", QoS::AtLeastOnce);
    let got = early.publish_received();
    assert_eq!(got.properties.message_expiry_interval, Some(1));
    net.advance(1000);
    let mut late = net.connected(V5, "ret-exp-late");
    late.subscribe("ret-exp/t", QoS::AtLeastOnce);
    late.nothing();
}

#[test]
fn inbound_topic_alias_stands_for_its_topic_mqtt_3_3_2_12() {
    let net = Net::new();
    let mut subscriber = net.connected(V5, "alias-sub");
    subscriber.subscribe("alias/#", QoS::AtMostOnce);
    let (mut publisher, connack) = net.connect(connect_packet(V5, "alias-pub"));
    assert!(connack.properties.topic_alias_maximum.unwrap() >= 2);
    let mut first = publish_packet("alias/long/topic", QoS::AtMostOnce, b"1");
    first.properties.topic_alias = Some(2);
    publisher.publish_with(first);
    let mut second = publish_packet("", QoS::AtMostOnce, b"2");
    second.properties.topic_alias = Some(2);
    publisher.publish_with(second);
    // An alias can be set again to another topic.
    let mut third = publish_packet("alias/other", QoS::AtMostOnce, b"3");
    third.properties.topic_alias = Some(2);
    publisher.publish_with(third);
    let mut fourth = publish_packet("", QoS::AtMostOnce, b"4");
    fourth.properties.topic_alias = Some(2);
    publisher.publish_with(fourth);
    let got: Vec<(String, Bytes)> = subscriber
        .publishes()
        .into_iter()
        .map(|publish| (publish.topic.to_string(), publish.payload))
        .collect();
    assert_eq!(
        got,
        [
            ("alias/long/topic".to_owned(), Bytes::from_static(b"1")),
            ("alias/long/topic".to_owned(), Bytes::from_static(b"2")),
            ("alias/other".to_owned(), Bytes::from_static(b"3")),
            ("alias/other".to_owned(), Bytes::from_static(b"4")),
        ]
    );
}

#[test]
fn topic_alias_out_of_range_gets_0x94_and_unknown_alias_0x82() {
    let net = Net::with_config(BrokerConfig {
        topic_alias_maximum: 3,
        ..BrokerConfig::default()
    });
    let mut client = net.connected(V5, "alias-bad");
    let mut publish = publish_packet("a", QoS::AtMostOnce, b"x");
    publish.properties.topic_alias = Some(4);
    client.publish_with(publish);
    assert_eq!(client.disconnect_reason(), ReasonCode::TopicAliasInvalid);

    let mut client = net.connected(V5, "alias-zero");
    // Topic alias 0, written by hand: PUBLISH QoS 0 "a", properties [0x23 0x0000].
    client.send_bytes(&[0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00]);
    assert_eq!(client.disconnect_reason(), ReasonCode::TopicAliasInvalid);

    let mut client = net.connected(V5, "alias-unset");
    let mut publish = publish_packet("", QoS::AtMostOnce, b"x");
    publish.properties.topic_alias = Some(1);
    client.publish_with(publish);
    assert_eq!(client.disconnect_reason(), ReasonCode::ProtocolError);
}

#[test]
fn outbound_topic_aliases_replace_repeated_topics_mqtt_3_3_2_11() {
    let net = Net::new();
    let mut connect = connect_packet(V5, "alias-out");
    connect.properties.topic_alias_maximum = Some(5);
    let mut subscriber = net.accepted(connect);
    subscriber.subscribe("out/#", QoS::AtMostOnce);
    let mut publisher = net.connected(V5, "alias-out-pub");
    for payload in [b"1", b"2"] {
        publisher.publish("out/t", QoS::AtMostOnce, payload);
    }
    let [first, second] = <[_; 2]>::try_from(subscriber.publishes()).unwrap();
    assert_eq!(first.topic, "out/t");
    let alias = first
        .properties
        .topic_alias
        .expect("an alias with the first");
    assert!((1..=5).contains(&alias));
    assert_eq!(second.topic, "", "the topic is left out the second time");
    assert_eq!(second.properties.topic_alias, Some(alias));

    // A client that allows no aliases gets none [MQTT-3.3.2-11].
    let mut plain = net.connected(V5, "alias-none");
    plain.subscribe("out/#", QoS::AtMostOnce);
    publisher.publish("out/t", QoS::AtMostOnce, b"3");
    let publish = plain.publish_received();
    assert_eq!(publish.topic, "out/t");
    assert_eq!(publish.properties.topic_alias, None);
}

#[test]
fn outbound_aliases_stop_at_the_clients_maximum() {
    let net = Net::new();
    let mut connect = connect_packet(V5, "alias-few");
    connect.properties.topic_alias_maximum = Some(1);
    let mut subscriber = net.accepted(connect);
    subscriber.subscribe("few/#", QoS::AtMostOnce);
    let mut publisher = net.connected(V5, "alias-few-pub");
    for topic in ["few/a", "few/b", "few/a", "few/b"] {
        publisher.publish(topic, QoS::AtMostOnce, b"x");
    }
    let got: Vec<(String, Option<u16>)> = subscriber
        .publishes()
        .into_iter()
        .map(|publish| (publish.topic.to_string(), publish.properties.topic_alias))
        .collect();
    assert_eq!(
        got,
        [
            ("few/a".to_owned(), Some(1)),
            ("few/b".to_owned(), None),
            (String::new(), Some(1)),
            ("few/b".to_owned(), None),
        ]
    );
}

#[test]
fn message_over_the_client_maximum_packet_size_is_dropped_mqtt_3_1_2_25() {
    let net = Net::new();
    let mut connect = connect_packet(V5, "small-client");
    connect.properties.maximum_packet_size = Some(64);
    let mut subscriber = net.accepted(connect);
    subscriber.subscribe("small/t", QoS::AtLeastOnce);
    let mut publisher = net.connected(V5, "small-pub");
    publisher.publish("small/t", QoS::AtLeastOnce, &[0u8; 200]);
    publisher.publish("small/t", QoS::AtLeastOnce, b"fits");
    let publish = subscriber.publish_received();
    assert_eq!(&publish.payload[..], b"fits");
    // The big one behaves as if sent: it is not waiting in flight.
    subscriber.ack(&publish);
    subscriber.nothing();
    assert_eq!(net.session("small-client").unwrap().inflight_len(), 0);
    assert_eq!(
        net.broker.metrics().snapshot().messages_dropped_too_large,
        1
    );
}

#[test]
fn puback_reason_codes_0x10_0x87_0x99() {
    let net = Net::new();
    let mut client = net.connected(V5, "codes5");
    let id = client.publish("nobody/listens", QoS::AtLeastOnce, b"x");
    assert_eq!(
        puback_reason(&mut client, id),
        ReasonCode::NoMatchingSubscribers
    );
    let id = client.publish("$SYS/forbidden", QoS::AtLeastOnce, b"x");
    assert_eq!(puback_reason(&mut client, id), ReasonCode::NotAuthorized);
    let mut not_utf8 = publish_packet("fmt/t", QoS::AtLeastOnce, &[0xFF, 0xFE]);
    not_utf8.properties.payload_format_indicator = Some(true);
    let id = client.publish_with(not_utf8);
    assert_eq!(
        puback_reason(&mut client, id),
        ReasonCode::PayloadFormatInvalid
    );
    let mut listener = net.connected(V5, "codes5-listener");
    listener.subscribe("somebody/#", QoS::AtMostOnce);
    let id = client.publish("somebody/listens", QoS::AtLeastOnce, b"x");
    assert_eq!(puback_reason(&mut client, id), ReasonCode::Success);
    // (Quota exceeded, 0x97, is in retained.rs.)
}

#[test]
fn reason_strings_only_when_the_client_allows_problem_information_mqtt_3_1_2_29() {
    let net = Net::new();
    for (allow, id) in [(None, "problems-yes"), (Some(false), "problems-no")] {
        let mut connect = connect_packet(V5, id);
        connect.properties.request_problem_information = allow;
        let mut client = net.accepted(connect);
        let packet_id = client.publish("$SYS/x", QoS::AtLeastOnce, b"x");
        let Some(Packet::PubAck(ack)) = client.next() else {
            panic!("expected PUBACK")
        };
        assert_eq!(
            (ack.packet_id, ack.reason_code),
            (packet_id, ReasonCode::NotAuthorized)
        );
        assert_eq!(
            ack.properties.reason_string.is_some(),
            allow.is_none(),
            "{id}"
        );
    }
}

#[test]
fn messages_cross_between_3_1_1_and_5_clients() {
    let net = Net::new();
    let mut v5_sub = net.connected(V5, "mix-v5");
    v5_sub.subscribe("mix/#", QoS::ExactlyOnce);
    let mut v3_sub = net.connected(V311, "mix-v3");
    v3_sub.subscribe("mix/#", QoS::ExactlyOnce);

    let mut v3_pub = net.connected(V311, "mix-v3-pub");
    v3_pub.publish("mix/from3", QoS::AtLeastOnce, &[0, 1, 2]);
    for got in [v5_sub.publish_received(), v3_sub.publish_received()] {
        assert_eq!(
            (&got.topic[..], &got.payload[..], got.qos),
            ("mix/from3", &[0u8, 1, 2][..], QoS::AtLeastOnce)
        );
        assert_eq!(got.properties, Properties::default());
    }

    let mut v5_pub = net.connected(V5, "mix-v5-pub");
    let mut publish = publish_packet("mix/from5", QoS::ExactlyOnce, b"payload");
    publish.properties = message_properties();
    v5_pub.publish_with(publish);
    // The 3.1.1 subscriber gets the message intact, without properties (its decoder would
    // refuse them).
    let got = v3_sub.publish_received();
    assert_eq!(
        (&got.topic[..], &got.payload[..], got.qos),
        ("mix/from5", &b"payload"[..], QoS::ExactlyOnce)
    );
    let got = v5_sub.publish_received();
    assert_eq!(got.properties, message_properties());
}

#[test]
fn client_may_not_send_a_subscription_identifier_in_publish_mqtt_3_3_4_6() {
    let net = Net::new();
    let mut client = net.connected(V5, "subid-pub");
    let mut publish = publish_packet("x/y", QoS::AtMostOnce, b"x");
    publish.properties.subscription_identifiers = vec![3];
    client.publish_with(publish);
    assert_eq!(client.disconnect_reason(), ReasonCode::ProtocolError);
}
