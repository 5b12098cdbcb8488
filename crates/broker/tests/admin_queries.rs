//! The core's queries and commands for operators (issue 13): sessions listed with their
//! figures, a client's connection facts, kick with DISCONNECT 0x98 and the will, the end of a
//! session, retained messages listed, read and cleared (the store told), messages of the
//! broker's own (`$SYS`: retained in memory, never stored), per-client tracing, and the
//! sharded counters.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use tern_broker::persist::Persistence;
use tern_broker::{BrokerConfig, Hooks, Message};
use tern_codec::{Properties, ProtocolVersion, QoS, ReasonCode, Will};

fn with_will(version: ProtocolVersion, id: &str) -> tern_codec::Connect {
    let mut connect = connect_packet(version, id);
    connect.will = Some(Will {
        topic: text(&format!("wills/{id}")),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    connect
}

fn system_message(topic: &str, payload: &str) -> Message {
    Message {
        cluster_id: None,
        topic: text(topic),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: None,
        expires_at: None,
        publisher: None,
        id: 0,
    }
}

/// Issue 13 "enumerate sessions (connected or not) with their figures": listed by client id,
/// paged with `after`/`limit`, offline sessions included, connection facts for the connected.
#[test]
fn sessions_are_listed_by_client_id_with_their_figures() {
    let net = Net::new();
    let mut a = net.connected(V5, "b-client");
    a.subscribe("x/#", QoS::AtLeastOnce);
    a.subscribe("y", QoS::AtMostOnce);
    let _c = net.connected(V311, "a-client");
    // An offline persistent session with a queued message.
    let offline = net.accepted(persistent(V311, "c-offline"));
    drop(offline);
    net.broker.publish(
        Message {
            qos: QoS::AtLeastOnce,
            retain: false,
            ..system_message("x/1", "m")
        },
        net.now(),
    );
    let mut off = net.broker.sessions_after(None, 10, false);
    // (The offline session had no subscription: nothing queued for it.)
    let ids: Vec<&str> = off.iter().map(|s| s.client_id.as_str()).collect();
    assert_eq!(ids, ["a-client", "b-client", "c-offline"]);
    let b = off.remove(1);
    assert_eq!(b.subscriptions, 2);
    let facts = b.connection.expect("connected");
    assert_eq!(facts.protocol, V5);
    assert!(
        off[1].connection.is_none(),
        "offline session has no connection"
    );

    let page = net.broker.sessions_after(Some("a-client"), 1, false);
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].client_id.as_str(), "b-client");
    let connected = net.broker.sessions_after(None, 10, true);
    assert_eq!(connected.len(), 2, "only connected with connected_only");

    let subs = net.broker.subscriptions_of("b-client").unwrap();
    let filters: Vec<&str> = subs.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(filters, ["x/#", "y"]);
    let all = net.broker.subscriptions_after(None, None, 10);
    assert_eq!(all.len(), 2);
    let after = net
        .broker
        .subscriptions_after(Some(("b-client", "x/#")), None, 10);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].1.as_str(), "y");
    let by_filter = net.broker.subscriptions_after(None, Some("y"), 10);
    assert_eq!(by_filter.len(), 1);

    let totals = net.broker.session_totals();
    assert_eq!((totals.connected, totals.offline), (2, 1));
    assert_eq!(totals.connections.len(), 2, "one row per protocol version");
}

/// Issue 13 "kick a connection with a reason (MQTT 5 DISCONNECT 0x98 Administrative action,
/// will published as for a close)"; a session with an expiry stays, offline, with its
/// subscriptions (review 13 #12).
#[test]
fn kick_sends_disconnect_0x98_and_publishes_the_will() {
    let net = Net::new();
    let mut watcher = net.connected(V5, "watcher");
    watcher.subscribe("wills/#", QoS::AtMostOnce);
    let mut connect = persistent(V5, "kicked");
    connect.will = with_will(V5, "kicked").will;
    let mut client = net.accepted(connect);
    client.subscribe("kept/#", QoS::AtLeastOnce);
    assert!(net.broker.kick("kicked"));
    assert_eq!(client.disconnect_reason(), ReasonCode::AdministrativeAction);
    assert_eq!(
        client.close_reason(),
        Some(tern_broker::CloseReason::AdministrativeAction)
    );
    let will = watcher.publish_received();
    assert_eq!(will.topic, "wills/kicked");
    let report = net
        .broker
        .session_report("kicked")
        .expect("the session stays");
    assert!(report.connection.is_none(), "offline after the kick");
    assert_eq!(report.subscriptions, 1, "its subscriptions kept");
    assert!(!net.broker.kick("kicked"), "not connected any more");
    assert!(!net.broker.kick("nobody"));
    assert_eq!(net.broker.metrics().snapshot().connections_kicked, 1);
}

/// Review 13 NIT 20: a PUBLISH a kicked connection reads before its next turn is not routed:
/// the connection closes (0x98) on it instead.
#[test]
fn a_kicked_connection_routes_nothing_more() {
    let net = Net::new();
    let mut watcher = net.connected(V5, "watcher");
    watcher.subscribe("k/#", QoS::AtMostOnce);
    let mut client = net.connected(V5, "kicked");
    assert!(net.broker.kick("kicked"));
    client.publish("k/1", QoS::AtMostOnce, b"after the kick");
    assert_eq!(client.disconnect_reason(), ReasonCode::AdministrativeAction);
    watcher.nothing();
}

/// A kicked 3.1.1 client is closed without a packet (3.x has no DISCONNECT from the server).
#[test]
fn kick_closes_a_3_1_1_client_silently() {
    let net = Net::new();
    let mut client = net.connected(V311, "old");
    assert!(net.broker.kick("old"));
    client.closed_silently();
    // The client comes back and is not kicked again.
    let mut again = net.connected(V311, "old");
    again.nothing();
    assert!(!again.is_closed());
}

/// Issue 13 "end a session": the connection closes (0x98), the session and its
/// subscriptions go, the store is told.
#[test]
fn delete_session_closes_the_connection_and_ends_the_session() {
    let recorder = Arc::new(Recorder::default());
    let net = Net::with_persistence(
        BrokerConfig::default(),
        Hooks::default(),
        Some(recorder.clone() as Arc<dyn Persistence>),
    );
    let mut client = net.accepted(persistent(V5, "doomed"));
    client.subscribe("a/b", QoS::AtLeastOnce);
    recorder.take();
    assert!(net.broker.delete_session("doomed", net.now()));
    assert_eq!(client.disconnect_reason(), ReasonCode::AdministrativeAction);
    assert!(net.broker.session("doomed").is_none());
    assert_eq!(net.broker.subscription_count(), 0);
    assert!(recorder.take_kinds().contains(&"SessionEnded"));
    assert!(!net.broker.delete_session("doomed", net.now()));
}

/// Issue 13 "list/get/clear retained messages (store told)".
#[test]
fn retained_messages_are_listed_read_and_cleared() {
    let recorder = Arc::new(Recorder::default());
    let net = Net::with_persistence(
        BrokerConfig::default(),
        Hooks::default(),
        Some(recorder.clone() as Arc<dyn Persistence>),
    );
    let mut publisher = net.connected(V5, "pub");
    for topic in ["r/1", "r/2", "r/3", "other"] {
        publisher.publish_with(retained(topic, QoS::AtMostOnce, b"v"));
    }
    publisher.received();
    let all = net.broker.retained_after("r/#", None, 10);
    assert_eq!(all.len(), 3);
    let first = net.broker.retained_after("r/#", None, 2);
    let rest = net
        .broker
        .retained_after("r/#", Some(first[1].topic.as_str()), 10);
    assert_eq!(first.len() + rest.len(), 3, "pages cover the set once");
    assert_eq!(net.broker.retained_totals(), (4, 4));
    let message = net.broker.retained_message("r/2").unwrap();
    assert_eq!(&message.payload[..], b"v");
    recorder.take();
    assert!(net.broker.clear_retained("r/2"));
    assert_eq!(recorder.take_kinds(), ["RetainedCleared"]);
    assert!(net.broker.retained_message("r/2").is_none());
    assert!(!net.broker.clear_retained("r/2"));
}

/// Issue 13 `$SYS`: "retained but never written to the store"; subscribers get it.
#[test]
fn system_messages_are_retained_in_memory_only() {
    let recorder = Arc::new(Recorder::default());
    let net = Net::with_persistence(
        BrokerConfig::default(),
        Hooks::default(),
        Some(recorder.clone() as Arc<dyn Persistence>),
    );
    let mut sub = net.connected(V311, "sys-reader");
    sub.subscribe("$SYS/#", QoS::AtMostOnce);
    recorder.take();
    net.broker
        .publish_system(system_message("$SYS/broker/uptime", "5 seconds"), net.now());
    assert_eq!(recorder.take_kinds(), Vec::<&str>::new(), "nothing stored");
    assert_eq!(&sub.publish_received().payload[..], b"5 seconds");
    let mut late = net.connected(V311, "late");
    late.subscribe("$SYS/broker/uptime", QoS::AtMostOnce);
    let publish = late.publish_received();
    assert!(publish.retain, "the retained copy");
}

/// Issue 13 "per-client debug tracing switched on at run time": only for connected clients.
#[test]
fn tracing_is_switched_per_connected_client() {
    let net = Net::new();
    let client = net.connected(V5, "traced");
    assert!(net.broker.set_client_tracing("traced", true));
    assert!(net.broker.session_report("traced").unwrap().traced);
    assert!(net.broker.set_client_tracing("traced", false));
    assert!(!net.broker.set_client_tracing("nobody", true));
    drop(client);
}

/// Review 13 #7 (configuration.md: tracing lasts "until it is switched off or the session
/// ends"): switched on, then the client goes offline; switching it off still works (not
/// "unknown client"), and the client's next connection is not traced. On stays refused for
/// a client that is not connected.
#[test]
fn tracing_is_switched_off_for_an_offline_session() {
    let net = Net::new();
    let mut client = net.accepted(persistent(V5, "traced"));
    assert!(net.broker.set_client_tracing("traced", true));
    client.disconnect();
    assert!(
        net.broker
            .session_report("traced")
            .is_some_and(|r| r.connection.is_none())
    );
    assert!(
        !net.broker.set_client_tracing("traced", true),
        "on: not connected"
    );
    assert!(
        net.broker.set_client_tracing("traced", false),
        "off: the session exists"
    );
    let _again = net.accepted(persistent(V5, "traced"));
    assert!(!net.broker.session_report("traced").expect("resumed").traced);
    assert!(!net.broker.set_client_tracing("nobody", false));
}

/// Issue 13 metrics: messages and payload bytes counted by QoS, in and out.
#[test]
fn messages_are_counted_by_qos() {
    let net = Net::new();
    let mut sub = net.connected(V311, "sub");
    sub.subscribe("m/#", QoS::AtLeastOnce);
    let mut publisher = net.connected(V311, "pub");
    publisher.publish("m/0", QoS::AtMostOnce, b"abc");
    publisher.publish("m/1", QoS::AtLeastOnce, b"abcd");
    publisher.received();
    for publish in sub.publishes() {
        sub.ack(&publish);
    }
    let m = net.broker.metrics().snapshot();
    assert_eq!((m.received_qos0, m.received_qos1), (1, 1));
    assert_eq!((m.received_bytes_qos0, m.received_bytes_qos1), (3, 4));
    assert_eq!((m.sent_qos0, m.sent_qos1), (1, 1));
    assert_eq!(m.messages_received, 2);
    assert_eq!(m.messages_sent, 2);
}
