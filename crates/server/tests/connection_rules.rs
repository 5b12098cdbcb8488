//! Connection rules of MQTT 3.1 and 3.1.1 (section 3.1): CONNECT first and once, client
//! identifiers, protocol levels, take-over, keep-alive, PINGREQ, the connect timeout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tern_codec::{Packet, ProtocolVersion, QoS, ReasonCode};

#[tokio::test]
async fn first_packet_must_be_connect_mqtt_3_1_0_1() {
    let broker = start().await;
    let mut raw = Raw::open(broker.addr, ProtocolVersion::V311).await;
    raw.send(&Packet::PingReq).await;
    // No CONNACK, no PINGRESP: the connection is closed.
    assert_eq!(raw.until_closed().await, vec![]);
}

#[tokio::test]
async fn second_connect_is_a_protocol_violation_mqtt_3_1_0_2() {
    let broker = start().await;
    let connect = connect_packet(ProtocolVersion::V311, "twice", true, 30);
    let (mut raw, connack) =
        Raw::connected(broker.addr, ProtocolVersion::V311, connect.clone()).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    raw.send(&Packet::Connect(Box::new(connect))).await;
    assert_eq!(raw.until_closed().await, vec![]);
}

#[tokio::test]
async fn no_connect_within_the_timeout_closes_the_socket() {
    let mut config = config();
    config.limits.connect_timeout = 1;
    let broker = start_with(config).await;
    let started = Instant::now();
    let mut raw = Raw::open(broker.addr, ProtocolVersion::V311).await;
    assert_eq!(raw.until_closed().await, vec![]);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_0x01_mqtt_3_1_2_2() {
    let broker = start().await;
    let mut raw = Raw::open(broker.addr, ProtocolVersion::V311).await;
    // "MQTT" with level 3 (3.1 uses "MQIsdp"): CONNECT of 3.1.1 form, unsupported level.
    raw.send_bytes(&[
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x03, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ])
    .await;
    let mut bytes = Vec::new();
    raw.stream_read_to_end(&mut bytes).await;
    // CONNACK, session present 0, return code 1 (unacceptable protocol version).
    assert_eq!(bytes, vec![0x20, 0x02, 0x00, 0x01]);
}

#[tokio::test]
async fn unknown_protocol_level_above_5_gets_connack_0x01_mqtt_3_1_2_2() {
    let broker = start().await;
    let mut raw = Raw::open(broker.addr, ProtocolVersion::V5).await;
    raw.send_bytes(&[
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ])
    .await;
    let mut bytes = Vec::new();
    raw.stream_read_to_end(&mut bytes).await;
    // The 3.1.1 layout, return code 1: the answer a client of any level can read.
    assert_eq!(bytes, vec![0x20, 0x02, 0x00, 0x01]);
}

#[tokio::test]
async fn empty_client_id_with_clean_session_gets_one_assigned_mqtt_3_1_3_6() {
    let broker = start().await;
    let (mut client, connack) = Client::connect(options(broker.addr, "")).await;
    assert_eq!(connack.code, rumqttc::ConnectReturnCode::Success);
    // The assigned identifier works like any other: the client can subscribe and receive.
    client
        .subscribe("assigned/t", rumqttc::QoS::AtLeastOnce)
        .await;
    client
        .publish("assigned/t", rumqttc::QoS::AtLeastOnce, false, "x")
        .await;
    assert_eq!(&client.recv().await.payload[..], b"x");
    assert_eq!(broker.broker.session_count(), 1);
}

#[tokio::test]
async fn empty_client_id_without_clean_session_is_refused_0x02_mqtt_3_1_3_8() {
    let broker = start().await;
    let connect = connect_packet(ProtocolVersion::V311, "", false, 30);
    let (mut raw, connack) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    assert_eq!(connack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert!(!connack.session_present, "[MQTT-3.2.2-4]");
    assert_eq!(raw.until_closed().await, vec![]);
}

#[tokio::test]
async fn mqtt31_client_connects_and_an_empty_id_is_refused() {
    let broker = start().await;
    let connect = connect_packet(ProtocolVersion::V31, "old-client", true, 30);
    let (mut raw, connack) = Raw::connected(broker.addr, ProtocolVersion::V31, connect).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    raw.send(&subscribe_packet(1, &[("v31/t", QoS::AtLeastOnce)]))
        .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    raw.send(&Packet::Publish(publish_packet(
        "v31/t",
        QoS::AtLeastOnce,
        9,
        b"hi",
    )))
    .await;
    let mut got_puback = false;
    let mut got_publish = false;
    while !(got_puback && got_publish) {
        match raw.recv().await {
            Some(Packet::PubAck(ack)) => got_puback = ack.packet_id == 9,
            Some(Packet::Publish(publish)) => got_publish = &publish.payload[..] == b"hi",
            other => panic!("unexpected {other:?}"),
        }
    }

    let connect = connect_packet(ProtocolVersion::V31, "", true, 30);
    let (_, connack) = Raw::connected(broker.addr, ProtocolVersion::V31, connect).await;
    assert_eq!(connack.reason_code, ReasonCode::ClientIdentifierNotValid);
}

#[tokio::test]
async fn same_client_id_closes_the_existing_connection_mqtt_3_1_4_2() {
    let broker = start().await;
    let mut first = Client::simple(broker.addr, "dup-id").await;
    let mut second = Client::simple(broker.addr, "dup-id").await;
    first.closed().await;
    // The new connection is the one that works.
    second
        .subscribe("takeover/t", rumqttc::QoS::AtMostOnce)
        .await;
    second
        .publish("takeover/t", rumqttc::QoS::AtMostOnce, false, "ok")
        .await;
    assert_eq!(&second.recv().await.payload[..], b"ok");
}

#[tokio::test]
async fn keep_alive_is_enforced_at_one_and_a_half_times_mqtt_3_1_2_24() {
    let broker = start().await;
    let connect = connect_packet(ProtocolVersion::V311, "sleepy", true, 1);
    let started = Instant::now();
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    assert_eq!(raw.until_closed().await, vec![]);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_millis(3000),
        "closed after {waited:?}, expected about 1.5 s"
    );
}

#[tokio::test]
async fn packets_keep_the_connection_alive_and_pingreq_gets_pingresp_mqtt_3_12_4_1() {
    let broker = start().await;
    let connect = connect_packet(ProtocolVersion::V311, "pinger", true, 1);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        raw.send(&Packet::PingReq).await;
        assert_eq!(raw.recv().await, Some(Packet::PingResp));
    }
}

#[tokio::test]
async fn keep_alive_zero_turns_the_timer_off() {
    let mut config = config();
    config.limits.connect_timeout = 1;
    let broker = start_with(config).await;
    let connect = connect_packet(ProtocolVersion::V311, "forever", true, 0);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    assert!(
        raw.recv_within(Duration::from_millis(1500)).await.is_err(),
        "still open"
    );
}

#[tokio::test]
async fn server_shutdown_closes_connections_and_returns() {
    let broker = start().await;
    let mut client = Client::simple(broker.addr, "at-shutdown").await;
    let started = Instant::now();
    broker.shutdown().await;
    client.closed().await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

trait ReadToEnd {
    async fn stream_read_to_end(&mut self, out: &mut Vec<u8>);
}

impl ReadToEnd for Raw {
    async fn stream_read_to_end(&mut self, out: &mut Vec<u8>) {
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(WAIT, self.stream.read_to_end(out))
            .await
            .expect("broker closes in time")
            .expect("read");
    }
}
