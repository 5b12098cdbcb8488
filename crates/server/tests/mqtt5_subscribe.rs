//! MQTT 5 SUBSCRIBE and UNSUBSCRIBE (sections 3.8-3.11): subscription options, identifiers,
//! shared subscriptions, and every SUBACK and UNSUBACK reason code that applies.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::v5::{Client5, QoS};
use common::*;
use rumqttc::v5::mqttbytes::v5::{Filter, SubscribeProperties, SubscribeReasonCode as Code};
use tern_codec::{Packet, ProtocolVersion, ReasonCode, UnsubAck, Unsubscribe};
use tern_server::broker::{Authorizer, ClientInfo, Hooks};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// Forbids every topic under `forbidden/`.
struct DenyForbidden;

impl Authorizer for DenyForbidden {
    fn may_publish(&self, _: &ClientInfo, topic: &str) -> bool {
        !topic.starts_with("forbidden/")
    }

    fn may_subscribe(&self, _: &ClientInfo, filter: &str) -> bool {
        !filter.starts_with("forbidden/")
    }
}

async fn start_denying(config: tern_server::ServerConfig) -> TestBroker {
    let hooks = Hooks {
        authorizer: Arc::new(DenyForbidden),
        ..Hooks::default()
    };
    start_with_hooks(config, hooks).await
}

fn filter(path: &str, qos: QoS) -> Filter {
    Filter::new(path, qos)
}

#[tokio::test]
async fn no_local_keeps_own_messages_away_mqtt_3_8_3_3() {
    let broker = start().await;
    let mut client = Client5::simple(broker.addr, "nolocal").await;
    let mut own = filter("nl/t", QoS::AtLeastOnce);
    own.nolocal = true;
    client.client.subscribe_many(vec![own]).await.unwrap();
    client.suback().await;
    let mut other = Client5::simple(broker.addr, "nolocal-other").await;
    other.subscribe("nl/t", QoS::AtLeastOnce).await;
    client
        .client
        .publish("nl/t", QoS::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    assert_eq!(&other.recv().await.payload[..], b"mine");
    client.expect_silence(Duration::from_millis(300)).await;
}

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

#[tokio::test]
async fn shared_subscription_member_that_leaves_hands_over_its_messages() {
    let broker = start().await;
    // Member A takes messages but never acknowledges them.
    let (mut a, _) =
        Raw::connected(broker.addr, V5, connect_packet(V5, "share-a5", true, 30)).await;
    a.send(&subscribe_packet(
        1,
        &[("$share/g/work", tern_codec::QoS::AtLeastOnce)],
    ))
    .await;
    assert!(matches!(a.recv().await, Some(Packet::SubAck(_))));
    let mut b = Client5::simple(broker.addr, "share-b5").await;
    b.subscribe("$share/g/work", QoS::AtLeastOnce).await;
    let publisher = Client5::simple(broker.addr, "share-pub5").await;
    for n in 0..4u8 {
        publisher
            .client
            .publish("work", QoS::AtLeastOnce, false, vec![n])
            .await
            .unwrap();
    }
    let mut got_by_a = Vec::new();
    while got_by_a.len() < 2 {
        match a.recv().await {
            Some(Packet::Publish(publish)) => got_by_a.push(publish.payload[0]),
            other => panic!("{other:?}"),
        }
    }
    let mut got_by_b = vec![b.recv().await.payload[0], b.recv().await.payload[0]];
    // A leaves without acknowledging: its two messages go to B.
    drop(a);
    got_by_b.push(b.recv().await.payload[0]);
    got_by_b.push(b.recv().await.payload[0]);
    got_by_b.sort();
    assert_eq!(got_by_b, vec![0, 1, 2, 3]);
}

#[tokio::test]
async fn suback_reason_codes_0x87_0x8f_0x97_0x9e_0xa1_0xa2() {
    let mut config = config();
    config.limits.max_topic_levels = 4;
    config.limits.max_subscriptions_per_session = 2;
    let broker = start_denying(config).await;
    let mut client = Client5::simple(broker.addr, "suback-codes").await;
    client
        .client
        .subscribe_many(vec![
            filter("ok/1", QoS::ExactlyOnce),
            filter("forbidden/x", QoS::AtMostOnce),
            filter("a/b/c/d/e", QoS::AtMostOnce),
            filter("ok/2", QoS::AtLeastOnce),
            filter("ok/3", QoS::AtMostOnce),
        ])
        .await
        .unwrap();
    let suback = client.suback().await;
    assert_eq!(
        suback.return_codes,
        vec![
            Code::Success(QoS::ExactlyOnce),
            Code::NotAuthorized,
            Code::TopicFilterInvalid,
            Code::Success(QoS::AtLeastOnce),
            Code::QuotaExceeded,
        ]
    );

    let mut config = common::config();
    config.mqtt.shared_subscriptions = false;
    config.mqtt.wildcard_subscriptions = false;
    config.mqtt.subscription_identifiers = false;
    let broker = start_with(config).await;
    let mut client = Client5::simple(broker.addr, "suback-off").await;
    client
        .client
        .subscribe_many(vec![
            filter("$share/g/t", QoS::AtMostOnce),
            filter("w/+", QoS::AtMostOnce),
        ])
        .await
        .unwrap();
    assert_eq!(
        client.suback().await.return_codes,
        vec![
            Code::SharedSubscriptionsNotSupported,
            Code::WildcardSubscriptionsNotSupported
        ]
    );
    let properties = SubscribeProperties {
        id: Some(3),
        user_properties: vec![],
    };
    client
        .client
        .subscribe_with_properties("plain", QoS::AtMostOnce, properties)
        .await
        .unwrap();
    assert_eq!(
        client.suback().await.return_codes,
        vec![Code::SubscriptionIdNotSupported]
    );
}

#[tokio::test]
async fn unsuback_reason_codes_0x00_0x11_0x87_0x8f() {
    let mut config = config();
    config.limits.max_topic_levels = 3;
    let broker = start_denying(config).await;
    let (mut raw, _) =
        Raw::connected(broker.addr, V5, connect_packet(V5, "unsuback5", true, 30)).await;
    raw.send(&subscribe_packet(
        1,
        &[("u/t", tern_codec::QoS::AtMostOnce)],
    ))
    .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    raw.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        properties: Default::default(),
        filters: vec![
            text("u/t"),
            text("never"),
            text("forbidden/x"),
            text("a/b/c/d"),
        ],
    }))
    .await;
    let Some(Packet::UnsubAck(UnsubAck {
        packet_id,
        reason_codes,
        ..
    })) = raw.recv().await
    else {
        panic!()
    };
    assert_eq!(packet_id, 2);
    assert_eq!(
        reason_codes,
        vec![
            ReasonCode::Success,
            ReasonCode::NoSubscriptionExisted,
            ReasonCode::NotAuthorized,
            ReasonCode::TopicFilterInvalid,
        ]
    );
}

#[tokio::test]
async fn publish_not_authorized_gets_0x87() {
    let broker = start_denying(config()).await;
    let (mut raw, _) =
        Raw::connected(broker.addr, V5, connect_packet(V5, "pub-denied", true, 30)).await;
    raw.send(&Packet::Publish(publish_packet(
        "forbidden/t",
        tern_codec::QoS::AtLeastOnce,
        4,
        b"x",
    )))
    .await;
    let Some(Packet::PubAck(ack)) = raw.recv().await else {
        panic!()
    };
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
}
