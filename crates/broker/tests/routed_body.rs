//! Every stored message body the router takes a reference on ([`Change::Message`]) gets its
//! release ([`Change::MessageRouted`]): otherwise the store would keep the body until the next
//! restart. The release is a guard's drop, so each path that stores a delivery — routing to an
//! offline session, a retained message streamed to a persistent subscriber, the sweep of
//! unstored deliveries, a shared subscription handing its messages to another member — is
//! checked here for a balanced count.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Recorder, connect, recorded_broker, text, transmit};
use tern_broker::Message;
use tern_codec::{Packet, Properties, Publish, QoS, Subscribe, Subscription, SubscriptionOptions};

fn balanced(recorder: &Recorder) -> (usize, usize) {
    let kinds = recorder.take_kinds();
    let count = |kind: &str| kinds.iter().filter(|k| **k == kind).count();
    (count("Message"), count("MessageRouted"))
}

fn publish(packet_id: u16, topic: &str) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: text(topic),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(b"v"),
    })
}

fn subscribe(filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 9,
        properties: Properties::default(),
        subscriptions: vec![Subscription {
            filter: text(filter),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
    })
}

#[test]
fn routing_to_an_offline_session_releases_the_body() {
    let (recorder, _broker, mut publisher, mut subscriber, now) =
        recorded_broker("m/#", QoS::AtLeastOnce, true);
    subscriber.handle_transport_closed(now);
    recorder.take();
    publisher.handle_packet(publish(1, "m/1"), now);
    let (bodies, released) = balanced(&recorder);
    assert_eq!((bodies, released), (1, 1));
}

#[test]
fn a_sweep_of_unstored_deliveries_releases_each_body() {
    let (recorder, broker, mut publisher, mut subscriber, now) =
        recorded_broker("m/#", QoS::AtLeastOnce, true);
    for id in 1..=3 {
        publisher.handle_packet(publish(id, "m/1"), now);
    }
    transmit(&mut subscriber, now);
    assert_eq!(balanced(&recorder), (0, 0), "unstored: nothing yet");
    let later = now + broker.config().unstored_grace * 2 + Duration::from_millis(1);
    broker.handle_timeout(later);
    broker.handle_timeout(later + broker.config().unstored_grace);
    assert_eq!(balanced(&recorder), (3, 3));
}

#[test]
fn a_retained_message_streamed_to_a_persistent_subscriber_releases_its_body() {
    let (recorder, broker, _publisher, _subscriber, now) =
        recorded_broker("m/#", QoS::AtLeastOnce, true);
    for n in 0..5 {
        broker.publish(
            Message {
                topic: text(&format!("r/{n}")),
                payload: Bytes::from_static(b"state"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: None,
                expires_at: None,
                publisher: None,
                id: 0,
            },
            now,
        );
    }
    recorder.take();
    let mut late = connect(&broker, "late", false, now);
    late.handle_packet(subscribe("r/#"), now);
    let sent = transmit(&mut late, now);
    assert_eq!(sent.len(), 6, "SUBACK and five retained: {sent:?}");
    assert_eq!(balanced(&recorder), (5, 5));
}

#[test]
fn a_shared_subscription_handing_over_its_messages_releases_their_bodies() {
    let (recorder, broker, mut publisher, _subscriber, now) =
        recorded_broker("unused/#", QoS::AtLeastOnce, true);
    let mut first = connect(&broker, "first", false, now);
    first.handle_packet(subscribe("$share/g/jobs/#"), now);
    transmit(&mut first, now);
    let mut second = connect(&broker, "second", false, now);
    second.handle_packet(subscribe("$share/g/jobs/#"), now);
    transmit(&mut second, now);
    second.handle_transport_closed(now);
    // Both go to `first` (the only member online), queued past its window or in flight.
    for id in 1..=40 {
        publisher.handle_packet(publish(id, "jobs/1"), now);
    }
    recorder.take();
    // `first` leaves with its messages unacknowledged: they move to `second`.
    first.handle_transport_closed(now);
    let (bodies, released) = balanced(&recorder);
    assert!(
        bodies > 0,
        "the handed-over deliveries are stored for `second`"
    );
    assert_eq!(bodies, released);
}
