//! SUBSCRIBE and UNSUBSCRIBE (sections 3.8-3.11) and topic matching (4.7).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use rumqttc::QoS as R;
use rumqttc::SubscribeReasonCode as Code;
use tern_codec::{MqttStr, Packet, ProtocolVersion, QoS, UnsubAck, Unsubscribe};
use tern_server::broker::Message;

#[tokio::test]
async fn single_and_multi_level_wildcards_match_mqtt_4_7_1() {
    let broker = start().await;
    let mut plus = Client::simple(broker.addr, "wild-plus").await;
    plus.subscribe("home/+/temp", R::AtLeastOnce).await;
    let mut hash = Client::simple(broker.addr, "wild-hash").await;
    hash.subscribe("home/#", R::AtLeastOnce).await;
    let publisher = Client::simple(broker.addr, "wild-pub").await;
    publisher
        .publish("home/kitchen/temp", R::AtLeastOnce, false, "1")
        .await;
    publisher
        .publish("home/kitchen/humidity", R::AtLeastOnce, false, "2")
        .await;
    publisher.publish("home", R::AtLeastOnce, false, "3").await;
    publisher
        .publish("office/kitchen/temp", R::AtLeastOnce, false, "4")
        .await;
    assert_eq!(&plus.recv().await.payload[..], b"1");
    plus.expect_silence(Duration::from_millis(200)).await;
    for expected in ["1", "2", "3"] {
        assert_eq!(hash.recv().await.payload, expected.as_bytes());
    }
    hash.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards_mqtt_4_7_2_1() {
    let broker = start().await;
    let mut everything = Client::simple(broker.addr, "dollar-hash").await;
    everything.subscribe("#", R::AtMostOnce).await;
    let mut plus = Client::simple(broker.addr, "dollar-plus").await;
    plus.subscribe("+/info", R::AtMostOnce).await;
    let mut sys = Client::simple(broker.addr, "dollar-sys").await;
    sys.subscribe("$SYS/#", R::AtMostOnce).await;
    // Clients may not publish to `$` topics; the broker itself may.
    let message = Message {
        topic: MqttStr::from_static("$SYS/info"),
        payload: Bytes::from_static(b"uptime"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: None,
        expires_at: None,
        publisher: None,
        id: 0,
    };
    broker.broker.publish(message, std::time::Instant::now());
    assert_eq!(&sys.recv().await.payload[..], b"uptime");
    everything.expect_silence(Duration::from_millis(200)).await;
    plus.expect_silence(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn suback_has_one_code_per_filter_in_order_mqtt_3_8_4_5() {
    let mut config = config();
    config.limits.max_topic_levels = 3;
    config.mqtt.max_qos = 1;
    let broker = start_with(config).await;
    let mut client = Client::simple(broker.addr, "codes").await;
    client
        .client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("a/b".into(), R::ExactlyOnce),
            rumqttc::SubscribeFilter::new("a/b/c/d".into(), R::AtMostOnce),
            rumqttc::SubscribeFilter::new("x/#".into(), R::AtMostOnce),
        ])
        .await
        .unwrap();
    let suback = client
        .next_matching(|event| match event {
            rumqttc::Event::Incoming(rumqttc::Packet::SubAck(suback)) => Some(suback.clone()),
            _ => None,
        })
        .await
        .unwrap();
    // QoS 2 asked, QoS 1 granted (the configured maximum) [MQTT-3.8.4-6]; four levels refused
    // with 0x80 [MQTT-3.9.3-2]; the last one granted as asked.
    assert_eq!(
        suback.return_codes,
        vec![
            Code::Success(R::AtLeastOnce),
            Code::Failure,
            Code::Success(R::AtMostOnce)
        ]
    );
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos_mqtt_3_3_5_1() {
    let broker = start().await;
    let mut client = Client::simple(broker.addr, "overlap").await;
    client.subscribe("ov/+", R::AtMostOnce).await;
    client.subscribe("ov/#", R::ExactlyOnce).await;
    client.subscribe("ov/x", R::AtLeastOnce).await;
    let publisher = Client::simple(broker.addr, "overlap-pub").await;
    publisher
        .publish("ov/x", R::ExactlyOnce, false, "one")
        .await;
    let publish = client.recv().await;
    assert_eq!(publish.qos, R::ExactlyOnce);
    client.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn resubscribing_replaces_the_subscription_and_resends_retained_mqtt_3_8_4_3() {
    let broker = start().await;
    let publisher = Client::simple(broker.addr, "resub-pub").await;
    publisher
        .publish("resub/t", R::ExactlyOnce, true, "kept")
        .await;
    let mut client = Client::simple(broker.addr, "resub").await;
    client.subscribe("resub/t", R::AtMostOnce).await;
    let first = client.recv().await;
    assert!(first.retain);
    assert_eq!(first.qos, R::AtMostOnce);
    client.subscribe("resub/t", R::ExactlyOnce).await;
    let again = client.recv().await;
    assert!(again.retain);
    assert_eq!(
        again.qos,
        R::ExactlyOnce,
        "the new subscription's QoS applies"
    );
    // One subscription, not two: a message arrives once.
    publisher
        .publish("resub/t", R::AtLeastOnce, false, "live")
        .await;
    assert_eq!(&client.recv().await.payload[..], b"live");
    client.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(broker.broker.subscription_count(), 1);
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_unsuback_is_always_sent_mqtt_3_10_4_5() {
    let broker = start().await;
    let connect = connect_packet(ProtocolVersion::V311, "unsub", true, 30);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    raw.send(&subscribe_packet(1, &[("unsub/t", QoS::AtMostOnce)]))
        .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    let unsubscribe = |packet_id, filter: &str| {
        Packet::Unsubscribe(Unsubscribe {
            packet_id,
            properties: Default::default(),
            filters: vec![text(filter)],
        })
    };
    raw.send(&unsubscribe(2, "unsub/t")).await;
    let expected = |packet_id| {
        Packet::UnsubAck(UnsubAck {
            packet_id,
            properties: Default::default(),
            reason_codes: vec![],
        })
    };
    assert_eq!(raw.recv().await, Some(expected(2)));
    // Nothing subscribed to that filter: UNSUBACK all the same.
    raw.send(&unsubscribe(3, "never/subscribed")).await;
    assert_eq!(raw.recv().await, Some(expected(3)));
    let publisher = Client::simple(broker.addr, "unsub-pub").await;
    publisher
        .publish("unsub/t", R::AtMostOnce, false, "x")
        .await;
    assert!(raw.recv_within(Duration::from_millis(300)).await.is_err());
    assert_eq!(broker.broker.subscription_count(), 0);
}

#[tokio::test]
async fn shared_subscription_gives_each_message_to_one_member() {
    let broker = start().await;
    let mut a = Client::simple(broker.addr, "share-a").await;
    let mut b = Client::simple(broker.addr, "share-b").await;
    a.subscribe("$share/workers/jobs/#", R::AtLeastOnce).await;
    b.subscribe("$share/workers/jobs/#", R::AtLeastOnce).await;
    let publisher = Client::simple(broker.addr, "share-pub").await;
    for n in 0..10u8 {
        publisher
            .publish("jobs/new", R::AtLeastOnce, false, vec![n])
            .await;
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(a.recv().await.payload[0]);
        seen.push(b.recv().await.payload[0]);
    }
    seen.sort();
    assert_eq!(seen, (0..10).collect::<Vec<u8>>());
    a.expect_silence(Duration::from_millis(200)).await;
    b.expect_silence(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn subscribe_with_invalid_filter_closes_the_connection_mqtt_4_7_1_2() {
    let broker = start().await;
    let connect = connect_packet(ProtocolVersion::V311, "bad-filter", true, 30);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    // "a/b#" has '#' not as a whole level: malformed, so the connection is closed.
    raw.send_bytes(&[
        0x82, 0x09, 0x00, 0x01, 0x00, 0x04, b'a', b'/', b'b', b'#', 0x00,
    ])
    .await;
    assert_eq!(raw.until_closed().await, vec![]);
}
