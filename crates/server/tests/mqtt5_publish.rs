//! MQTT 5 PUBLISH through real clients (rumqttc): a request/response round trip with its
//! properties, and messages crossing between 3.1.1 and 5 clients. The PUBLISH rules (message
//! expiry, topic aliases, maximum packet size, reason codes) are tested on the core's harness in
//! `crates/broker/tests/mqtt5_publish.rs`.

mod common;

use bytes::Bytes;
use common::v5::{Client5, QoS};
use common::*;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

#[tokio::test]
async fn request_response_round_trip() {
    let broker = start().await;
    let mut responder = Client5::simple(broker.addr, "responder").await;
    responder
        .subscribe("service/request", QoS::AtLeastOnce)
        .await;
    let mut requester = Client5::simple(broker.addr, "requester").await;
    requester
        .subscribe("reply/requester", QoS::AtLeastOnce)
        .await;
    let request = PublishProperties {
        response_topic: Some("reply/requester".into()),
        correlation_data: Some(Bytes::from_static(b"req-42")),
        ..Default::default()
    };
    requester
        .client
        .publish_with_properties("service/request", QoS::AtLeastOnce, false, "ping?", request)
        .await
        .unwrap();
    let got = responder.recv().await;
    let props = got.properties.unwrap();
    let reply = PublishProperties {
        correlation_data: props.correlation_data.clone(),
        ..Default::default()
    };
    responder
        .client
        .publish_with_properties(
            props.response_topic.unwrap(),
            QoS::AtLeastOnce,
            false,
            "pong",
            reply,
        )
        .await
        .unwrap();
    let answer = requester.recv().await;
    assert_eq!(&answer.payload[..], b"pong");
    assert_eq!(
        answer.properties.unwrap().correlation_data.as_deref(),
        Some(&b"req-42"[..])
    );
}

#[tokio::test]
async fn messages_cross_between_3_1_1_and_5_clients() {
    let broker = start().await;
    let mut v5_sub = Client5::simple(broker.addr, "mix-v5").await;
    v5_sub.subscribe("mix/#", QoS::ExactlyOnce).await;
    let mut v3_sub = Client::simple(broker.addr, "mix-v3").await;
    v3_sub.subscribe("mix/#", rumqttc::QoS::ExactlyOnce).await;

    let v3_pub = Client::simple(broker.addr, "mix-v3-pub").await;
    v3_pub
        .publish(
            "mix/from3",
            rumqttc::QoS::AtLeastOnce,
            false,
            vec![0u8, 1, 2],
        )
        .await;
    let got = v5_sub.recv().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        (&b"mix/from3"[..], &[0u8, 1, 2][..])
    );
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert_eq!(&v3_sub.recv().await.payload[..], &[0, 1, 2]);

    let v5_pub = Client5::simple(broker.addr, "mix-v5-pub").await;
    let properties = PublishProperties {
        content_type: Some("application/x".into()),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    v5_pub
        .client
        .publish_with_properties("mix/from5", QoS::ExactlyOnce, false, "payload", properties)
        .await
        .unwrap();
    // The 3.1.1 subscriber gets the message intact, without properties.
    let got = v3_sub.recv().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("mix/from5", &b"payload"[..])
    );
    assert_eq!(got.qos, rumqttc::QoS::ExactlyOnce);
    let got = v5_sub.recv().await;
    assert_eq!(
        got.properties.unwrap().content_type.as_deref(),
        Some("application/x")
    );
}
