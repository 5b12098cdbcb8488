//! A persistent session through a real client (rumqttc, clean session 0): messages queued while
//! it is away reach it on its return. The session rules themselves (Session Present, clean
//! session, the bounded queue, expiry) are tested on the core's harness in
//! `crates/broker/tests/sessions.rs`.

mod common;

use common::*;
use rumqttc::QoS as R;

fn persistent(broker: &TestBroker, id: &str) -> rumqttc::MqttOptions {
    let mut options = options(broker.addr, id);
    options.set_clean_session(false);
    options
}

/// Waits until the publisher has `acks` PUBACKs and PUBCOMPs: its messages have been routed.
async fn acknowledged(publisher: &mut Client, acks: usize) {
    for _ in 0..acks {
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
}

#[tokio::test]
async fn queued_messages_are_delivered_in_order_on_return_mqtt_3_2_2_2() {
    let broker = start().await;
    let (mut subscriber, connack) = Client::connect(persistent(&broker, "away")).await;
    assert!(!connack.session_present, "[MQTT-3.2.2-3]");
    subscriber.subscribe("away/#", R::ExactlyOnce).await;
    subscriber.disconnect().await;

    let mut publisher = Client::simple(broker.addr, "away-pub").await;
    publisher
        .publish("away/t", R::AtMostOnce, false, vec![99])
        .await;
    for n in 0..20u8 {
        let qos = if n % 2 == 0 {
            R::AtLeastOnce
        } else {
            R::ExactlyOnce
        };
        publisher.publish("away/t", qos, false, vec![n]).await;
    }
    acknowledged(&mut publisher, 20).await;
    assert_eq!(
        broker.broker.session("away").unwrap().queued_len(),
        20,
        "QoS 0 not queued by default"
    );

    let (mut subscriber, connack) = Client::connect(persistent(&broker, "away")).await;
    assert!(connack.session_present, "[MQTT-3.2.2-2]");
    for n in 0..20u8 {
        let publish = subscriber.recv().await;
        assert_eq!(publish.payload[..], [n]);
    }
}
