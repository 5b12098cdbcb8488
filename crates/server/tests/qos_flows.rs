//! QoS 1 and 2 flows through a real client (rumqttc): hundreds of messages in both directions,
//! in order. The QoS rules themselves (each flow, retransmission with DUP, the in-flight window,
//! Receive Maximum) are tested on the core's harness in `crates/broker/tests/qos_flows.rs`.

mod common;

use common::*;
use rumqttc::QoS as R;

#[tokio::test]
async fn order_is_kept_per_topic_and_publisher_mqtt_4_6_0_5() {
    let broker = start().await;
    let mut subscriber = Client::simple(broker.addr, "order-sub").await;
    subscriber.subscribe("order/#", R::ExactlyOnce).await;
    let publisher = Client::simple(broker.addr, "order-pub").await;
    for qos in [R::AtLeastOnce, R::ExactlyOnce] {
        for n in 0..200u32 {
            publisher
                .publish("order/t", qos, false, n.to_be_bytes().to_vec())
                .await;
        }
        for n in 0..200u32 {
            let publish = subscriber.recv().await;
            assert_eq!(publish.payload[..], n.to_be_bytes(), "{qos:?}");
        }
    }
}
