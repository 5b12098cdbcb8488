//! Retained messages through a real client (rumqttc): kept, and sent to a later subscriber with
//! RETAIN set. The retained rules themselves (MQTT-3.3.1-5 to -13, Retain Handling, the limits)
//! are tested on the core's harness in `crates/broker/tests/retained.rs`.

mod common;

use common::*;
use rumqttc::QoS as R;

#[tokio::test]
async fn retained_message_is_stored_and_sent_to_new_subscriptions_with_retain_set_mqtt_3_3_1_5_and_8()
 {
    let broker = start().await;
    let mut publisher = Client::simple(broker.addr, "ret-pub").await;
    publisher
        .publish("ret/a", R::AtLeastOnce, true, "stored")
        .await;
    publisher
        .publish("ret/b", R::ExactlyOnce, true, "also")
        .await;
    // Kept once the broker has acknowledged both.
    for _ in 0..2 {
        publisher
            .next_matching(|event| {
                matches!(
                    event,
                    rumqttc::Event::Incoming(
                        rumqttc::Packet::PubAck(_) | rumqttc::Packet::PubComp(_)
                    )
                )
                .then_some(())
            })
            .await
            .expect("acknowledged");
    }
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
