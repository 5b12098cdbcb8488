//! Topic matching through a real client (rumqttc). The SUBSCRIBE and UNSUBSCRIBE rules, topic
//! matching and shared subscriptions are tested on the core's harness in
//! `crates/broker/tests/subscriptions.rs`.

mod common;

use common::*;
use rumqttc::QoS as R;

#[tokio::test]
async fn single_and_multi_level_wildcards_match_mqtt_4_7_1() {
    let broker = start().await;
    let mut plus = Client::simple(broker.addr, "wild-plus").await;
    plus.subscribe("home/+/temp", R::AtLeastOnce).await;
    let mut hash = Client::simple(broker.addr, "wild-hash").await;
    hash.subscribe("home/#", R::AtLeastOnce).await;
    let publisher = Client::simple(broker.addr, "wild-pub").await;
    for (topic, payload) in [
        ("home/kitchen/humidity", "1"),
        ("home", "2"),
        ("office/kitchen/temp", "3"),
        ("home/kitchen/temp", "4"),
    ] {
        publisher
            .publish(topic, R::AtLeastOnce, false, payload)
            .await;
    }
    // One publisher's messages arrive in order: that the last one comes first to `plus`
    // proves the others did not match, without waiting for silence.
    assert_eq!(&plus.recv().await.payload[..], b"4");
    for expected in ["1", "2", "4"] {
        assert_eq!(hash.recv().await.payload, expected.as_bytes());
    }
}
