//! MQTT 5 PUBLISH (section 3.3): properties passed through, message expiry, topic aliases both
//! ways, flow control, maximum packet size, PUBACK reason codes, request/response, and messages
//! crossing between 3.1.1 and 5 clients.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::v5::{Client5, QoS, options};
use common::*;
use rumqttc::v5::Event;
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason, PublishProperties};
use tern_codec::{Ack, Packet, Properties, ProtocolVersion, Publish, ReasonCode};

const V5: ProtocolVersion = ProtocolVersion::V5;

async fn puback_reason(client: &mut Client5) -> PubAckReason {
    client
        .next_matching(|event| match event {
            Event::Incoming(P5::PubAck(ack)) => Some(ack.reason),
            _ => None,
        })
        .await
        .expect("PUBACK")
}

async fn disconnect_reason(raw: &mut Raw) -> ReasonCode {
    let packets = raw.until_closed().await;
    match packets.last() {
        Some(Packet::Disconnect(disconnect)) => disconnect.reason_code,
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

fn publish5(topic: &str, qos: tern_codec::QoS, packet_id: u16, payload: &'static [u8]) -> Publish {
    publish_packet(topic, qos, packet_id, payload)
}

#[tokio::test]
async fn message_properties_pass_through_in_order_mqtt_3_3_2() {
    let broker = start().await;
    let mut subscriber = Client5::simple(broker.addr, "props-sub").await;
    subscriber.subscribe("props/t", QoS::AtLeastOnce).await;
    let publisher = Client5::simple(broker.addr, "props-pub").await;
    let properties = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("props/reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties(
            "props/t",
            QoS::AtLeastOnce,
            false,
            "héllo",
            properties.clone(),
        )
        .await
        .unwrap();
    let publish = subscriber.recv().await;
    let got = publish.properties.expect("properties");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.response_topic.as_deref(), Some("props/reply"));
    assert_eq!(got.correlation_data, properties.correlation_data);
    assert_eq!(
        got.user_properties, properties.user_properties,
        "user properties in order"
    );
}

#[tokio::test]
async fn expired_messages_are_not_delivered_mqtt_3_3_2_5() {
    let broker = start().await;
    let mut opts = options(broker.addr, "expiry-sub");
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(300));
    let (mut subscriber, _) = Client5::connect(opts.clone()).await;
    subscriber.subscribe("expiry/t", QoS::AtLeastOnce).await;
    subscriber.disconnect().await;
    let publisher = Client5::simple(broker.addr, "expiry-pub").await;
    let short = PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    let long = PublishProperties {
        message_expiry_interval: Some(100),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("expiry/t", QoS::AtLeastOnce, false, "short", short)
        .await
        .unwrap();
    publisher
        .client
        .publish_with_properties("expiry/t", QoS::AtLeastOnce, false, "long", long)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (mut subscriber, _) = Client5::connect(opts).await;
    let publish = subscriber.recv().await;
    assert_eq!(&publish.payload[..], b"long", "the expired one is dropped");
    // Forwarded with the time it has left [MQTT-3.3.2-6].
    let left = publish.properties.unwrap().message_expiry_interval.unwrap();
    assert!((97..=99).contains(&left), "{left}");
    subscriber.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn inbound_topic_alias_stands_for_its_topic_mqtt_3_3_2_12() {
    let broker = start().await;
    let mut subscriber = Client5::simple(broker.addr, "alias-sub").await;
    subscriber.subscribe("alias/#", QoS::AtMostOnce).await;
    let (mut raw, connack) =
        Raw::connected(broker.addr, V5, connect_packet(V5, "alias-pub", true, 30)).await;
    assert!(connack.properties.topic_alias_maximum.unwrap() >= 2);
    let mut first = publish5("alias/long/topic", tern_codec::QoS::AtMostOnce, 0, b"1");
    first.properties.topic_alias = Some(2);
    raw.send(&Packet::Publish(first)).await;
    let mut second = publish5("", tern_codec::QoS::AtMostOnce, 0, b"2");
    second.topic = Default::default();
    second.properties.topic_alias = Some(2);
    raw.send(&Packet::Publish(second)).await;
    for payload in [b"1", b"2"] {
        let publish = subscriber.recv().await;
        assert_eq!(&publish.topic[..], b"alias/long/topic");
        assert_eq!(&publish.payload[..], payload);
    }
}

#[tokio::test]
async fn topic_alias_out_of_range_gets_0x94_and_unknown_alias_0x82() {
    let mut config = config();
    config.limits.topic_alias_maximum = 3;
    let broker = start_with(config).await;
    let (mut raw, _) =
        Raw::connected(broker.addr, V5, connect_packet(V5, "alias-bad", true, 30)).await;
    let mut publish = publish5("a", tern_codec::QoS::AtMostOnce, 0, b"x");
    publish.properties.topic_alias = Some(4);
    raw.send(&Packet::Publish(publish)).await;
    assert_eq!(
        disconnect_reason(&mut raw).await,
        ReasonCode::TopicAliasInvalid
    );

    let (mut raw, _) =
        Raw::connected(broker.addr, V5, connect_packet(V5, "alias-zero", true, 30)).await;
    // Topic alias 0, written by hand: PUBLISH QoS 0 "a", properties [0x23 0x0000].
    raw.send_bytes(&[0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00])
        .await;
    assert_eq!(
        disconnect_reason(&mut raw).await,
        ReasonCode::TopicAliasInvalid
    );

    let (mut raw, _) =
        Raw::connected(broker.addr, V5, connect_packet(V5, "alias-unset", true, 30)).await;
    let mut publish = publish5("a", tern_codec::QoS::AtMostOnce, 0, b"x");
    publish.topic = Default::default();
    publish.properties.topic_alias = Some(1);
    raw.send(&Packet::Publish(publish)).await;
    assert_eq!(disconnect_reason(&mut raw).await, ReasonCode::ProtocolError);
}

#[tokio::test]
async fn outbound_topic_aliases_replace_repeated_topics() {
    let broker = start().await;
    let mut connect = connect_packet(V5, "alias-out", true, 30);
    connect.properties.topic_alias_maximum = Some(5);
    let (mut raw, _) = Raw::connected(broker.addr, V5, connect).await;
    raw.send(&subscribe_packet(
        1,
        &[("out/#", tern_codec::QoS::AtMostOnce)],
    ))
    .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    let publisher = Client5::simple(broker.addr, "alias-out-pub").await;
    for payload in ["1", "2"] {
        publisher
            .client
            .publish("out/t", QoS::AtMostOnce, false, payload)
            .await
            .unwrap();
    }
    let Some(Packet::Publish(first)) = raw.recv().await else {
        panic!()
    };
    let Some(Packet::Publish(second)) = raw.recv().await else {
        panic!()
    };
    assert_eq!(first.topic, "out/t");
    let alias = first
        .properties
        .topic_alias
        .expect("an alias with the first");
    assert!((1..=5).contains(&alias));
    assert_eq!(second.topic, "", "the topic is left out the second time");
    assert_eq!(second.properties.topic_alias, Some(alias));

    // A client that allows no aliases gets none [MQTT-3.3.2-11].
    let mut plain = Client5::simple(broker.addr, "alias-none").await;
    plain.subscribe("out/#", QoS::AtMostOnce).await;
    publisher
        .client
        .publish("out/t", QoS::AtMostOnce, false, "3")
        .await
        .unwrap();
    let publish = plain.recv().await;
    assert_eq!(&publish.topic[..], b"out/t");
    assert_eq!(publish.properties.and_then(|p| p.topic_alias), None);
}

#[tokio::test]
async fn message_over_the_client_maximum_packet_size_is_dropped_mqtt_3_1_2_25() {
    let broker = start().await;
    let mut connect = connect_packet(V5, "small-client", true, 30);
    connect.properties.maximum_packet_size = Some(64);
    let (mut raw, _) = Raw::connected(broker.addr, V5, connect).await;
    raw.send(&subscribe_packet(
        1,
        &[("small/t", tern_codec::QoS::AtLeastOnce)],
    ))
    .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    let publisher = Client5::simple(broker.addr, "small-pub").await;
    publisher
        .client
        .publish("small/t", QoS::AtLeastOnce, false, vec![0u8; 200])
        .await
        .unwrap();
    publisher
        .client
        .publish("small/t", QoS::AtLeastOnce, false, "fits")
        .await
        .unwrap();
    let Some(Packet::Publish(publish)) = raw.recv().await else {
        panic!()
    };
    assert_eq!(&publish.payload[..], b"fits");
    // The big one behaves as if sent: it is not waiting in flight.
    raw.send(&Packet::PubAck(Ack::new(publish.packet_id))).await;
    raw.send(&Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
    assert_eq!(
        broker
            .broker
            .session("small-client")
            .unwrap()
            .inflight_len(),
        0
    );
    assert_eq!(
        broker
            .broker
            .metrics()
            .snapshot()
            .messages_dropped_too_large,
        1
    );
}

#[tokio::test]
async fn puback_reason_codes_0x10_0x87_0x97_0x99() {
    let mut config = config();
    config.limits.max_retained_messages = 1;
    let broker = start_with(config).await;
    let mut client = Client5::simple(broker.addr, "codes5").await;
    client
        .client
        .publish("nobody/listens", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert_eq!(
        puback_reason(&mut client).await,
        PubAckReason::NoMatchingSubscribers
    );
    client
        .client
        .publish("$SYS/forbidden", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert_eq!(
        puback_reason(&mut client).await,
        PubAckReason::NotAuthorized
    );
    client
        .client
        .publish("quota/1", QoS::AtLeastOnce, true, "x")
        .await
        .unwrap();
    assert_eq!(
        puback_reason(&mut client).await,
        PubAckReason::NoMatchingSubscribers
    );
    client
        .client
        .publish("quota/2", QoS::AtLeastOnce, true, "x")
        .await
        .unwrap();
    assert_eq!(
        puback_reason(&mut client).await,
        PubAckReason::QuotaExceeded
    );
    let not_utf8 = PublishProperties {
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    client
        .client
        .publish_with_properties("fmt/t", QoS::AtLeastOnce, false, vec![0xFF, 0xFE], not_utf8)
        .await
        .unwrap();
    assert_eq!(
        puback_reason(&mut client).await,
        PubAckReason::PayloadFormatInvalid
    );
}

#[tokio::test]
async fn reason_strings_only_when_the_client_allows_problem_information_mqtt_3_1_2_29() {
    let broker = start().await;
    for (allow, id) in [(None, "problems-yes"), (Some(false), "problems-no")] {
        let mut connect = connect_packet(V5, id, true, 30);
        connect.properties.request_problem_information = allow;
        let (mut raw, _) = Raw::connected(broker.addr, V5, connect).await;
        raw.send(&Packet::Publish(publish5(
            "$SYS/x",
            tern_codec::QoS::AtLeastOnce,
            5,
            b"x",
        )))
        .await;
        let Some(Packet::PubAck(ack)) = raw.recv().await else {
            panic!()
        };
        assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
        assert_eq!(
            ack.properties.reason_string.is_some(),
            allow.is_none(),
            "{id}"
        );
    }
}

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

#[tokio::test]
async fn client_may_not_send_a_subscription_identifier_in_publish_mqtt_3_3_4_6() {
    let broker = start().await;
    let (mut raw, _) =
        Raw::connected(broker.addr, V5, connect_packet(V5, "subid-pub", true, 30)).await;
    let mut publish = publish5("x/y", tern_codec::QoS::AtMostOnce, 0, b"x");
    publish.properties = Properties {
        subscription_identifiers: vec![3],
        ..Properties::default()
    };
    raw.send(&Packet::Publish(publish)).await;
    assert_eq!(disconnect_reason(&mut raw).await, ReasonCode::ProtocolError);
}
