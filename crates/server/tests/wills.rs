//! Wills through a real client (rumqttc): the socket goes without DISCONNECT, the will is
//! published and, retained, kept. The will rules themselves are tested on the core's harness in
//! `crates/broker/tests/will.rs`.

mod common;

use common::*;
use rumqttc::{LastWill, QoS as R};

#[tokio::test]
async fn retained_will_is_published_when_the_socket_closes_and_kept_mqtt_3_1_2_8() {
    let broker = start().await;
    let mut watcher = Client::simple(broker.addr, "ret-will-watch").await;
    watcher.subscribe("status/#", R::AtLeastOnce).await;
    let mut options = options(broker.addr, "ret-will");
    options.set_last_will(LastWill::new(
        "status/ret-will",
        "offline",
        R::AtLeastOnce,
        true,
    ));
    let (client, _) = Client::connect(options).await;
    client.kill();
    let publish = watcher.recv().await;
    assert_eq!(&publish.payload[..], b"offline");
    assert_eq!(publish.qos, R::AtLeastOnce, "published with the will QoS");
    let mut late = Client::simple(broker.addr, "ret-will-late").await;
    late.subscribe("status/#", R::AtLeastOnce).await;
    let publish = late.recv().await;
    assert!(publish.retain);
    assert_eq!(&publish.payload[..], b"offline");
}
