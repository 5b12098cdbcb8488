//! A new subscription gets its whole retained set [MQTT-3.3.1-6, MQTT-3.8.4-3], however large:
//! streamed from the retained index, not cut at the session queue's limit, in bounded memory,
//! while the connection keeps serving its other traffic.

mod common;

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use common::{Quiet, connect, text};
use tern_broker::{Broker, BrokerConfig, Connection, Message};
use tern_codec::{
    Ack, Connect, Packet, Properties, ProtocolVersion, QoS, Subscribe, Subscription,
    SubscriptionOptions, Unsubscribe,
};

/// Poll budget of one round, as the server's.
const BUDGET: usize = 64 * 1024;

fn retained(topic: &str, qos: QoS) -> Message {
    Message {
        topic: text(topic),
        payload: Bytes::from_static(b"state"),
        qos,
        retain: true,
        properties: None,
        expires_at: None,
        publisher: None,
        id: 0,
    }
}

fn broker_with_retained(count: usize, qos: QoS) -> Arc<Broker> {
    let broker = Broker::new(BrokerConfig::default());
    let now = Instant::now();
    for i in 0..count {
        broker.publish(retained(&format!("a/{}/{}", i % 50, i), qos), now);
    }
    assert_eq!(broker.retained_count(), count);
    broker
}

fn subscribe(conn: &mut Connection, filter: &str, qos: QoS, now: Instant) {
    conn.handle_packet(
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: text(filter),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
        }),
        now,
    );
}

/// One round of the server's loop: what fits the budget, decoded.
fn round(conn: &mut Connection, now: Instant) -> Vec<Packet> {
    let mut out = BytesMut::new();
    conn.poll_transmit(&mut out, BUDGET, now);
    let mut packets = Vec::new();
    while let Some(packet) = Packet::decode(&mut out, ProtocolVersion::V311, u32::MAX).unwrap() {
        packets.push(packet);
    }
    packets
}

/// Acknowledges every QoS 1 PUBLISH in `packets`; returns the topics of all PUBLISHes.
fn ack_all(conn: &mut Connection, packets: &[Packet], now: Instant) -> Vec<String> {
    let mut topics = Vec::new();
    for packet in packets {
        if let Packet::Publish(publish) = packet {
            topics.push(publish.topic.to_string());
            if publish.qos == QoS::AtLeastOnce {
                conn.handle_packet(Packet::PubAck(Ack::new(publish.packet_id)), now);
            }
        }
    }
    topics
}

#[test]
fn a_new_subscriber_gets_every_retained_message_past_the_queue_limit() {
    // 5 000 retained messages against the default queue limit of 1 000.
    let broker = broker_with_retained(5_000, QoS::AtMostOnce);
    assert_eq!(broker.config().max_queued_messages, 1_000);
    let now = Instant::now();
    let mut conn = connect(&broker, "late", true, now);
    subscribe(&mut conn, "#", QoS::AtMostOnce, now);
    let mut topics = Vec::new();
    for _ in 0..1_000 {
        let packets = round(&mut conn, now);
        if packets.is_empty() {
            break;
        }
        for packet in packets {
            if let Packet::Publish(publish) = packet {
                assert!(
                    publish.retain,
                    "sent because of a new subscription [MQTT-3.3.1-8]"
                );
                topics.push(publish.topic.to_string());
            }
        }
    }
    assert_eq!(topics.len(), 5_000);
    topics.sort();
    topics.dedup();
    assert_eq!(topics.len(), 5_000, "each retained message once");
}

#[test]
fn the_retained_set_streams_in_bounded_memory_through_the_inflight_window() {
    let broker = broker_with_retained(20_000, QoS::AtLeastOnce);
    let now = Instant::now();
    let mut conn = connect(&broker, "late", true, now);
    subscribe(&mut conn, "a/#", QoS::AtLeastOnce, now);
    let session = broker.session("late").unwrap();
    let window = broker.config().max_inflight as usize;
    let mut received = 0;
    loop {
        let packets = round(&mut conn, now);
        // Nothing is copied into the queue; at most one batch waits, taken from the index.
        assert_eq!(session.queued_len(), 0);
        assert!(session.retained_buffered() <= 64);
        assert!(session.inflight_len() <= window);
        let topics = ack_all(&mut conn, &packets, now);
        if packets.is_empty() {
            break;
        }
        received += topics.len();
    }
    assert_eq!(received, 20_000);
    assert_eq!(session.retained_buffered(), 0);
}

#[test]
fn live_traffic_keeps_flowing_while_a_retained_set_streams() {
    let broker = broker_with_retained(5_000, QoS::AtLeastOnce);
    let now = Instant::now();
    let mut conn = connect(&broker, "late", true, now);
    subscribe(&mut conn, "#", QoS::AtLeastOnce, now);
    // The first round fills the in-flight window with retained messages.
    let first = round(&mut conn, now);
    ack_all(&mut conn, &first, now);
    // A live message on another topic arrives while most of the set is still to come.
    broker.publish(
        Message {
            retain: false,
            ..retained("live/alarm", QoS::AtLeastOnce)
        },
        now,
    );
    let mut live_at = None;
    let mut sent = 0;
    loop {
        let packets = round(&mut conn, now);
        if packets.is_empty() {
            break;
        }
        for topic in ack_all(&mut conn, &packets, now) {
            if topic == "live/alarm" {
                live_at = Some(sent);
            }
            sent += 1;
        }
    }
    let live_at = live_at.expect("the live message was delivered");
    assert!(
        live_at < 1_000,
        "live message waited for {live_at} retained ones"
    );
}

#[test]
fn unsubscribing_stops_the_stream_and_a_resumed_session_finishes_it() {
    let broker = broker_with_retained(3_000, QoS::AtLeastOnce);
    let now = Instant::now();
    let mut conn = connect(&broker, "late", false, now);
    subscribe(&mut conn, "a/#", QoS::AtLeastOnce, now);
    let first = round(&mut conn, now);
    let mut topics = ack_all(&mut conn, &first, now);
    assert!(topics.len() < 3_000);
    // The connection drops half-way: the resumed session sends what is left (and resends
    // what was in flight, with DUP [MQTT-4.4.0-1]).
    conn.handle_transport_closed(now);
    let mut conn = Connection::new(broker.clone(), Arc::new(Quiet), None, now);
    conn.handle_packet(
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_start: false,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: text("late"),
            will: None,
            username: None,
            password: None,
        })),
        now,
    );
    loop {
        let packets = round(&mut conn, now);
        if packets.is_empty() {
            break;
        }
        topics.extend(ack_all(&mut conn, &packets, now));
    }
    topics.sort();
    topics.dedup();
    assert_eq!(topics.len(), 3_000);

    // Unsubscribed mid-stream: no more of it [MQTT-3.10.4-2].
    subscribe(&mut conn, "a/#", QoS::AtMostOnce, now);
    let first = round(&mut conn, now);
    assert!(first.len() > 1);
    conn.handle_packet(
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            properties: Properties::default(),
            filters: vec![text("a/#")],
        }),
        now,
    );
    let after = round(&mut conn, now);
    assert!(
        after
            .iter()
            .all(|packet| matches!(packet, Packet::UnsubAck(_))),
        "{after:?}"
    );
    assert_eq!(broker.session("late").unwrap().retained_buffered(), 0);
}

#[test]
fn a_retained_message_changed_while_streaming_is_sent_as_it_is_now() {
    // Large enough to take several rounds.
    let broker = broker_with_retained(20_000, QoS::AtMostOnce);
    let mut changed_topic = String::new();
    let now = Instant::now();
    let mut conn = connect(&broker, "late", true, now);
    subscribe(&mut conn, "a/#", QoS::AtMostOnce, now);
    let mut seen = Vec::new();
    let mut changed = false;
    loop {
        let packets = round(&mut conn, now);
        if packets.is_empty() {
            break;
        }
        for packet in packets {
            if let Packet::Publish(publish) = packet {
                seen.push((publish.topic.to_string(), publish.payload.clone()));
            }
        }
        if !changed {
            changed = true;
            // A topic the stream has not reached yet changes.
            changed_topic = (0..20_000)
                .map(|i| format!("a/{}/{i}", i % 50))
                .find(|topic| seen.iter().all(|(seen, _)| seen != topic))
                .unwrap();
            broker.publish(
                Message {
                    payload: Bytes::from_static(b"new"),
                    ..retained(&changed_topic, QoS::AtMostOnce)
                },
                now,
            );
        }
    }
    // The live copy, then the stream's: both the new value, never the old one after it.
    let last: Vec<_> = seen.iter().filter(|(t, _)| t == &changed_topic).collect();
    assert_eq!(last.len(), 2);
    assert!(
        last.iter()
            .all(|(_, payload)| payload == &Bytes::from_static(b"new"))
    );
}
