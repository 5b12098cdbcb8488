//! Every stored message body the router takes a reference on (`Change::Message`) gets its
//! release (`Change::MessageRouted`): otherwise the store would keep the body until the next
//! restart. The release is a guard's drop, so each path that stores a delivery — routing to an
//! offline session, a retained message streamed to a persistent subscriber, the sweep of
//! unstored deliveries, a shared subscription handing its messages to another member — is
//! checked here for a balanced count.

mod common;

use std::sync::Arc;

use common::{Net, Recorder, V311, persistent, retained};
use tern_broker::persist::Persistence;
use tern_broker::{BrokerConfig, Hooks};
use tern_codec::QoS;

fn recorded() -> (Arc<Recorder>, Net) {
    let recorder = Arc::new(Recorder::default());
    let net = Net::with_persistence(
        BrokerConfig::default(),
        Hooks::default(),
        Some(recorder.clone() as Arc<dyn Persistence>),
    );
    (recorder, net)
}

/// How many bodies were taken and released since the last call.
fn bodies(recorder: &Recorder) -> (usize, usize) {
    let kinds = recorder.take_kinds();
    let count = |kind: &str| kinds.iter().filter(|k| **k == kind).count();
    (count("Message"), count("MessageRouted"))
}

#[test]
fn routing_to_an_offline_session_releases_the_body() {
    let (recorder, net) = recorded();
    let mut subscriber = net.accepted(persistent(V311, "sub"));
    subscriber.subscribe("m/#", QoS::AtLeastOnce);
    drop(subscriber);
    let mut publisher = net.connected(V311, "pub");
    recorder.take();
    publisher.publish("m/1", QoS::AtLeastOnce, b"v");
    assert_eq!(bodies(&recorder), (1, 1));
}

#[test]
fn a_sweep_of_unstored_deliveries_releases_each_body() {
    let (recorder, net) = recorded();
    let mut subscriber = net.accepted(persistent(V311, "sub"));
    subscriber.subscribe("m/#", QoS::AtLeastOnce);
    let mut publisher = net.connected(V311, "pub");
    for _ in 0..3 {
        publisher.publish("m/1", QoS::AtLeastOnce, b"v");
    }
    assert_eq!(subscriber.publishes().len(), 3);
    recorder.take();
    // Unacknowledged past the grace period: the sweep stores them.
    let grace = net.broker.config().unstored_grace.as_millis() as u64;
    net.advance(grace * 4);
    assert_eq!(bodies(&recorder), (3, 3));
}

#[test]
fn a_retained_message_streamed_to_a_persistent_subscriber_releases_its_body() {
    let (recorder, net) = recorded();
    let mut publisher = net.connected(V311, "pub");
    for n in 0..5 {
        publisher.publish_with(retained(&format!("r/{n}"), QoS::AtLeastOnce, b"state"));
    }
    let mut late = net.accepted(persistent(V311, "late"));
    recorder.take();
    late.subscribe("r/#", QoS::AtLeastOnce);
    assert_eq!(late.publishes().len(), 5);
    assert_eq!(bodies(&recorder), (5, 5));
}

#[test]
fn a_shared_subscription_handing_over_its_messages_releases_their_bodies() {
    let (recorder, net) = recorded();
    let mut first = net.accepted(persistent(V311, "first"));
    first.subscribe("$share/g/jobs/#", QoS::AtLeastOnce);
    let mut second = net.accepted(persistent(V311, "second"));
    second.subscribe("$share/g/jobs/#", QoS::AtLeastOnce);
    drop(second);
    // All go to `first`, the only member online: in flight, or queued behind its window.
    let mut publisher = net.connected(V311, "pub");
    for _ in 0..40 {
        publisher.publish("jobs/1", QoS::AtLeastOnce, b"v");
    }
    recorder.take();
    // `first` leaves with its messages unacknowledged: they move to `second`.
    drop(first);
    let (taken, released) = bodies(&recorder);
    assert!(
        taken > 0,
        "the handed-over deliveries are stored for `second`"
    );
    assert_eq!(taken, released);
}
