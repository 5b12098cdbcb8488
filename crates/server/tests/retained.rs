//! Retained messages (MQTT 3.1.1 section 3.3.1.3, rules MQTT-3.3.1-5 to -12).

mod common;

use std::time::Duration;

use common::*;
use rumqttc::QoS as R;

#[tokio::test]
async fn retained_message_is_stored_and_sent_to_new_subscriptions_with_retain_set_mqtt_3_3_1_5_and_8()
 {
    let broker = start().await;
    let publisher = Client::simple(broker.addr, "ret-pub").await;
    publisher
        .publish("ret/a", R::AtLeastOnce, true, "stored")
        .await;
    publisher
        .publish("ret/b", R::ExactlyOnce, true, "also")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut subscriber = Client::simple(broker.addr, "ret-sub").await;
    subscriber.subscribe("ret/+", R::ExactlyOnce).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let publish = subscriber.recv().await;
        assert!(
            publish.retain,
            "RETAIN is 1 for a new subscription [MQTT-3.3.1-8]"
        );
        got.push((publish.topic.clone(), publish.payload.clone(), publish.qos));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got[0].1, "stored".as_bytes());
    assert_eq!(got[0].2, R::AtLeastOnce, "stored with its QoS");
    assert_eq!(got[1].2, R::ExactlyOnce);
}

#[tokio::test]
async fn forwarded_messages_to_existing_subscriptions_have_retain_0_mqtt_3_3_1_9() {
    let broker = start().await;
    let mut subscriber = Client::simple(broker.addr, "ret0-sub").await;
    subscriber.subscribe("ret0/t", R::AtLeastOnce).await;
    let publisher = Client::simple(broker.addr, "ret0-pub").await;
    publisher
        .publish("ret0/t", R::AtLeastOnce, true, "live")
        .await;
    let publish = subscriber.recv().await;
    assert!(!publish.retain);
    assert_eq!(broker.broker.retained_count(), 1);
}

#[tokio::test]
async fn newer_retained_message_replaces_the_old_one_mqtt_3_3_1_7() {
    let broker = start().await;
    let publisher = Client::simple(broker.addr, "ret-replace").await;
    publisher
        .publish("ret/replace", R::AtLeastOnce, true, "old")
        .await;
    publisher
        .publish("ret/replace", R::AtMostOnce, true, "new")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut subscriber = Client::simple(broker.addr, "ret-replace-sub").await;
    subscriber.subscribe("ret/replace", R::AtLeastOnce).await;
    let publish = subscriber.recv().await;
    assert_eq!(&publish.payload[..], b"new");
    assert_eq!(publish.qos, R::AtMostOnce);
    subscriber.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn empty_retained_payload_deletes_and_is_forwarded_mqtt_3_3_1_10_and_11() {
    let broker = start().await;
    let mut live = Client::simple(broker.addr, "ret-del-live").await;
    live.subscribe("ret/del", R::AtLeastOnce).await;
    let publisher = Client::simple(broker.addr, "ret-del").await;
    publisher
        .publish("ret/del", R::AtLeastOnce, true, "x")
        .await;
    publisher.publish("ret/del", R::AtLeastOnce, true, "").await;
    assert_eq!(&live.recv().await.payload[..], b"x");
    // The zero-byte message is processed as normal and sent to existing subscribers.
    assert!(live.recv().await.payload.is_empty());
    assert_eq!(
        broker.broker.retained_count(),
        0,
        "not stored [MQTT-3.3.1-11]"
    );
    let mut late = Client::simple(broker.addr, "ret-del-late").await;
    late.subscribe("ret/del", R::AtLeastOnce).await;
    late.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn publish_without_retain_leaves_the_retained_message_mqtt_3_3_1_12() {
    let broker = start().await;
    let publisher = Client::simple(broker.addr, "ret-keep").await;
    publisher
        .publish("ret/keep", R::AtLeastOnce, true, "kept")
        .await;
    publisher
        .publish("ret/keep", R::AtLeastOnce, false, "not retained")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut subscriber = Client::simple(broker.addr, "ret-keep-sub").await;
    subscriber.subscribe("ret/keep", R::AtLeastOnce).await;
    assert_eq!(&subscriber.recv().await.payload[..], b"kept");
    subscriber.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn wildcard_subscription_gets_every_matching_retained_message() {
    let broker = start().await;
    let publisher = Client::simple(broker.addr, "ret-wild").await;
    for topic in ["w/1", "w/2/a", "w/3/b/c", "other/x"] {
        publisher.publish(topic, R::AtLeastOnce, true, topic).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut subscriber = Client::simple(broker.addr, "ret-wild-sub").await;
    subscriber.subscribe("w/#", R::AtLeastOnce).await;
    let mut topics = Vec::new();
    for _ in 0..3 {
        topics.push(subscriber.recv().await.topic);
    }
    topics.sort();
    assert_eq!(topics, ["w/1", "w/2/a", "w/3/b/c"]);
    subscriber.expect_silence(Duration::from_millis(200)).await;
}
