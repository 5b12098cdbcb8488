//! State that survives a restart of the broker: persistent sessions with their subscriptions,
//! queued and in-flight messages, inbound QoS 2 identifiers, and retained messages. Each test
//! stops the server gracefully and starts a new one on the same data directory.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rumqttc::QoS as R;
use tern_codec::{Ack, Packet, ProtocolVersion, QoS};
use tern_server::{Durability, ServerConfig};

/// A fresh directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("tern-{name}-{}-{nanos}", std::process::id()));
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stored(dir: &TempDir) -> ServerConfig {
    let mut config = config();
    config.durability = Durability::Process;
    config.data_dir = dir.path().to_path_buf();
    config
}

fn persistent(broker: &TestBroker, id: &str) -> rumqttc::MqttOptions {
    let mut options = options(broker.addr, id);
    options.set_clean_session(false);
    options
}

#[tokio::test]
async fn queued_messages_and_retained_survive_a_restart_in_order() {
    let dir = TempDir::new("queued");
    let broker = start_with(stored(&dir)).await;
    let (mut subscriber, _) = Client::connect(persistent(&broker, "keeps")).await;
    subscriber.subscribe("restart/q/#", R::ExactlyOnce).await;
    subscriber.disconnect().await;
    let publisher = Client::simple(broker.addr, "restart-pub").await;
    for n in 0..60u32 {
        let qos = if n % 2 == 0 {
            R::AtLeastOnce
        } else {
            R::ExactlyOnce
        };
        publisher
            .publish("restart/q/t", qos, false, n.to_be_bytes().to_vec())
            .await;
    }
    for n in 0..10u32 {
        publisher
            .publish(
                &format!("restart/r/{n}"),
                R::AtLeastOnce,
                true,
                n.to_be_bytes().to_vec(),
            )
            .await;
    }
    publisher.disconnect().await;
    broker.shutdown().await;

    let broker = start_with(stored(&dir)).await;
    assert_eq!(broker.broker.retained_count(), 10);
    let (mut subscriber, connack) = Client::connect(persistent(&broker, "keeps")).await;
    assert!(
        connack.session_present,
        "the session came back [MQTT-3.2.2-2]"
    );
    for n in 0..60u32 {
        let publish = subscriber.recv().await;
        assert_eq!(
            publish.payload[..],
            n.to_be_bytes(),
            "in order, nothing missing"
        );
        let expected = if n % 2 == 0 {
            R::AtLeastOnce
        } else {
            R::ExactlyOnce
        };
        assert_eq!(publish.qos, expected);
    }
    // Nothing more was kept: a message published now is the next to arrive.
    let marker = Client::simple(broker.addr, "restart-marker").await;
    marker
        .publish("restart/q/t", R::AtLeastOnce, false, "marker")
        .await;
    assert_eq!(&subscriber.recv().await.payload[..], b"marker");
    let mut late = Client::simple(broker.addr, "late").await;
    late.subscribe("restart/r/#", R::AtLeastOnce).await;
    let mut values = Vec::new();
    for _ in 0..10 {
        let publish = late.recv().await;
        assert!(publish.retain);
        values.push(u32::from_be_bytes(publish.payload[..4].try_into().unwrap()));
    }
    values.sort();
    assert_eq!(values, (0..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn unacknowledged_messages_come_back_with_dup_after_a_restart_mqtt_4_4_0_1() {
    let dir = TempDir::new("inflight");
    let broker = start_with(stored(&dir)).await;
    let connect = connect_packet(ProtocolVersion::V311, "inflight", false, 30);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect.clone()).await;
    raw.send(&subscribe_packet(1, &[("if/#", QoS::ExactlyOnce)]))
        .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    let publisher = Client::simple(broker.addr, "if-pub").await;
    publisher
        .publish("if/1", R::AtLeastOnce, false, "one")
        .await;
    publisher
        .publish("if/2", R::ExactlyOnce, false, "two")
        .await;
    let mut sent = Vec::new();
    for _ in 0..2 {
        let Some(Packet::Publish(publish)) = raw.recv().await else {
            panic!("expected PUBLISH")
        };
        sent.push(publish);
    }
    drop(raw);
    offline(&broker, "inflight").await;
    broker.shutdown().await;

    let broker = start_with(stored(&dir)).await;
    let (mut raw, connack) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    assert!(connack.session_present);
    for original in &sent {
        let Some(Packet::Publish(again)) = raw.recv().await else {
            panic!("expected the PUBLISH again")
        };
        assert!(again.dup);
        assert_eq!(again.packet_id, original.packet_id);
        assert_eq!(again.payload, original.payload);
    }
    raw.send(&Packet::PubAck(Ack::new(sent[0].packet_id))).await;
    raw.send(&Packet::PubRec(Ack::new(sent[1].packet_id))).await;
    assert_eq!(
        raw.recv().await,
        Some(Packet::PubRel(Ack::new(sent[1].packet_id)))
    );
    raw.send(&Packet::PubComp(Ack::new(sent[1].packet_id)))
        .await;
    raw.send(&Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
    assert_eq!(broker.broker.session("inflight").unwrap().inflight_len(), 0);
}

/// A QoS 1 message for a connected persistent subscriber starts unstored; when the subscriber
/// does not acknowledge it in time, the broker stores it, and only then acknowledges it to the
/// publisher [MQTT-4.3.2-2 with the store's promise]. It comes back with DUP after a restart
/// [MQTT-4.4.0-1].
#[tokio::test]
async fn an_unacknowledged_delivery_to_a_connected_session_is_stored_before_the_puback() {
    let dir = TempDir::new("unstored");
    let broker = start_with(stored(&dir)).await;
    let mut options = persistent(&broker, "holds");
    options.set_manual_acks(true);
    let (mut subscriber, _) = Client::connect(options).await;
    subscriber.subscribe("unstored/#", R::AtLeastOnce).await;
    let mut publisher = Client::simple(broker.addr, "unstored-pub").await;
    publisher
        .publish("unstored/t", R::AtLeastOnce, false, b"kept".to_vec())
        .await;
    let first = subscriber.recv().await;
    assert!(!first.dup);
    // Never acknowledged by the subscriber, still connected: the PUBACK comes all the same.
    publisher
        .next_matching(|event| {
            matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(())
        })
        .await
        .expect("the publisher's PUBACK");
    subscriber.kill();
    publisher.disconnect().await;
    broker.shutdown().await;

    let broker = start_with(stored(&dir)).await;
    let (mut subscriber, connack) = Client::connect(persistent(&broker, "holds")).await;
    assert!(connack.session_present);
    let again = subscriber.recv().await;
    assert_eq!(&again.payload[..], b"kept");
    assert!(again.dup, "sent again with DUP [MQTT-3.3.1-1]");
}

#[tokio::test]
async fn inbound_qos2_stays_exactly_once_across_a_restart_mqtt_4_3_3_9() {
    let dir = TempDir::new("inbound-qos2");
    let broker = start_with(stored(&dir)).await;
    let (mut subscriber, _) = Client::connect(persistent(&broker, "q2-watch")).await;
    subscriber.subscribe("q2r/t", R::ExactlyOnce).await;
    let connect = connect_packet(ProtocolVersion::V311, "q2-sender", false, 30);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect.clone()).await;
    let publish = publish_packet("q2r/t", QoS::ExactlyOnce, 5, b"only once");
    raw.send(&Packet::Publish(publish.clone())).await;
    assert_eq!(raw.recv().await, Some(Packet::PubRec(Ack::new(5))));
    assert_eq!(&subscriber.recv().await.payload[..], b"only once");
    // The subscriber's side of the flow completes before it goes: a new rumqttc client would
    // not know the PUBREL the broker must otherwise send it again.
    subscriber
        .next_matching(|event| {
            matches!(
                event,
                rumqttc::Event::Outgoing(rumqttc::Outgoing::PubComp(_))
            )
            .then_some(())
        })
        .await
        .expect("PUBCOMP sent");
    subscriber.disconnect().await;
    drop(raw);
    offline(&broker, "q2-sender").await;
    broker.shutdown().await;

    let broker = start_with(stored(&dir)).await;
    let (mut subscriber, _) = Client::connect(persistent(&broker, "q2-watch")).await;
    let (mut raw, connack) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    assert!(connack.session_present);
    // The PUBCOMP never came, so the client sends the PUBLISH again: it is not forwarded twice.
    let mut again = publish;
    again.dup = true;
    raw.send(&Packet::Publish(again)).await;
    assert_eq!(raw.recv().await, Some(Packet::PubRec(Ack::new(5))));
    raw.send(&Packet::PubRel(Ack::new(5))).await;
    assert_eq!(raw.recv().await, Some(Packet::PubComp(Ack::new(5))));
    // Not forwarded again: the next message from the same client is the next to arrive.
    raw.send(&Packet::Publish(publish_packet(
        "q2r/t",
        QoS::AtMostOnce,
        0,
        b"marker",
    )))
    .await;
    assert_eq!(&subscriber.recv().await.payload[..], b"marker");
}

#[tokio::test]
async fn expired_sessions_are_dropped_at_load() {
    let dir = TempDir::new("expired");
    let broker = start_with(stored(&dir)).await;
    let mut connect = connect_packet(ProtocolVersion::V5, "short-lived", true, 30);
    connect.properties.session_expiry_interval = Some(1);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V5, connect).await;
    raw.send(&subscribe_packet(1, &[("exp/t", QoS::AtLeastOnce)]))
        .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    let mut keep = connect_packet(ProtocolVersion::V5, "long-lived", true, 30);
    keep.properties.session_expiry_interval = Some(3600);
    let (raw_keep, _) = Raw::connected(broker.addr, ProtocolVersion::V5, keep).await;
    drop(raw);
    drop(raw_keep);
    offline(&broker, "short-lived").await;
    offline(&broker, "long-lived").await;
    // The store counts the time offline on the wall clock, across the restart: more than the
    // one second of expiry must really pass.
    let offline_at = tokio::time::Instant::now();
    broker.shutdown().await;
    tokio::time::sleep_until(offline_at + Duration::from_millis(1100)).await;

    let broker = start_with(stored(&dir)).await;
    assert!(broker.broker.session("short-lived").is_none());
    assert!(broker.broker.session("long-lived").is_some());
    assert_eq!(broker.broker.subscription_count(), 0);
}

#[tokio::test]
async fn clean_sessions_and_qos0_never_reach_the_store() {
    let dir = TempDir::new("clean");
    let broker = start_with(stored(&dir)).await;
    let (mut clean, _) = Client::connect(options(broker.addr, "clean-one")).await;
    clean.subscribe("clean/t", R::AtLeastOnce).await;
    let (mut kept, _) = Client::connect(persistent(&broker, "kept-q0")).await;
    kept.subscribe("clean/t", R::AtMostOnce).await;
    kept.disconnect().await;
    let publisher = Client::simple(broker.addr, "clean-pub").await;
    publisher
        .publish("clean/t", R::AtMostOnce, false, "zero")
        .await;
    assert_eq!(&clean.recv().await.payload[..], b"zero");
    broker.shutdown().await;

    let broker = start_with(stored(&dir)).await;
    assert!(broker.broker.session("clean-one").is_none());
    let (mut kept, connack) = Client::connect(persistent(&broker, "kept-q0")).await;
    assert!(connack.session_present);
    // The QoS 0 message was not kept: a message published now is the first to arrive.
    let publisher = Client::simple(broker.addr, "clean-pub").await;
    publisher
        .publish("clean/t", R::AtLeastOnce, false, "marker")
        .await;
    assert_eq!(&kept.recv().await.payload[..], b"marker");
}

#[tokio::test]
async fn a_second_broker_cannot_open_the_same_data_directory() {
    let dir = TempDir::new("locked");
    let _first = start_with(stored(&dir)).await;
    let second = tern_server::Server::bind(stored(&dir)).await;
    let Err(error) = second else {
        panic!("the second broker must refuse the directory");
    };
    let text = error.to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
}
