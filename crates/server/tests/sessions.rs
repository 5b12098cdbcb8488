//! Persistent sessions (clean session 0): subscriptions survive, QoS 1/2 messages queue while the
//! client is away (bounded, oldest dropped), session present flag [MQTT-3.2.2-1 .. -3].

mod common;

use std::time::Duration;

use common::*;
use rumqttc::QoS as R;

fn persistent(broker: &TestBroker, id: &str) -> rumqttc::MqttOptions {
    let mut options = options(broker.addr, id);
    options.set_clean_session(false);
    options
}

#[tokio::test]
async fn no_session_present_for_a_first_persistent_connection_mqtt_3_2_2_3() {
    let broker = start().await;
    let (_client, connack) = Client::connect(persistent(&broker, "first-time")).await;
    assert!(!connack.session_present);
}

#[tokio::test]
async fn queued_messages_are_delivered_in_order_on_return_mqtt_3_2_2_2() {
    let broker = start().await;
    let (mut subscriber, _) = Client::connect(persistent(&broker, "away")).await;
    subscriber.subscribe("away/#", R::ExactlyOnce).await;
    subscriber.disconnect().await;

    let publisher = Client::simple(broker.addr, "away-pub").await;
    for n in 0..20u8 {
        let qos = if n % 2 == 0 {
            R::AtLeastOnce
        } else {
            R::ExactlyOnce
        };
        publisher.publish("away/t", qos, false, vec![n]).await;
    }
    publisher
        .publish("away/t", R::AtMostOnce, false, vec![99])
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        broker.broker.session("away").unwrap().queued_len(),
        20,
        "QoS 0 not queued by default"
    );

    let (mut subscriber, connack) = Client::connect(persistent(&broker, "away")).await;
    assert!(connack.session_present, "[MQTT-3.2.2-2]");
    for n in 0..20u8 {
        let publish = subscriber.recv().await;
        assert_eq!(publish.payload[..], [n]);
    }
    subscriber.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn subscriptions_survive_a_disconnect() {
    let broker = start().await;
    let (mut subscriber, _) = Client::connect(persistent(&broker, "keeps-subs")).await;
    subscriber.subscribe("keep/t", R::AtLeastOnce).await;
    subscriber.disconnect().await;
    let (mut subscriber, connack) = Client::connect(persistent(&broker, "keeps-subs")).await;
    assert!(connack.session_present);
    let publisher = Client::simple(broker.addr, "keeps-subs-pub").await;
    publisher
        .publish("keep/t", R::AtLeastOnce, false, "still")
        .await;
    assert_eq!(&subscriber.recv().await.payload[..], b"still");
}

#[tokio::test]
async fn clean_session_discards_the_stored_session_mqtt_3_2_2_1() {
    let broker = start().await;
    let (mut subscriber, _) = Client::connect(persistent(&broker, "cleaned")).await;
    subscriber.subscribe("cleaned/t", R::AtLeastOnce).await;
    subscriber.disconnect().await;
    let publisher = Client::simple(broker.addr, "cleaned-pub").await;
    publisher
        .publish("cleaned/t", R::AtLeastOnce, false, "lost")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (mut clean, connack) = Client::connect(options(broker.addr, "cleaned")).await;
    assert!(!connack.session_present);
    clean.expect_silence(Duration::from_millis(300)).await;
    publisher
        .publish("cleaned/t", R::AtLeastOnce, false, "unsubscribed")
        .await;
    clean.expect_silence(Duration::from_millis(300)).await;
    clean.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        broker.broker.session("cleaned").is_none(),
        "a clean session ends with its connection"
    );
}

#[tokio::test]
async fn queue_overflow_drops_the_oldest_and_counts_it() {
    let mut config = config();
    config.limits.max_queued_messages = 5;
    let broker = start_with(config).await;
    let (mut subscriber, _) = Client::connect(persistent(&broker, "overflow")).await;
    subscriber.subscribe("overflow/t", R::AtLeastOnce).await;
    subscriber.disconnect().await;
    let publisher = Client::simple(broker.addr, "overflow-pub").await;
    for n in 0..8u8 {
        publisher
            .publish("overflow/t", R::AtLeastOnce, false, vec![n])
            .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let session = broker.broker.session("overflow").unwrap();
    assert_eq!(session.queued_len(), 5);
    assert_eq!(session.dropped_count(), 3);
    assert_eq!(
        broker
            .broker
            .metrics()
            .snapshot()
            .messages_dropped_queue_full,
        3
    );
    let (mut subscriber, _) = Client::connect(persistent(&broker, "overflow")).await;
    for n in 3..8u8 {
        assert_eq!(subscriber.recv().await.payload[..], [n]);
    }
}

#[tokio::test]
async fn qos0_is_queued_offline_when_configured() {
    let mut config = config();
    config.mqtt.queue_qos0_offline = true;
    let broker = start_with(config).await;
    let (mut subscriber, _) = Client::connect(persistent(&broker, "q0-queue")).await;
    subscriber.subscribe("q0q/t", R::AtMostOnce).await;
    subscriber.disconnect().await;
    let publisher = Client::simple(broker.addr, "q0-queue-pub").await;
    publisher
        .publish("q0q/t", R::AtMostOnce, false, "kept")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut subscriber, _) = Client::connect(persistent(&broker, "q0-queue")).await;
    assert_eq!(&subscriber.recv().await.payload[..], b"kept");
}

#[tokio::test]
async fn persistent_session_expiry_for_3x_is_configurable() {
    let mut config = config();
    config.mqtt.persistent_session_expiry = 1;
    let broker = start_with(config).await;
    let (mut subscriber, _) = Client::connect(persistent(&broker, "expiring")).await;
    subscriber.subscribe("exp/t", R::AtLeastOnce).await;
    subscriber.disconnect().await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert!(broker.broker.session("expiring").is_none());
    assert_eq!(broker.broker.subscription_count(), 0);
    let (_subscriber, connack) = Client::connect(persistent(&broker, "expiring")).await;
    assert!(!connack.session_present);
}
