//! QoS 0 messages for the sessions of another worker go through that worker's inbox, once per
//! worker, and are routed there for its own sessions only (`worker_post` in the core): every
//! subscriber still gets each message once, in order [MQTT-4.6.0-6], and what is not plain QoS 0
//! fan-out (QoS 1, shared subscriptions) keeps the direct path.

mod common;

use std::sync::{Arc, Mutex};

use common::{Net, V5, V311};
use tern_broker::{Posted, WorkerInbox};
use tern_codec::{QoS, SubscriptionOptions};

/// An inbox that keeps what is posted, or refuses it.
#[derive(Default)]
struct Kept {
    messages: Mutex<Vec<Posted>>,
    refuse: bool,
}

impl WorkerInbox for Kept {
    fn post(&self, posted: Posted) -> bool {
        if self.refuse {
            return false;
        }
        self.messages.lock().unwrap().push(posted);
        true
    }
}

impl Kept {
    fn take(&self) -> Vec<Posted> {
        std::mem::take(&mut *self.messages.lock().unwrap())
    }
}

/// A broker with two workers' inboxes; the test's thread is worker 0.
fn two_workers(refuse_on_1: bool) -> (Net, Arc<Kept>, Arc<Kept>) {
    let net = Net::new();
    let zero = Arc::new(Kept::default());
    let one = Arc::new(Kept {
        refuse: refuse_on_1,
        ..Kept::default()
    });
    net.broker
        .set_worker_inboxes(vec![zero.clone() as Arc<dyn WorkerInbox>, one.clone()]);
    tern_broker::set_current_worker(0);
    (net, zero, one)
}

/// [MQTT-4.6.0-6] A QoS 0 message reaches the publisher's worker's subscribers at once and the
/// other worker's through its inbox, once per message however many subscribers it has there;
/// routed on that worker, each of its subscribers gets every message once, in order, and the
/// first worker's get nothing twice.
#[test]
fn qos0_to_another_worker_goes_once_through_its_inbox_and_arrives_in_order() {
    let (net, zero, one) = two_workers(false);
    let mut publisher = net.connected_on_worker(V311, "pub", 0);
    let mut near = net.connected_on_worker(V311, "near", 0);
    let mut far: Vec<_> = (0..3)
        .map(|n| net.connected_on_worker(V311, &format!("far-{n}"), 1))
        .collect();
    near.subscribe("t/#", QoS::AtMostOnce);
    for client in &mut far {
        client.subscribe("t/#", QoS::AtMostOnce);
        // A second matching subscription: still one copy [MQTT-3.3.4-2].
        client.subscribe("t/+", QoS::AtMostOnce);
    }
    for n in 0..5u8 {
        publisher.publish("t/a", QoS::AtMostOnce, &[n]);
    }
    let expected: Vec<&[u8]> = vec![&[0], &[1], &[2], &[3], &[4]];
    assert_eq!(near.payloads(), expected);
    for client in &mut far {
        client.nothing();
    }
    assert!(
        zero.take().is_empty(),
        "nothing posted to the publisher's own worker"
    );
    let posted = one.take();
    assert_eq!(posted.len(), 5, "one post per message, not per subscriber");
    for message in posted {
        net.broker.deliver_posted(message, 1, net.now());
    }
    for client in &mut far {
        assert_eq!(client.payloads(), expected);
    }
    near.nothing();
}

/// QoS 1 and 2 deliveries are queued directly, whatever the worker: their acknowledgement
/// depends on how each was queued.
#[test]
fn qos1_goes_directly_to_another_workers_session() {
    let (net, _zero, one) = two_workers(false);
    let mut publisher = net.connected_on_worker(V311, "pub", 0);
    let mut far = net.connected_on_worker(V311, "far", 1);
    far.subscribe("t", QoS::AtLeastOnce);
    publisher.publish("t", QoS::AtLeastOnce, b"m");
    assert!(one.take().is_empty());
    assert_eq!(far.publish_received().payload.as_ref(), b"m");
}

/// A shared subscription's member is picked once, by the publisher's thread, among the members
/// of every worker: nothing is posted for it, and each message goes to one member.
#[test]
fn shared_subscription_members_are_picked_once_across_workers() {
    let (net, _zero, one) = two_workers(false);
    let mut publisher = net.connected_on_worker(V5, "pub", 0);
    let mut members = [
        net.connected_on_worker(V5, "m0", 0),
        net.connected_on_worker(V5, "m1", 1),
    ];
    for member in &mut members {
        member.subscribe("$share/g/t", QoS::AtMostOnce);
    }
    for n in 0..10u8 {
        publisher.publish("t", QoS::AtMostOnce, &[n]);
    }
    assert!(one.take().is_empty());
    let mut got: Vec<u8> = members
        .iter_mut()
        .flat_map(|member| member.payloads())
        .map(|payload| payload[0])
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..10).collect::<Vec<u8>>());
}

/// [MQTT-3.8.3-3] No Local holds on the other worker too: a client subscribed to what it
/// publishes gets its own messages from neither path, while another client of its worker does.
#[test]
fn no_local_holds_for_posted_messages() {
    let (net, _zero, one) = two_workers(false);
    let mut publisher = net.connected_on_worker(V5, "pub", 1);
    publisher.subscribe_with(
        "t",
        SubscriptionOptions {
            no_local: true,
            ..SubscriptionOptions::default()
        },
        Default::default(),
    );
    let mut other = net.connected_on_worker(V5, "other", 1);
    other.subscribe("t", QoS::AtMostOnce);
    // Published from worker 0's thread by a client whose connection is on worker 1 (as a
    // bridge or the broker itself publishes from elsewhere): routed on worker 1.
    publisher.publish("t", QoS::AtMostOnce, b"m");
    for message in one.take() {
        net.broker.deliver_posted(message, 1, net.now());
    }
    publisher.nothing();
    assert_eq!(other.payloads(), vec![&b"m"[..]]);
}

/// A worker whose inbox is full does not get the message (QoS 0: at most once), and the drop
/// is counted; the publisher's own worker is served all the same.
#[test]
fn a_full_inbox_drops_the_message_for_that_worker_and_counts_it() {
    let (net, _zero, _one) = two_workers(true);
    let mut publisher = net.connected_on_worker(V311, "pub", 0);
    let mut near = net.connected_on_worker(V311, "near", 0);
    let mut far = net.connected_on_worker(V311, "far", 1);
    near.subscribe("t", QoS::AtMostOnce);
    far.subscribe("t", QoS::AtMostOnce);
    let before = net.broker.metrics().snapshot().messages_dropped_queue_full;
    publisher.publish("t", QoS::AtMostOnce, b"m");
    assert_eq!(near.payloads(), vec![&b"m"[..]]);
    far.nothing();
    assert_eq!(
        net.broker.metrics().snapshot().messages_dropped_queue_full,
        before + 1
    );
}

/// [MQTT-4.6.0-6] A subscriber that reconnects between a post and its routing (and may have
/// found later messages queued meanwhile) is not served the posted copy: QoS 0 may be lost
/// there, never delivered out of order.
#[test]
fn a_session_attached_after_the_post_is_not_served_the_posted_copy() {
    let (net, _zero, one) = two_workers(false);
    let mut publisher = net.connected_on_worker(V311, "pub", 0);
    let mut far = net.connected_on_worker(V311, "far", 1);
    far.subscribe("t", QoS::AtMostOnce);
    publisher.publish("t", QoS::AtMostOnce, b"before");
    let posted = one.take();
    assert_eq!(posted.len(), 1);
    // The subscriber's connection goes; a new one takes the session over, on the same worker.
    drop(far);
    let mut again = net.connected_on_worker(V311, "far", 1);
    again.subscribe("t", QoS::AtMostOnce);
    for message in posted {
        net.broker.deliver_posted(message, 1, net.now());
    }
    again.nothing();
    publisher.publish("t", QoS::AtMostOnce, b"after");
    for message in one.take() {
        net.broker.deliver_posted(message, 1, net.now());
    }
    assert_eq!(again.payloads(), vec![&b"after"[..]]);
}

/// [MQTT-3.3.1-12, MQTT-3.3.4-3] On the posted path the receiving worker works out what
/// each of its subscriptions asks for: the RETAIN flag kept with Retain As Published, the
/// subscription identifiers of every matching subscription.
#[test]
fn posted_deliveries_keep_retain_as_published_and_subscription_ids() {
    let (net, _zero, one) = two_workers(false);
    let mut publisher = net.connected_on_worker(V5, "pub", 0);
    let mut far = net.connected_on_worker(V5, "far", 1);
    let with_id = |id: u32| tern_codec::Properties {
        subscription_identifiers: vec![id],
        ..Default::default()
    };
    far.subscribe_with(
        "t/#",
        SubscriptionOptions {
            retain_as_published: true,
            ..SubscriptionOptions::default()
        },
        with_id(7),
    );
    far.subscribe_with("t/+", SubscriptionOptions::default(), with_id(9));
    let mut retained = common::publish_packet("t/a", QoS::AtMostOnce, b"r");
    retained.retain = true;
    publisher.publish_with(retained);
    for message in one.take() {
        net.broker.deliver_posted(message, 1, net.now());
    }
    let got = far.publish_received();
    assert!(got.retain, "Retain As Published keeps RETAIN");
    let mut ids = got.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 9]);
    assert_eq!(got.payload.as_ref(), b"r");
}

/// A retained QoS 0 publish whose store comes before a SUBSCRIBE on another worker and whose
/// route comes after: the other worker, routing the posted copy, passes over the new
/// subscription as the publisher's thread does (its retained stream sends the message), and
/// serves the older one. Each gets the message once [MQTT-3.3.1-6, MQTT-4.6.0-6].
#[test]
fn a_posted_copy_passes_over_a_subscription_made_after_its_retained_store() {
    let persistence: Arc<dyn tern_broker::persist::Persistence> =
        Arc::new(common::Between::default());
    let net = Net::with_persistence(
        tern_broker::BrokerConfig::default(),
        tern_broker::Hooks::default(),
        Some(persistence),
    );
    let one = Arc::new(Kept::default());
    net.broker.set_worker_inboxes(vec![
        Arc::new(Kept::default()) as Arc<dyn WorkerInbox>,
        one.clone(),
    ]);
    tern_broker::set_current_worker(0);
    let mut publisher = net.connected_on_worker(V311, "pub", 0);
    let mut old = net.connected_on_worker(V311, "old", 1);
    old.subscribe("r/#", QoS::AtMostOnce);
    let late = std::rc::Rc::new(std::cell::RefCell::new(
        net.connected_on_worker(V311, "late", 1),
    ));
    let subscriber = late.clone();
    common::BETWEEN.set(Some(Box::new(move || {
        subscriber
            .borrow_mut()
            .send(common::subscribe_packet(1, &[("r/#", QoS::AtMostOnce)]));
    })));
    let mut retained = common::publish_packet("r/a", QoS::AtMostOnce, b"r");
    retained.retain = true;
    publisher.publish_with(retained);
    assert!(
        common::BETWEEN.take().is_none(),
        "the SUBSCRIBE came between"
    );
    for message in one.take() {
        net.broker.deliver_posted(message, 1, net.now());
    }
    let live = old.publish_received();
    assert!(!live.retain, "live [MQTT-3.3.1-9]");
    let got: Vec<_> = late
        .borrow_mut()
        .received()
        .into_iter()
        .filter_map(|packet| match packet {
            tern_codec::Packet::Publish(publish) => Some(publish),
            _ => None,
        })
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].retain, "from the retained set [MQTT-3.3.1-8]");
}
