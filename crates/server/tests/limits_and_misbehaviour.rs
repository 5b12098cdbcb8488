//! Misbehaving clients and limits at the socket: garbage, broken or half-sent packets, packets
//! refused from their fixed header, too many connections, a subscriber that never reads; each is
//! closed or contained, and a well-behaved client on the same broker is unaffected. What the
//! core answers to each packet is tested on its harness in `crates/broker/tests/limits.rs`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rumqttc::QoS as R;
use tern_codec::{Packet, ProtocolVersion, QoS};

/// A healthy client that proves the broker still works for others.
async fn healthy_roundtrip(broker: &TestBroker, id: &str) {
    let mut client = Client::simple(broker.addr, id).await;
    client.subscribe(&format!("{id}/t"), R::AtLeastOnce).await;
    client
        .publish(&format!("{id}/t"), R::AtLeastOnce, false, "fine")
        .await;
    assert_eq!(&client.recv().await.payload[..], b"fine");
}

#[tokio::test]
async fn garbage_instead_of_connect_is_closed_and_others_are_unaffected() {
    let broker = start().await;
    let mut raw = Raw::open(broker.addr, ProtocolVersion::V311).await;
    raw.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(raw.until_closed().await, vec![]);
    healthy_roundtrip(&broker, "after-garbage").await;
}

#[tokio::test]
async fn malformed_remaining_length_closes_mqtt_1_5_5_1() {
    let broker = start().await;
    let connect = connect_packet(ProtocolVersion::V311, "bad-length", true, 30);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    raw.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;
    assert_eq!(raw.until_closed().await, vec![]);
    healthy_roundtrip(&broker, "after-bad-length").await;
}

#[tokio::test]
async fn half_a_packet_then_silence_is_closed_by_the_keep_alive() {
    let broker = start().await;
    let connect = connect_packet(ProtocolVersion::V311, "half", true, 1);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    // A PUBLISH announcing 100 bytes, of which 3 arrive.
    raw.send_bytes(&[0x30, 100, 0x00, 0x01, b'a']).await;
    let started = Instant::now();
    assert_eq!(raw.until_closed().await, vec![]);
    assert!(started.elapsed() < Duration::from_secs(3));
    healthy_roundtrip(&broker, "after-half").await;
}

#[tokio::test]
async fn half_a_connect_then_silence_is_closed_by_the_connect_timeout() {
    let mut config = config();
    config.limits.connect_timeout = 1;
    let broker = start_with(config).await;
    let mut raw = Raw::open(broker.addr, ProtocolVersion::V311).await;
    raw.send_bytes(&[0x10, 0x20, 0x00, 0x04, b'M']).await;
    assert_eq!(raw.until_closed().await, vec![]);
}

#[tokio::test]
async fn packet_over_the_maximum_size_closes_before_it_is_buffered() {
    let mut config = config();
    config.limits.max_packet_size = 1024;
    let broker = start_with(config).await;
    let connect = connect_packet(ProtocolVersion::V311, "too-big", true, 30);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    // The fixed header alone announces 256 MB; the broker refuses without waiting for it.
    raw.send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    assert_eq!(raw.until_closed().await, vec![]);
    healthy_roundtrip(&broker, "after-too-big").await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed() {
    let mut config = config();
    config.limits.max_connections = 2;
    let broker = start_with(config).await;
    let _a = Client::simple(broker.addr, "limit-a").await;
    let _b = Client::simple(broker.addr, "limit-b").await;
    let mut third = Raw::open(broker.addr, ProtocolVersion::V311).await;
    third
        .send(&Packet::Connect(Box::new(connect_packet(
            ProtocolVersion::V311,
            "limit-c",
            true,
            30,
        ))))
        .await;
    assert_eq!(third.until_closed().await, vec![]);
}

#[tokio::test]
async fn a_subscriber_that_never_reads_does_not_slow_others() {
    let mut config = config();
    config.limits.max_queued_messages = 100;
    let broker = start_with(config).await;
    // The stuck subscriber: subscribes, then never reads a byte.
    let connect = connect_packet(ProtocolVersion::V311, "stuck", true, 0);
    let (mut stuck, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    stuck
        .send(&subscribe_packet(1, &[("flood/t", QoS::AtLeastOnce)]))
        .await;
    let mut reader = Client::simple(broker.addr, "flood-reader").await;
    reader.subscribe("flood/t", R::AtMostOnce).await;
    let publisher = Client::simple(broker.addr, "flood-pub").await;

    // Closed loop: each batch is published, then received by the healthy subscriber, so the
    // healthy one never falls behind by more than its own queue.
    let payload = vec![7u8; 1024];
    let started = Instant::now();
    for _batch in 0..100 {
        for _ in 0..50 {
            publisher
                .publish("flood/t", R::AtMostOnce, false, payload.clone())
                .await;
        }
        for _ in 0..50 {
            reader.recv().await;
        }
    }
    let elapsed = started.elapsed();
    let stuck_session = broker.broker.session("stuck").unwrap();
    assert!(
        stuck_session.queued_len() <= 100,
        "bounded: {}",
        stuck_session.queued_len()
    );
    assert!(
        stuck_session.dropped_count() > 0,
        "the stuck subscriber's own queue overflowed"
    );
    assert!(elapsed < Duration::from_secs(30));
    drop(stuck);
}
