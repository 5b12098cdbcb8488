//! MQTT 5 subscriptions through a real client (rumqttc v5): Subscription Identifiers come back
//! on delivery. The subscription options and every SUBACK and UNSUBACK reason code are tested on
//! the core's harness in `crates/broker/tests/mqtt5_subscribe.rs`.

mod common;

use common::v5::{Client5, QoS};
use common::*;
use rumqttc::v5::mqttbytes::v5::SubscribeProperties;

#[tokio::test]
async fn subscription_identifiers_come_back_on_delivery_mqtt_3_3_4_3() {
    let broker = start().await;
    let mut client = Client5::simple(broker.addr, "subid").await;
    for (filter, id) in [("sid/+", 7), ("sid/#", 9)] {
        let properties = SubscribeProperties {
            id: Some(id),
            user_properties: vec![],
        };
        client
            .client
            .subscribe_with_properties(filter, QoS::AtLeastOnce, properties)
            .await
            .unwrap();
        client.suback().await;
    }
    let publisher = Client5::simple(broker.addr, "subid-pub").await;
    publisher
        .client
        .publish("sid/x", QoS::AtLeastOnce, false, "both")
        .await
        .unwrap();
    publisher
        .client
        .publish("sid/x/y", QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    let mut ids = client
        .recv()
        .await
        .properties
        .unwrap()
        .subscription_identifiers;
    ids.sort();
    assert_eq!(
        ids,
        vec![7, 9],
        "one copy with both identifiers [MQTT-3.3.4-4]"
    );
    assert_eq!(
        client
            .recv()
            .await
            .properties
            .unwrap()
            .subscription_identifiers,
        vec![9]
    );
}
