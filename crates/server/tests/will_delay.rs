//! A delayed MQTT 5 will through the server: the broker's timer task publishes it when the
//! delay runs out. The will delay rules and enhanced authentication are tested on the core's
//! harness in `crates/broker/tests/will.rs` and `enhanced_auth.rs`.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::v5::{Client5, QoS};
use common::*;
use tern_codec::{Properties, ProtocolVersion, Will};

const V5: ProtocolVersion = ProtocolVersion::V5;

#[tokio::test]
async fn will_waits_for_its_delay_mqtt_3_1_3_9() {
    let broker = start().await;
    let mut watcher = Client5::simple(broker.addr, "will-watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut connect = connect_packet(V5, "delayed", false, 30);
    connect.properties.session_expiry_interval = Some(60);
    connect.will = Some(Will {
        topic: text("wills/delayed"),
        payload: Bytes::from_static(b"gone"),
        qos: tern_codec::QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: Some(1),
            content_type: Some(text("text/plain")),
            ..Properties::default()
        },
    });
    let (raw, _) = Raw::connected(broker.addr, V5, connect).await;
    let dropped_at = Instant::now();
    drop(raw);
    let publish = watcher.recv().await;
    let waited = dropped_at.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "published after {waited:?}"
    );
    assert_eq!(&publish.payload[..], b"gone");
    assert_eq!(
        publish.properties.unwrap().content_type.as_deref(),
        Some("text/plain"),
        "will properties travel with it"
    );
}
