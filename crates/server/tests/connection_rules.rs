//! Connections through real sockets: a take-over closes the old client's socket, and shutdown
//! closes every connection. The CONNECT rules themselves (CONNECT first and once, client
//! identifiers, protocol levels, keep-alive, the connect timeout) are tested on the core's
//! harness in `crates/broker/tests/connect.rs` and `keep_alive.rs`.

mod common;

use std::time::{Duration, Instant};

use common::*;

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
async fn server_shutdown_closes_connections_and_returns() {
    let broker = start().await;
    let mut client = Client::simple(broker.addr, "at-shutdown").await;
    let started = Instant::now();
    broker.shutdown().await;
    client.closed().await;
    assert!(started.elapsed() < Duration::from_secs(5));
}
