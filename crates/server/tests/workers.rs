//! Several workers: a QoS 0 fan-out whose subscribers are spread over the workers reaches
//! every subscriber, each message once and in order [MQTT-4.6.0-6], through the workers'
//! inboxes (the core's `worker_post`), with QoS 1 subscribers of the same topic served beside
//! them. Clients are rumqttc over TCP; with four workers and a dozen subscribers the kernel
//! places subscribers on other workers than the publisher's (all on one: one chance in 4^12).

mod common;

use common::{Client, config, start_with};
use rumqttc::QoS;

#[tokio::test]
async fn qos0_fan_out_over_four_workers_reaches_everyone_once_in_order() {
    let broker = start_with(tern_server::ServerConfig {
        workers: 4,
        ..config()
    })
    .await;
    const SUBSCRIBERS: usize = 12;
    const MESSAGES: usize = 200;
    let mut subscribers = Vec::new();
    for n in 0..SUBSCRIBERS {
        let mut client = Client::simple(broker.addr, &format!("sub-{n}")).await;
        // Every third at QoS 1: its deliveries take the direct path.
        let qos = if n % 3 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        client.subscribe("fan/#", qos).await;
        subscribers.push(client);
    }
    let publisher = Client::simple(broker.addr, "pub").await;
    for n in 0..MESSAGES {
        publisher
            .publish("fan/out", QoS::AtMostOnce, false, n.to_string())
            .await;
    }
    for (index, subscriber) in subscribers.iter_mut().enumerate() {
        for n in 0..MESSAGES {
            let publish = subscriber.recv().await;
            assert_eq!(
                publish.payload.as_ref(),
                n.to_string().as_bytes(),
                "subscriber {index}, message {n}"
            );
        }
    }
    broker.shutdown().await;
}
