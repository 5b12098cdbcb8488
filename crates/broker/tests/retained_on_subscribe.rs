//! A new subscription gets its whole retained set [MQTT-3.3.1-6, MQTT-3.8.4-3], however large:
//! streamed from the retained index, not cut at the session queue's limit, in bounded memory,
//! while the connection keeps serving its other traffic.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use common::{BETWEEN, Between, Client, Net, V5, V311, persistent, retained};
use tern_broker::persist::Persistence;
use tern_broker::{Broker, BrokerConfig, Hooks};
use tern_codec::{
    MqttStr, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling,
    Subscribe, Subscription, SubscriptionOptions, Unsubscribe,
};

/// What the server asks the connection for in one round of its loop.
const BUDGET: usize = 64 * 1024;

fn topic(i: usize) -> String {
    format!("a/{}/{i}", i % 50)
}

/// A broker holding `count` retained messages under `a/`.
fn with_retained(count: usize, qos: QoS) -> Net {
    let net = Net::new();
    let mut publisher = net.connected(V311, "publisher");
    for i in 0..count {
        publisher.publish_with(retained(&topic(i), qos, b"state"));
        publisher.received();
    }
    assert_eq!(net.broker.retained_count(), count);
    net
}

/// Rounds of the server's loop until the broker has nothing more, acknowledging each QoS 1
/// PUBLISH as it arrives; `check` sees the client after every round. Returns the PUBLISHes.
fn drain(client: &mut Client, mut check: impl FnMut(&mut Client)) -> Vec<tern_codec::Publish> {
    let mut got = Vec::new();
    loop {
        let packets = client.received_within(BUDGET);
        check(client);
        if packets.is_empty() {
            return got;
        }
        for packet in packets {
            if let Packet::Publish(publish) = packet {
                client.ack(&publish);
                got.push(publish);
            }
        }
    }
}

fn distinct(publishes: &[tern_codec::Publish]) -> usize {
    let mut topics: Vec<&str> = publishes.iter().map(|p| p.topic.as_str()).collect();
    topics.sort();
    topics.dedup();
    topics.len()
}

#[test]
fn a_new_subscriber_gets_every_retained_message_past_the_queue_limit() {
    // 5 000 retained messages against the default queue limit of 1 000.
    let net = with_retained(5_000, QoS::AtMostOnce);
    assert_eq!(net.broker.config().max_queued_messages, 1_000);
    let mut late = net.connected(V311, "late");
    late.send(common::subscribe_packet(1, &[("#", QoS::AtMostOnce)]));
    let got = drain(&mut late, |_| {});
    // Sent because of a new subscription: RETAIN set [MQTT-3.3.1-8].
    assert!(got.iter().all(|p| p.retain));
    assert_eq!(got.len(), 5_000);
    assert_eq!(distinct(&got), 5_000, "each retained message once");
}

#[test]
fn the_retained_set_streams_in_bounded_memory_through_the_inflight_window() {
    let net = with_retained(20_000, QoS::AtLeastOnce);
    let window = usize::from(net.broker.config().max_inflight);
    let mut late = net.connected(V311, "late");
    late.send(common::subscribe_packet(1, &[("a/#", QoS::AtLeastOnce)]));
    let session = net.session("late").unwrap();
    let got = drain(&mut late, |_| {
        // Nothing is copied into the queue; at most one batch waits, taken from the index.
        assert_eq!(session.queued_len(), 0);
        assert!(session.retained_buffered() <= 64);
        assert!(session.inflight_len() <= window);
    });
    assert_eq!(distinct(&got), 20_000);
    assert_eq!(session.retained_buffered(), 0);
}

#[test]
fn live_traffic_keeps_flowing_while_a_retained_set_streams() {
    let net = with_retained(5_000, QoS::AtLeastOnce);
    let mut late = net.connected(V311, "late");
    late.send(common::subscribe_packet(1, &[("#", QoS::AtLeastOnce)]));
    // The first round fills the in-flight window with retained messages.
    let first = late.received_within(BUDGET);
    assert!(first.len() > 1);
    // A live message on another topic arrives while most of the set is still to come.
    let mut alarm = net.connected(V311, "alarm");
    alarm.publish("live/alarm", QoS::AtLeastOnce, b"fire");
    for packet in first {
        if let Packet::Publish(publish) = packet {
            late.ack(&publish);
        }
    }
    let got = drain(&mut late, |_| {});
    let live_at = got
        .iter()
        .position(|p| p.topic.as_str() == "live/alarm")
        .expect("the live message was delivered");
    assert!(
        live_at < 1_000,
        "live message waited for {live_at} retained ones"
    );
}

#[test]
fn a_resumed_session_finishes_the_stream_and_unsubscribing_stops_it() {
    let net = with_retained(3_000, QoS::AtLeastOnce);
    let mut late = net.accepted(persistent(V311, "late"));
    late.send(common::subscribe_packet(1, &[("a/#", QoS::AtLeastOnce)]));
    let mut got: Vec<_> = late
        .received_within(BUDGET)
        .into_iter()
        .filter_map(|packet| match packet {
            Packet::Publish(publish) => Some(publish),
            _ => None,
        })
        .collect();
    assert!(got.len() < 3_000);
    // The connection drops half-way, nothing acknowledged: the resumed session sends what
    // was in flight again (DUP [MQTT-4.4.0-1]) and then the rest of the set.
    drop(late);
    let mut late = net.open(V311);
    late.send(Packet::Connect(Box::new(persistent(V311, "late"))));
    got.extend(drain(&mut late, |_| {}));
    assert_eq!(distinct(&got), 3_000);

    // Unsubscribed mid-stream: no more of it [MQTT-3.10.4-2].
    late.send(common::subscribe_packet(2, &[("a/#", QoS::AtMostOnce)]));
    assert!(late.received_within(BUDGET).len() > 1);
    late.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 3,
        properties: Properties::default(),
        filters: vec![common::text("a/#")],
    }));
    let after = late.received_within(BUDGET);
    assert!(
        after.iter().all(|p| matches!(p, Packet::UnsubAck(_))),
        "{after:?}"
    );
    assert_eq!(net.session("late").unwrap().retained_buffered(), 0);
}

#[test]
fn a_retained_message_changed_while_streaming_is_sent_as_it_is_now() {
    // Large enough to take several rounds.
    let net = with_retained(20_000, QoS::AtMostOnce);
    let mut late = net.connected(V311, "late");
    late.send(common::subscribe_packet(1, &[("a/#", QoS::AtMostOnce)]));
    let first: Vec<String> = late
        .received_within(BUDGET)
        .iter()
        .filter_map(|packet| match packet {
            Packet::Publish(publish) => Some(publish.topic.to_string()),
            _ => None,
        })
        .collect();
    // A topic the stream has not reached yet changes.
    let changed = (0..20_000)
        .map(topic)
        .find(|topic| !first.contains(topic))
        .unwrap();
    let mut publisher = net.connected(V311, "publisher-2");
    publisher.publish_with(retained(&changed, QoS::AtMostOnce, b"new"));
    let copies: Vec<_> = drain(&mut late, |_| {})
        .into_iter()
        .filter(|p| p.topic.as_str() == changed)
        .collect();
    // The live copy only: stored after the subscription was made, the new value reached it
    // from its publish, and the stream passes over it (before, it came twice); the old value
    // never comes.
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(&copies[0].payload[..], b"new");
    assert!(!copies[0].retain, "live [MQTT-3.3.1-9]");
}

/// A retained QoS 2 publish on `between/t` with `step` between its store and its route (on
/// the publisher's thread, under the retained lock: as a SUBSCRIBE on another thread of the
/// server would come between), then what the subscriber gets: its PUBLISHes.
fn crossing(
    version: ProtocolVersion,
    step: impl FnOnce(&mut Client, &Arc<Broker>) + 'static,
) -> (Net, Rc<RefCell<Client>>, Client, Vec<Publish>) {
    let persistence: Arc<dyn Persistence> = Arc::new(Between::default());
    let net = Net::with_persistence(BrokerConfig::default(), Hooks::default(), Some(persistence));
    let subscriber = Rc::new(RefCell::new(net.connected(version, "subscriber")));
    let mut publisher = net.connected(version, "publisher");
    let (late, broker) = (subscriber.clone(), net.broker.clone());
    BETWEEN.set(Some(Box::new(move || {
        step(&mut late.borrow_mut(), &broker)
    })));
    publisher.publish_with(retained("between/t", QoS::ExactlyOnce, b"once"));
    assert!(BETWEEN.take().is_none(), "the step came between");
    let publishes = publishes_of(&mut subscriber.borrow_mut());
    (net, subscriber, publisher, publishes)
}

fn publishes_of(client: &mut Client) -> Vec<Publish> {
    client
        .received()
        .into_iter()
        .filter_map(|packet| match packet {
            Packet::Publish(publish) => Some(publish),
            _ => None,
        })
        .collect()
}

/// A SUBSCRIBE to `between/t` with `retain_handling`, sent (its SUBACK not read: that would
/// read the retained index, which the publisher's thread holds).
fn subscribe_sent(client: &mut Client, packet_id: u16, retain_handling: RetainHandling) {
    client.send(Packet::Subscribe(Subscribe {
        packet_id,
        properties: Properties::default(),
        subscriptions: vec![Subscription {
            filter: MqttStr::try_from("between/t").unwrap(),
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                retain_handling,
                ..SubscriptionOptions::default()
            },
        }],
    }));
}

#[test]
fn a_subscription_made_between_a_publishs_store_and_its_route_gets_the_retained_message_once() {
    // A publish stores its retained message, a SUBSCRIBE comes, then the publish routes:
    // before, the new subscription got the message from the route and again from its
    // retained stream, QoS 2 included. Now from the stream only [MQTT-3.3.1-6], once
    // [MQTT-4.3.3-1].
    for version in [V311, V5] {
        let (_net, subscriber, mut publisher, publishes) = crossing(version, |client, _| {
            subscribe_sent(client, 1, RetainHandling::SendAtSubscribe);
        });
        assert_eq!(publishes.len(), 1, "{version:?}: {publishes:?}");
        assert_eq!(&publishes[0].payload[..], b"once");
        assert!(publishes[0].retain, "from the retained set [MQTT-3.3.1-8]");
        // The subscription the route passed over counts: not "no matching subscribers".
        let pubrec = publisher
            .received()
            .into_iter()
            .find_map(|packet| match packet {
                Packet::PubRec(ack) => Some(ack),
                _ => None,
            });
        assert_eq!(pubrec.map(|ack| ack.reason_code), Some(ReasonCode::Success));
        // A later publish, stored after the subscription, comes live, once.
        publisher.publish_with(retained("between/t", QoS::ExactlyOnce, b"later"));
        let later = publishes_of(&mut subscriber.borrow_mut());
        assert_eq!(later.len(), 1, "{version:?}: {later:?}");
        assert!(!later[0].retain, "live [MQTT-3.3.1-9]");
    }
    // The subscription replaced at once by one that sends no retained set (Retain Handling
    // 2): the first one's stream goes on, and the entry keeps its tick.
    let (.., publishes) = crossing(V5, |client, _| {
        subscribe_sent(client, 1, RetainHandling::SendAtSubscribe);
        subscribe_sent(client, 2, RetainHandling::DoNotSend);
    });
    assert_eq!(publishes.len(), 1, "{publishes:?}");
    // The access rules re-checked meanwhile (a reload): the entry, put in again, keeps it.
    let (.., publishes) = crossing(V311, |client, broker| {
        subscribe_sent(client, 1, RetainHandling::SendAtSubscribe);
        assert_eq!(broker.recheck_access().sessions, 2);
    });
    assert_eq!(publishes.len(), 1, "{publishes:?}");
}
