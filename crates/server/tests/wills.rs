//! Will messages (MQTT 3.1.1 section 3.1.2.5): published when the connection ends without
//! DISCONNECT, never after one [MQTT-3.1.2-8, MQTT-3.1.2-10].

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use rumqttc::{LastWill, QoS as R};
use tern_codec::{Packet, ProtocolVersion, QoS, Will};

fn with_will(
    id: &str,
    topic: &str,
    payload: &'static [u8],
    qos: QoS,
    retain: bool,
) -> tern_codec::Connect {
    let mut connect = connect_packet(ProtocolVersion::V311, id, true, 30);
    connect.will = Some(Will {
        topic: text(topic),
        payload: Bytes::from_static(payload),
        qos,
        retain,
        properties: Default::default(),
    });
    connect
}

async fn watcher(broker: &TestBroker, id: &str, filter: &str) -> Client {
    let mut client = Client::simple(broker.addr, id).await;
    client.subscribe(filter, R::ExactlyOnce).await;
    client
}

#[tokio::test]
async fn will_is_published_when_the_socket_closes_mqtt_3_1_2_8() {
    let broker = start().await;
    let mut watcher = watcher(&broker, "will-watch", "will/#").await;
    let connect = with_will("will-dies", "will/dies", b"gone", QoS::AtLeastOnce, false);
    let (raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    drop(raw);
    let publish = watcher.recv().await;
    assert_eq!(publish.topic, "will/dies");
    assert_eq!(&publish.payload[..], b"gone");
    assert_eq!(publish.qos, R::AtLeastOnce, "published with the will QoS");
}

#[tokio::test]
async fn will_is_not_published_after_disconnect_mqtt_3_1_2_10() {
    let broker = start().await;
    let mut watcher = watcher(&broker, "nowill-watch", "nowill/#").await;
    let connect = with_will("nowill", "nowill/t", b"never", QoS::AtMostOnce, false);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    raw.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(raw.until_closed().await, vec![]);
    watcher.expect_silence(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn will_is_published_on_keep_alive_timeout() {
    let broker = start().await;
    let mut watcher = watcher(&broker, "ka-watch", "ka/#").await;
    let mut connect = with_will("ka-will", "ka/will", b"timeout", QoS::AtMostOnce, false);
    connect.keep_alive = 1;
    let (_raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    assert_eq!(&watcher.recv().await.payload[..], b"timeout");
}

#[tokio::test]
async fn will_is_published_after_a_protocol_violation() {
    let broker = start().await;
    let mut watcher = watcher(&broker, "pv-watch", "pv/#").await;
    let connect = with_will("pv-will", "pv/will", b"violated", QoS::AtMostOnce, false);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    raw.send_bytes(&[0x00, 0x00]).await; // reserved packet type 0
    assert_eq!(raw.until_closed().await, vec![]);
    assert_eq!(&watcher.recv().await.payload[..], b"violated");
}

#[tokio::test]
async fn will_is_published_when_the_session_is_taken_over() {
    let broker = start().await;
    let mut watcher = watcher(&broker, "to-watch", "to/#").await;
    let connect = with_will("to-will", "to/will", b"taken", QoS::AtMostOnce, false);
    let (mut old, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    let _new = Client::simple(broker.addr, "to-will").await;
    assert_eq!(old.until_closed().await, vec![]);
    assert_eq!(&watcher.recv().await.payload[..], b"taken");
}

#[tokio::test]
async fn retained_will_is_kept_as_retained_message() {
    let broker = start().await;
    let mut options = options(broker.addr, "ret-will");
    options.set_last_will(LastWill::new(
        "status/ret-will",
        "offline",
        R::AtLeastOnce,
        true,
    ));
    let (client, _) = Client::connect(options).await;
    client.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut late = Client::simple(broker.addr, "ret-will-late").await;
    late.subscribe("status/#", R::AtLeastOnce).await;
    let publish = late.recv().await;
    assert!(publish.retain);
    assert_eq!(&publish.payload[..], b"offline");
}
