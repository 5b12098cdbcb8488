//! Every kind of change survives a close and reopen, with the session state rebuilt as the core
//! left it: subscriptions, queue in position order, in-flight in send order, inbound QoS 2 ids,
//! will, retained messages and the next message id.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tern_broker::persist::{Change, StoredDelivery};
use tern_broker::{InflightState, Message, SessionExpiry, SubscriptionIds, SubscriptionRecord};
use tern_codec::{Properties, QoS, RetainHandling, SubscriptionOptions};

fn record(qos: QoS, identifier: Option<u32>) -> SubscriptionRecord {
    SubscriptionRecord {
        options: SubscriptionOptions {
            qos,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::SendAtSubscribeIfNew,
        },
        identifier,
    }
}

#[test]
fn every_change_kind_round_trips() {
    let scratch = Scratch::new("roundtrip");
    let now = Instant::now();
    let rich = Arc::new(Message {
        cluster_id: None,
        topic: s("plant/1/temp"),
        payload: Bytes::from_static(b"{\"t\":21.5}"),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Some(Arc::new(Properties {
            payload_format_indicator: Some(true),
            content_type: Some(s("application/json")),
            response_topic: Some(s("reply")),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![(s("k"), s("v"))],
            ..Properties::default()
        })),
        expires_at: Some(now + Duration::from_secs(3600)),
        publisher: Some(s("pub-1")),
        id: 7,
    });
    let plain = message(8, "plant/1/state", b"on");
    let retained = Arc::new(Message {
        retain: true,
        id: 0,
        ..(*message(0, "status/broker", b"up")).clone()
    });
    let will = Arc::new(Message {
        publisher: Some(s("alice")),
        ..(*message(0, "clients/alice/gone", b"bye")).clone()
    });
    let shared_delivery = StoredDelivery {
        message_id: 8,
        qos: QoS::AtLeastOnce,
        retain: true,
        subscription_ids: SubscriptionIds::Many(vec![3, 4].into_boxed_slice()),
        shared_filter: Some(s("$share/g/plant/#")),
    };
    {
        let (store, recovered) = open(scratch.path());
        assert!(recovered.sessions.is_empty());
        assert_eq!(recovered.next_message_id, 1);
        commit(
            &store,
            [
                Change::Session {
                    client_id: s("alice"),
                    expiry: SessionExpiry::Never,
                    online: true,
                },
                Change::Session {
                    client_id: s("bob"),
                    expiry: SessionExpiry::After(Duration::from_secs(3600)),
                    online: true,
                },
                Change::Subscribed {
                    client_id: s("alice"),
                    filter: s("plant/+/temp"),
                    record: record(QoS::ExactlyOnce, Some(12)),
                },
                Change::Subscribed {
                    client_id: s("alice"),
                    filter: s("gone/#"),
                    record: record(QoS::AtMostOnce, None),
                },
                Change::Subscribed {
                    client_id: s("alice"),
                    filter: s("plant/#"),
                    record: record(QoS::AtLeastOnce, None),
                },
                Change::Unsubscribed {
                    client_id: s("alice"),
                    filter: s("gone/#"),
                },
                Change::Message((*rich).clone()),
                Change::Message((*plain).clone()),
                // Queue: positions 300, 5, 256 submitted out of order, 5 removed again.
                Change::Queued {
                    client_id: s("alice"),
                    position: 300,
                    delivery: delivery(7),
                },
                Change::Queued {
                    client_id: s("alice"),
                    position: 5,
                    delivery: delivery(8),
                },
                Change::Queued {
                    client_id: s("alice"),
                    position: 256,
                    delivery: shared_delivery.clone(),
                },
                Change::Unqueued {
                    client_id: s("alice"),
                    position: 5,
                },
                // In flight: sent as 65535, then 1 (wrapped), then 2; 2 is done; 65535 moves on.
                Change::Inflight {
                    client_id: s("bob"),
                    packet_id: 65535,
                    state: InflightState::AwaitingPubRec,
                    delivery: delivery(7),
                },
                Change::Inflight {
                    client_id: s("bob"),
                    packet_id: 1,
                    state: InflightState::AwaitingPubAck,
                    delivery: delivery(8),
                },
                Change::Inflight {
                    client_id: s("bob"),
                    packet_id: 2,
                    state: InflightState::AwaitingPubAck,
                    delivery: delivery(8),
                },
                Change::InflightDone {
                    client_id: s("bob"),
                    packet_id: 2,
                },
                Change::InboundQos2 {
                    client_id: s("bob"),
                    packet_id: 40,
                },
                Change::InboundQos2 {
                    client_id: s("bob"),
                    packet_id: 41,
                },
                Change::InboundQos2Released {
                    client_id: s("bob"),
                    packet_id: 40,
                },
                Change::Retained(retained.clone()),
                Change::Retained(message(0, "status/other", b"x")),
                Change::RetainedCleared {
                    topic: s("status/other"),
                },
                Change::Will {
                    client_id: s("alice"),
                    message: will.clone(),
                    delay: Duration::from_secs(30),
                    expiry_interval: Some(90),
                },
                Change::Will {
                    client_id: s("bob"),
                    message: will.clone(),
                    delay: Duration::ZERO,
                    expiry_interval: None,
                },
                Change::WillCleared {
                    client_id: s("bob"),
                },
            ],
        );
        // A later commit: the state update of 65535 keeps its place in the send order.
        commit(
            &store,
            [
                Change::Inflight {
                    client_id: s("bob"),
                    packet_id: 65535,
                    state: InflightState::AwaitingPubComp,
                    delivery: delivery(7),
                },
                Change::Session {
                    client_id: s("bob"),
                    expiry: SessionExpiry::After(Duration::from_secs(3600)),
                    online: false,
                },
            ],
        );
        store.close().unwrap();
    }

    let (_store, recovered) = open(scratch.path());
    assert_eq!(recovered.next_message_id, 9);
    assert_eq!(recovered.retained.len(), 1);
    assert_eq!(*recovered.retained[0], *retained);

    assert_eq!(recovered.sessions.len(), 2);
    let alice = &recovered.sessions[0];
    assert_eq!(alice.client_id, s("alice"));
    assert_eq!(alice.expiry, SessionExpiry::Never);
    assert_eq!(alice.offline_for, Duration::ZERO, "online when stopped");
    let mut subscriptions = alice.subscriptions.clone();
    subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        subscriptions,
        vec![
            (s("plant/#"), record(QoS::AtLeastOnce, None)),
            (s("plant/+/temp"), record(QoS::ExactlyOnce, Some(12))),
        ]
    );
    let positions: Vec<u64> = alice.queue.iter().map(|(position, _)| *position).collect();
    assert_eq!(positions, vec![256, 300]);
    let (_, first) = &alice.queue[0];
    assert_eq!(*first.message, *plain);
    assert_eq!(first.retain, shared_delivery.retain);
    assert_eq!(first.subscription_ids, shared_delivery.subscription_ids);
    assert_eq!(first.shared_filter, shared_delivery.shared_filter);
    let (_, second) = &alice.queue[1];
    // The rich message comes back whole, its expiry converted to this run's clock.
    let back = &second.message;
    assert_eq!(back.properties, rich.properties);
    assert_eq!(
        (back.topic.clone(), back.payload.clone()),
        (rich.topic.clone(), rich.payload.clone())
    );
    assert_eq!(
        (back.qos, back.retain, back.id),
        (rich.qos, rich.retain, rich.id)
    );
    assert_eq!(back.publisher, rich.publisher);
    let left = back
        .expires_at
        .unwrap()
        .saturating_duration_since(Instant::now());
    assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));
    assert!(alice.inflight.is_empty());
    assert!(alice.inbound_qos2.is_empty());
    let will_back = alice.will.clone().unwrap();
    assert_eq!(*will_back.message, *will);
    assert_eq!(will_back.delay, Duration::from_secs(30));
    assert_eq!(will_back.expiry_interval, Some(90));

    let bob = &recovered.sessions[1];
    assert_eq!(bob.client_id, s("bob"));
    assert_eq!(bob.expiry, SessionExpiry::After(Duration::from_secs(3600)));
    assert!(bob.offline_for < Duration::from_secs(60));
    assert!(bob.subscriptions.is_empty() && bob.queue.is_empty());
    let inflight: Vec<(u16, InflightState)> = bob
        .inflight
        .iter()
        .map(|(packet_id, state, _)| (*packet_id, *state))
        .collect();
    assert_eq!(
        inflight,
        vec![
            (65535, InflightState::AwaitingPubComp),
            (1, InflightState::AwaitingPubAck)
        ],
        "send order, not packet id order"
    );
    assert_eq!(bob.inflight[0].2.message.id, 7);
    assert_eq!(bob.inbound_qos2, vec![41]);
    assert!(bob.will.is_none());
}

#[test]
fn state_survives_many_reopens_and_orders_keep_growing() {
    let scratch = Scratch::new("reopens");
    for round in 0..3u16 {
        let (store, recovered) = open(scratch.path());
        if round > 0 {
            let session = &recovered.sessions[0];
            let ids: Vec<u16> = session.inflight.iter().map(|(id, ..)| *id).collect();
            let expected: Vec<u16> = (0..round).map(|r| 100 - r).collect();
            assert_eq!(ids, expected, "send order across restarts");
        }
        let id = recovered.next_message_id;
        commit(
            &store,
            [
                Change::Session {
                    client_id: s("c"),
                    expiry: SessionExpiry::Never,
                    online: true,
                },
                Change::Message((*message(id, "t", b"p")).clone()),
                Change::Inflight {
                    client_id: s("c"),
                    packet_id: 100 - round,
                    state: InflightState::AwaitingPubAck,
                    delivery: delivery(id),
                },
            ],
        );
    }
}
