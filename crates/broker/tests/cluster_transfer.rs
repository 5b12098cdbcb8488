//! A session handed over between two nodes of a cluster (issue 16): taken out of one broker
//! (`export_session`), carried as bytes, installed in another (`import_session`), where the
//! client resumes it with session present and its in-flight messages re-sent with DUP
//! [MQTT-4.4.0-1]. The encoding round-trips any transfer and refuses damaged bytes without
//! panicking.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use tern_broker::{
    ClusterMessageId, InflightState, Message, PreviousOwner, SessionExpiry, SessionTransfer,
    SubscriptionIds, SubscriptionRecord, TransferError, TransferredDelivery, TransferredInflight,
};
use tern_codec::{MqttStr, Properties, QoS, ReasonCode, RetainHandling, SubscriptionOptions};

/// Issue 16 / [MQTT-4.4.0-1]: a client claimed on node B while connected to node A finds on
/// B its session (session present), its subscriptions, its unacknowledged messages re-sent
/// with DUP under their packet identifiers, then what was queued for it meanwhile; node A
/// keeps nothing of it.
#[test]
fn a_session_handed_over_resumes_on_the_other_node_mqtt_4_4_0_1() {
    let a = Net::new();
    let b = Net::new();
    let mut client = a.accepted(persistent(V5, "roamer"));
    client.subscribe("h/#", QoS::ExactlyOnce);
    let mut publisher = a.connected(V5, "pub-a");
    publisher.publish("h/1", QoS::AtLeastOnce, b"one");
    publisher.publish("h/2", QoS::ExactlyOnce, b"two");
    let sent = client.publishes();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|publish| !publish.dup));

    assert!(a.broker.take_over("roamer"));
    assert_eq!(client.disconnect_reason(), ReasonCode::SessionTakenOver);
    drop(client);
    publisher.publish("h/3", QoS::AtLeastOnce, b"three"); // queued for the offline session

    let transfer = a.broker.export_session("roamer", a.now()).expect("offline");
    assert!(a.session("roamer").is_none(), "taken out of node A");
    assert_eq!(a.broker.subscription_count(), 0);
    assert_eq!(transfer.inflight.len(), 2);
    assert_eq!(transfer.queue.len(), 1);
    let bytes = transfer.encode().unwrap();
    let transfer = SessionTransfer::decode(&bytes).unwrap();
    b.broker.import_session(transfer, b.now()).unwrap();
    assert_eq!(b.broker.subscription_count(), 1);

    let (mut client, connack) = b.connect(persistent(V5, "roamer"));
    assert!(connack.session_present, "[MQTT-3.2.2-3]");
    let resent = client.publishes();
    let seen: Vec<(u16, bool, &[u8])> = resent
        .iter()
        .map(|publish| (publish.packet_id, publish.dup, &publish.payload[..]))
        .collect();
    assert_eq!(
        seen,
        vec![
            (sent[0].packet_id, true, &b"one"[..]),
            (sent[1].packet_id, true, &b"two"[..]),
            (resent[2].packet_id, false, &b"three"[..]),
        ]
    );
    assert_eq!(resent[1].qos, QoS::ExactlyOnce);
    // The subscription came along: node B routes to it.
    let mut local = b.connected(V5, "pub-b");
    local.publish("h/4", QoS::AtMostOnce, b"four");
    assert_eq!(&client.publish_received().payload[..], b"four");
}

/// Issue 16: a session is exported only once its connection here has closed, and a
/// clean-session client (nothing outlives its connection) has nothing to hand over.
#[test]
fn only_offline_sessions_are_exported_issue_16() {
    let net = Net::new();
    let _online = net.accepted(persistent(V5, "still-here"));
    assert!(net.broker.export_session("still-here", net.now()).is_none());
    assert!(net.broker.export_session("nobody", net.now()).is_none());
    assert!(net.session("still-here").is_some());
}

/// Issue 16: an import does not displace a client connected here, and a session that ends
/// with its connection is never imported.
#[test]
fn an_import_never_displaces_a_connected_client_issue_16() {
    let net = Net::new();
    let _online = net.accepted(persistent(V5, "here"));
    let transfer = SessionTransfer {
        client_id: text("here"),
        expiry: SessionExpiry::Never,
        subscriptions: vec![],
        queue: vec![],
        inflight: vec![],
        inbound_qos2: vec![],
    };
    assert_eq!(
        net.broker.import_session(transfer.clone(), net.now()),
        Err(TransferError::Connected)
    );
    let ending = SessionTransfer {
        expiry: SessionExpiry::AtDisconnect,
        client_id: text("other"),
        ..transfer
    };
    assert_eq!(
        net.broker.import_session(ending, net.now()),
        Err(TransferError::NotPersistent)
    );
}

/// Issue 16: an imported session expires after its interval, counted from the import.
#[test]
fn an_imported_session_expires_after_its_interval_issue_16() {
    let net = Net::new();
    let transfer = SessionTransfer {
        client_id: text("short"),
        expiry: SessionExpiry::After(Duration::from_secs(5)),
        subscriptions: vec![(text("s/+"), record(QoS::AtLeastOnce, Some(3)))],
        queue: vec![],
        inflight: vec![],
        inbound_qos2: vec![7],
    };
    net.broker.import_session(transfer, net.now()).unwrap();
    net.advance(4_999);
    assert!(net.session("short").is_some());
    net.advance(1);
    assert!(net.session("short").is_none());
    assert_eq!(net.broker.subscription_count(), 0);
}

/// A QoS 1 message on `topic`, with cluster id number `id` (from node 3) if any.
fn clustered(topic: &str, payload: &'static [u8], id: Option<u64>) -> Message {
    Message {
        topic: text(topic),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: None,
        expires_at: None,
        publisher: Some(text("pub-c")),
        id: 0,
        cluster_id: id.map(|number| {
            Box::new(ClusterMessageId {
                node: 3,
                run: 9,
                number,
                planned_at: 0,
            })
        }),
    }
}

fn handed(message: Message) -> TransferredDelivery {
    TransferredDelivery {
        expires_in: None,
        qos: message.qos,
        retain: false,
        subscription_ids: SubscriptionIds::None,
        shared_filter: None,
        message,
    }
}

/// Issue 16, "closing the move window": node B holds a shell of the moving session (its
/// subscriptions from the registry), which queued what B's routes brought while the session
/// moved; two of those messages (`w` in flight on A, `x` queued on A: the same cluster ids)
/// also reached node A, whose session is handed over. The client resumes on B with A's
/// in-flight message re-sent with DUP [MQTT-4.4.0-1], then A's queue, then the shell's
/// messages A did not have: A's copies kept, the shell's dropped, each message once. The
/// shell's subscription gives way to the handed-over one (one subscription, routing on).
#[test]
fn a_shell_gives_way_to_the_handed_over_session_each_message_once_issue_16() {
    let b = Net::new();
    b.broker
        .import_shell(shell("mover", "m/#"), 7, b.now())
        .unwrap();
    for message in [
        clustered("m/1", b"w-shell", Some(0)),
        clustered("m/1", b"x-shell", Some(1)),
        clustered("m/1", b"y", Some(2)),
        clustered("m/1", b"z", None),
    ] {
        b.broker.publish_from_cluster(message, true, &[], b.now());
    }
    let from_a = SessionTransfer {
        client_id: text("mover"),
        expiry: SessionExpiry::After(Duration::from_secs(600)),
        subscriptions: vec![(text("m/#"), record(QoS::AtLeastOnce, Some(4)))],
        queue: vec![handed(clustered("m/1", b"x-a", Some(1)))],
        inflight: vec![TransferredInflight {
            packet_id: 5,
            state: InflightState::AwaitingPubAck,
            delivery: handed(clustered("m/1", b"w-a", Some(0))),
        }],
        inbound_qos2: vec![],
    };
    // Through the bytes, as it travels: the ids cross too.
    let from_a = SessionTransfer::decode(&from_a.encode().unwrap()).unwrap();
    b.broker.adopt_handed_over(from_a, b.now()).unwrap();
    assert_eq!(
        b.broker.subscription_count(),
        1,
        "one session, one subscription"
    );

    let (mut client, connack) = b.connect(persistent(V5, "mover"));
    assert!(connack.session_present, "[MQTT-3.2.2-3]");
    let seen: Vec<(u16, bool, Vec<u8>)> = client
        .publishes()
        .iter()
        .map(|publish| (publish.packet_id, publish.dup, publish.payload.to_vec()))
        .collect();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[0], (5, true, b"w-a".to_vec()));
    let payloads: Vec<&[u8]> = seen.iter().map(|(_, _, payload)| &payload[..]).collect();
    assert_eq!(payloads, vec![&b"w-a"[..], b"x-a", b"y", b"z"]);
    assert!(seen[1..].iter().all(|(_, dup, _)| !dup));
    // The handed-over subscription routes what comes next, once, with its identifier.
    let mut local = b.connected(V5, "pub-b");
    local.publish("m/2", QoS::AtLeastOnce, b"after");
    let after = client.publish_received();
    assert_eq!(&after.payload[..], b"after");
    assert_eq!(after.properties.subscription_identifiers, vec![4]);
    assert!(client.publishes().is_empty(), "once");
}

/// Issue 16, a late copy (a message the previous owner received for a session after handing
/// it over): it reaches that session's plain subscriptions only, at the subscription's QoS
/// with its identifier, never another session of the same filter; the same message (its
/// cluster id) held by the session already is not queued again [MQTT-4.3.2-2]; a client id
/// with no session here is reached by nothing, nor is a session started clean since.
#[test]
fn a_late_copy_reaches_its_session_only_and_once_issue_16() {
    let b = Net::new();
    let moved = SessionTransfer {
        client_id: text("mover"),
        expiry: SessionExpiry::After(Duration::from_secs(600)),
        subscriptions: vec![(text("m/#"), record(QoS::AtLeastOnce, Some(7)))],
        queue: vec![handed(clustered("m/1", b"handed", Some(1)))],
        inflight: vec![],
        inbound_qos2: vec![],
    };
    b.broker
        .import_shell(shell("mover", "m/#"), 7, b.now())
        .unwrap();
    b.broker.adopt_handed_over(moved, b.now()).unwrap();
    let mut other = b.connected(V5, "other");
    other.subscribe("m/#", QoS::AtLeastOnce);
    let (reached, _) =
        b.broker
            .publish_late("mover", clustered("m/1", b"handed-again", Some(1)), b.now());
    assert_eq!(reached, 0, "held already");
    let (reached, _) = b
        .broker
        .publish_late("mover", clustered("m/2", b"late", Some(2)), b.now());
    assert_eq!(reached, 1);
    let (reached, _) = b
        .broker
        .publish_late("nobody", clustered("m/3", b"lost", Some(3)), b.now());
    assert_eq!(reached, 0);
    other.nothing();

    let (mut client, connack) = b.connect(persistent(V5, "mover"));
    assert!(connack.session_present);
    let seen = client.publishes();
    let payloads: Vec<&[u8]> = seen.iter().map(|publish| &publish.payload[..]).collect();
    assert_eq!(payloads, vec![&b"handed"[..], b"late"]);
    assert_eq!(seen[1].qos, QoS::AtLeastOnce);
    assert_eq!(seen[1].properties.subscription_identifiers, vec![7]);
    drop(client);

    // Started clean since: the new session takes no late copy of the old one's
    // [MQTT-3.1.2-4].
    let mut clean = persistent(V5, "mover");
    clean.clean_start = true;
    let (mut client, connack) = b.connect(clean);
    assert!(!connack.session_present);
    client.subscribe("m/#", QoS::AtLeastOnce);
    let (reached, _) = b
        .broker
        .publish_late("mover", clustered("m/4", b"old", Some(4)), b.now());
    assert_eq!(reached, 0);
    client.nothing();
}

/// Issue 16, a late copy of a message that reached the moving session both ways: through
/// this node's own routes (into the shell, then delivered and acknowledged) and through the
/// previous owner, which sends it on after the hand-over. The session remembers what it was
/// given since its shell was made, so the late copy is not delivered again
/// [MQTT-4.3.3-2]; once that memory is forgotten (no late copy can come), none is taken.
#[test]
fn a_late_copy_of_what_the_shell_was_given_is_dropped_issue_16() {
    let b = Net::new();
    b.broker
        .import_shell(shell("mover", "m/#"), 7, b.now())
        .unwrap();
    b.broker
        .publish_from_cluster(clustered("m/1", b"both-ways", Some(5)), true, &[], b.now());
    b.broker
        .adopt_handed_over(shell("mover", "m/#"), b.now())
        .unwrap();
    let (mut client, connack) = b.connect(persistent(V5, "mover"));
    assert!(connack.session_present);
    let got = client.publish_received();
    assert_eq!(&got.payload[..], b"both-ways");
    client.ack(&got);
    assert_eq!(b.broker.session("mover").unwrap().inflight_len(), 0);
    let (reached, _) = b
        .broker
        .publish_late("mover", clustered("m/1", b"again", Some(5)), b.now());
    assert_eq!(reached, 0, "given to the session before");
    client.nothing();
    // Another claim's memory is not forgotten: a new message still comes as a late copy.
    b.broker.forget_seen("mover", 6);
    let (reached, _) = b
        .broker
        .publish_late("mover", clustered("m/2", b"late", Some(6)), b.now());
    assert_eq!(reached, 1);
    assert_eq!(&client.publish_received().payload[..], b"late");
    // Forgotten (no late copy of the move can come any more): none is taken.
    b.broker.forget_seen("mover", 7);
    let (reached, _) =
        b.broker
            .publish_late("mover", clustered("m/3", b"too-late", Some(7)), b.now());
    assert_eq!(reached, 0);
    client.nothing();
}

/// Issue 16, a late copy that comes before this node's own copy of the same message (the
/// link from the previous owner was faster): the session takes the first and drops the
/// second, whichever way it came [MQTT-4.3.3-2]; a message planned once the session's
/// routes were in every table is not remembered.
#[test]
fn the_second_copy_of_a_moved_session_is_dropped_whichever_comes_first_issue_16() {
    let b = Net::new();
    b.broker
        .import_shell(shell("mover", "m/#"), 7, b.now())
        .unwrap();
    b.broker.seen_window("mover", 7, 100);
    b.broker
        .adopt_handed_over(shell("mover", "m/#"), b.now())
        .unwrap();
    let (mut client, _) = b.connect(persistent(V5, "mover"));
    let planned = |payload: &'static [u8], number: u64, planned_at: u64| {
        let mut message = clustered("m/1", payload, Some(number));
        if let Some(id) = message.cluster_id.as_deref_mut() {
            id.planned_at = planned_at;
        }
        message
    };
    let (reached, _) = b
        .broker
        .publish_late("mover", planned(b"late-first", 1, 99), b.now());
    assert_eq!(reached, 1);
    b.broker
        .publish_from_cluster(planned(b"direct-second", 1, 99), true, &[], b.now());
    let got = client.publishes();
    let payloads: Vec<&[u8]> = got.iter().map(|publish| &publish.payload[..]).collect();
    assert_eq!(payloads, vec![&b"late-first"[..]], "once");
    // Planned with the routes everywhere: came here only, so not remembered.
    b.broker
        .publish_from_cluster(planned(b"after", 2, 100), true, &[], b.now());
    assert_eq!(client.publishes().len(), 1);
    b.broker
        .publish_from_cluster(planned(b"after-again", 2, 100), true, &[], b.now());
    assert_eq!(
        client.publishes().len(),
        1,
        "outside the window, not remembered: no late copy of it ever comes"
    );
}

/// A QoS 1 message on `m/1` with the cluster id (`node`, run 9, `number`), planned with the
/// route table at log index `planned_at`.
fn planned(payload: &'static [u8], node: u64, number: u64, planned_at: u64) -> Message {
    let mut message = clustered("m/1", payload, Some(number));
    if let Some(id) = message.cluster_id.as_deref_mut() {
        id.node = node;
        id.planned_at = planned_at;
    }
    message
}

/// `message` as its node planned it in its next run (run 10: restarted since).
fn in_a_later_run(mut message: Message) -> Message {
    if let Some(id) = message.cluster_id.as_deref_mut() {
        id.run = 10;
    }
    message
}

/// Issue 16, a message the previous owner had before it handed the session over, which this
/// node's routes brought too (through a route it had for another client, slower than the
/// move): the nodes that answered the previous owner's flush (here node 3 in its run 9, not
/// node 4) sent it every copy they planned in that run before the session's routes reached
/// every table (log index 100), which it delivered on the old connection (the client may
/// have taken it: delivered again here, a QoS 2 message would be received twice
/// [MQTT-4.3.3-2]) or handed over. So such a copy is dropped: in the shell at the merge,
/// and as it comes later. Not dropped: a copy of node 4 (but one of what was handed over:
/// the ids), one node 3 planned in a later run (restarted since), one planned before the
/// previous owner's routes were everywhere (index 50: it may have gone to the owner before
/// it), one planned from index 100 on, a late copy, and one of a returned queue. Once no late copy can come, what is
/// known of the flush stays, until the move is forgotten.
#[test]
fn a_copy_the_previous_owner_had_is_not_delivered_again_issue_16() {
    let b = Net::new();
    b.broker
        .import_shell(shell("mover", "m/#"), 7, b.now())
        .unwrap();
    b.broker.seen_window("mover", 7, 100);
    let routed = |message: Message| b.broker.publish_from_cluster(message, true, &[], b.now()).0;
    // Into the shell before the hand-over's answer came.
    assert_eq!(routed(planned(b"taken-on-a", 3, 1, 99)), 1);
    assert_eq!(routed(planned(b"unflushed", 4, 1, 99)), 1);
    b.broker.seen_previous_owner(
        "mover",
        6,
        PreviousOwner {
            routes_from: 0,
            flushed: vec![(3, 9)],
            reached: Vec::new(),
        },
    );
    assert_eq!(
        routed(planned(b"other-claim", 3, 2, 99)),
        1,
        "another claim's answer says nothing of this one"
    );
    b.broker.seen_previous_owner(
        "mover",
        7,
        PreviousOwner {
            routes_from: 50,
            flushed: vec![(3, 9), (5, 9)],
            reached: Vec::new(),
        },
    );
    assert_eq!(routed(planned(b"taken-on-a-too", 3, 3, 98)), 0);
    let mut from_a = shell("mover", "m/#");
    from_a.queue = vec![
        handed(planned(b"held-by-a", 3, 4, 99)),
        handed(planned(b"held-from-4", 4, 5, 99)),
    ];
    b.broker.adopt_handed_over(from_a, b.now()).unwrap();
    // After the merge.
    assert_eq!(routed(planned(b"taken-on-a-later", 3, 5, 99)), 0);
    assert_eq!(routed(planned(b"flushed-and-held", 3, 4, 99)), 0);
    assert_eq!(
        routed(planned(b"held-from-4-again", 4, 5, 99)),
        0,
        "the ids"
    );
    assert_eq!(
        routed(in_a_later_run(planned(b"restarted", 3, 1, 99))),
        1,
        "node 3's later run"
    );
    assert_eq!(
        routed(planned(b"before-a-routed-it", 3, 11, 40)),
        1,
        "planned before the previous owner's routes were everywhere (index 50)"
    );
    assert_eq!(routed(planned(b"after-the-window", 3, 6, 100)), 1);
    let (reached, _) = b
        .broker
        .publish_late("mover", planned(b"late-from-4", 4, 2, 99), b.now());
    assert_eq!(
        reached, 1,
        "a late copy comes from a node that did not flush"
    );
    let mut returned = shell("mover", "m/#");
    returned.queue = vec![handed(planned(b"returned", 3, 7, 99))];
    b.broker.merge_returned(returned, b.now()).unwrap();

    // The shell's copies of node 3 went at the merge (`taken-on-a`, `other-claim`).
    let (mut client, connack) = b.connect(persistent(V5, "mover"));
    assert!(connack.session_present);
    let got = client.publishes();
    let payloads: Vec<&[u8]> = got.iter().map(|publish| &publish.payload[..]).collect();
    assert_eq!(
        payloads,
        vec![
            &b"held-by-a"[..],
            b"held-from-4",
            b"unflushed",
            b"restarted",
            b"before-a-routed-it",
            b"after-the-window",
            b"late-from-4",
            b"returned"
        ]
    );
    for publish in &got {
        client.ack(publish);
    }
    // No late copy can come: the ids go, what is known of the flush stays.
    b.broker.forget_seen("mover", 7);
    assert!(b.broker.knows_of_move("mover", 7));
    assert_eq!(routed(planned(b"still-had", 3, 8, 99)), 0);
    let (reached, _) = b
        .broker
        .publish_late("mover", planned(b"too-late", 4, 3, 99), b.now());
    assert_eq!(reached, 0);
    b.broker.forget_move("mover", 6);
    assert_eq!(
        routed(planned(b"still-had-2", 3, 9, 99)),
        0,
        "another claim's"
    );
    b.broker.forget_move("mover", 7);
    assert!(!b.broker.knows_of_move("mover", 7));
    assert_eq!(routed(planned(b"forgotten", 3, 10, 99)), 1);
    let got = client.publishes();
    let payloads: Vec<&[u8]> = got.iter().map(|publish| &publish.payload[..]).collect();
    assert_eq!(payloads, vec![&b"forgotten"[..]]);
}

/// Issue 16, a message the previous owner had from a node that did not answer its flush (cut
/// off, or slow): the last message of that node (4, in its run 9) that had reached it when
/// it exported the session was number 9. That node's copies for it cross one link in order,
/// so each of its copies planned before (with the previous owner's routes) reached it first,
/// and was delivered on the old connection or handed over: this node's own copy of one is
/// dropped, in the shell at the merge and as it comes later [MQTT-4.3.3-2]. Not dropped: a
/// later number, one planned before the previous owner's routes were everywhere, one of the
/// node's later run, one of another node, and a late copy: one numbered before number 9 but
/// queued after it reached the previous owner after the export and came on from there, the
/// client's only copy. So the merge keeps a late copy the shell took, and the shell's own
/// copy of a message when a late copy of it came (and found it there); and a late copy that
/// comes after the merge dropped the shell's own copy is taken.
#[test]
fn a_copy_that_reached_the_previous_owner_from_a_node_that_missed_the_flush_is_not_delivered_again_issue_16()
 {
    let b = Net::new();
    b.broker
        .import_shell(shell("mover", "m/#"), 7, b.now())
        .unwrap();
    b.broker.seen_window("mover", 7, 100);
    let routed = |message: Message| b.broker.publish_from_cluster(message, true, &[], b.now()).0;
    let late = |message: Message| b.broker.publish_late("mover", message, b.now()).0;
    // Into the shell before the hand-over's answer came.
    assert_eq!(routed(planned(b"reached-a", 4, 1, 99)), 1);
    assert_eq!(late(planned(b"late-before-the-merge", 4, 3, 99)), 1);
    assert_eq!(routed(planned(b"its-late-copy-came", 4, 7, 99)), 1);
    assert_eq!(late(planned(b"late-of-7", 4, 7, 99)), 0, "the shell has it");
    assert_eq!(routed(planned(b"its-late-copy-comes-later", 4, 8, 99)), 1);
    b.broker.seen_previous_owner(
        "mover",
        7,
        PreviousOwner {
            routes_from: 50,
            flushed: Vec::new(),
            reached: vec![(4, 9, 9)],
        },
    );
    assert_eq!(routed(planned(b"reached-a-too", 4, 2, 99)), 0);
    assert_eq!(routed(planned(b"after-the-last", 4, 10, 99)), 1);
    b.broker
        .adopt_handed_over(shell("mover", "m/#"), b.now())
        .unwrap();
    // After the merge.
    assert_eq!(routed(planned(b"reached-a-later", 4, 4, 99)), 0);
    assert_eq!(routed(planned(b"taken-late", 4, 3, 99)), 0, "the ids");
    assert_eq!(late(planned(b"late-after-the-merge", 4, 0, 99)), 1);
    assert_eq!(late(planned(b"late-of-8", 4, 8, 99)), 1);
    assert_eq!(
        routed(planned(b"before-a-routed-it", 4, 5, 40)),
        1,
        "planned before the previous owner's routes were everywhere (index 50)"
    );
    assert_eq!(
        routed(in_a_later_run(planned(b"restarted", 4, 1, 99))),
        1,
        "node 4's later run"
    );
    assert_eq!(routed(planned(b"another-node", 3, 1, 99)), 1);
    assert_eq!(
        b.broker.metrics().snapshot().second_copies_dropped,
        6,
        "counted: 2 at the merge, 1 late copy, 3 routed copies"
    );

    let (mut client, connack) = b.connect(persistent(V5, "mover"));
    assert!(connack.session_present);
    let got = client.publishes();
    let payloads: Vec<&[u8]> = got.iter().map(|publish| &publish.payload[..]).collect();
    assert_eq!(
        payloads,
        vec![
            &b"late-before-the-merge"[..],
            b"its-late-copy-came",
            b"after-the-last",
            b"late-after-the-merge",
            b"late-of-8",
            b"before-a-routed-it",
            b"restarted",
            b"another-node"
        ]
    );
}

/// Issue 16: a shared subscription's copy reaches one node only (the one its group's turn
/// picked), so the previous owner did not have a group's copy that this node's routes
/// brought to the shell (its only member, offline): the merge keeps it, although its origin
/// answered the flush, and the client gets it on return.
#[test]
fn a_shells_group_copy_is_kept_at_the_merge_issue_16() {
    let b = Net::new();
    let mut grouped = shell("mover", "m/#");
    grouped.subscriptions = vec![(text("$share/g/m/#"), record(QoS::AtLeastOnce, None))];
    b.broker.import_shell(grouped.clone(), 7, b.now()).unwrap();
    b.broker.seen_window("mover", 7, 100);
    let groups = [("g".to_owned(), "m/#".to_owned())];
    let (reached, _) =
        b.broker
            .publish_from_cluster(planned(b"for-the-group", 3, 1, 99), false, &groups, b.now());
    assert_eq!(reached, 1, "queued for the offline member");
    b.broker.seen_previous_owner(
        "mover",
        7,
        PreviousOwner {
            routes_from: 0,
            flushed: vec![(3, 9)],
            reached: Vec::new(),
        },
    );
    b.broker.adopt_handed_over(grouped, b.now()).unwrap();
    let (mut client, connack) = b.connect(persistent(V5, "mover"));
    assert!(connack.session_present);
    assert_eq!(&client.publish_received().payload[..], b"for-the-group");
}

/// Issue 16: a shell keeps the CONNECT's session expiry (what a restart before the client
/// attaches finds) but does not expire while its claim runs, however long the hand-over
/// takes: what it queued and what it remembers for late copies stay.
#[test]
fn a_shell_does_not_expire_while_its_claim_runs_issue_16() {
    let b = Net::new();
    let mut short = shell("mover", "m/#");
    short.expiry = SessionExpiry::After(Duration::from_secs(1));
    b.broker.import_shell(short, 7, b.now()).unwrap();
    b.broker
        .publish_from_cluster(clustered("m/1", b"queued", Some(1)), true, &[], b.now());
    b.advance(10_000);
    assert!(b.broker.has_shell("mover"), "no expiry while a shell");
    b.broker
        .adopt_handed_over(shell("mover", "m/#"), b.now())
        .unwrap();
    let (reached, _) = b
        .broker
        .publish_late("mover", clustered("m/1", b"again", Some(1)), b.now());
    assert_eq!(reached, 0, "still remembered");
    let (mut client, connack) = b.connect(persistent(V5, "mover"));
    assert!(connack.session_present);
    assert_eq!(&client.publish_received().payload[..], b"queued");
}

/// Issue 16: only a shell merges with a handed-over session; any other offline session of
/// the client id here (a copy left from before a clean start elsewhere) is replaced, so
/// nothing of it joins the session [MQTT-3.1.2-4].
#[test]
fn an_offline_session_that_is_not_a_shell_is_replaced_issue_16() {
    let b = Net::new();
    b.broker
        .import_session(shell("mover", "old/#"), b.now())
        .unwrap();
    b.broker
        .publish_from_cluster(clustered("old/1", b"stale", Some(7)), true, &[], b.now());
    let mut from_a = shell("mover", "m/#");
    from_a.queue = vec![handed(clustered("m/1", b"fresh", Some(8)))];
    b.broker.adopt_handed_over(from_a, b.now()).unwrap();
    let (mut client, connack) = b.connect(persistent(V5, "mover"));
    assert!(connack.session_present);
    let payloads: Vec<Vec<u8>> = client
        .publishes()
        .iter()
        .map(|publish| publish.payload.to_vec())
        .collect();
    assert_eq!(payloads, vec![b"fresh".to_vec()]);
    assert_eq!(b.broker.subscription_count(), 1);
}

/// Issue 16, the close before a hand-over: a session whose connection another node's claim
/// took waits here for its hand-over, which now comes after the claimer made its shell.
/// Meanwhile its will is not published (its client connected on the other node
/// [MQTT-3.1.3-9]) and it does not expire; the hand-over then finds it whole.
#[test]
fn a_session_held_for_its_hand_over_sends_no_will_and_stays_mqtt_3_1_3_9() {
    let a = Net::new();
    let mut watcher = a.connected(V5, "watcher");
    watcher.subscribe("gone/#", QoS::AtMostOnce);
    let mut connect = persistent(V5, "roamer");
    connect.properties.session_expiry_interval = Some(3);
    let will_properties = Properties {
        will_delay_interval: Some(1),
        ..Properties::default()
    };
    connect.will = Some(tern_codec::Will {
        topic: text("gone/roamer"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: will_properties,
    });
    let mut client = a.accepted(connect);
    client.subscribe("h/#", QoS::AtLeastOnce);
    assert!(a.broker.take_over("roamer"));
    assert_eq!(client.disconnect_reason(), ReasonCode::SessionTakenOver);
    drop(client);
    a.broker.hold_for_hand_over("roamer");
    a.advance(10_000);
    assert!(watcher.publishes().is_empty(), "no will [MQTT-3.1.3-9]");
    let transfer = a.broker.export_session("roamer", a.now()).expect("kept");
    assert_eq!(transfer.subscriptions.len(), 1);
}

/// A session of `client_id` with one QoS 1 subscription to `filter`, nothing queued.
fn shell(client_id: &str, filter: &str) -> SessionTransfer {
    SessionTransfer {
        client_id: text(client_id),
        expiry: SessionExpiry::Never,
        subscriptions: vec![(text(filter), record(QoS::AtLeastOnce, None))],
        queue: vec![],
        inflight: vec![],
        inbound_qos2: vec![],
    }
}

fn record(qos: QoS, identifier: Option<u32>) -> SubscriptionRecord {
    SubscriptionRecord {
        options: SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        },
        identifier,
    }
}

fn mqtt_str() -> impl Strategy<Value = MqttStr> {
    "[a-z0-9/+#$]{0,12}".prop_map(|text| MqttStr::try_from(text).unwrap())
}

fn qos() -> impl Strategy<Value = QoS> {
    (0u8..3).prop_map(|value| QoS::from_u8(value).unwrap())
}

fn subscription_record() -> impl Strategy<Value = SubscriptionRecord> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        0u8..3,
        any::<Option<u32>>(),
    )
        .prop_map(
            |(qos, no_local, retain_as_published, handling, identifier)| SubscriptionRecord {
                options: SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling: match handling {
                        0 => RetainHandling::SendAtSubscribe,
                        1 => RetainHandling::SendAtSubscribeIfNew,
                        _ => RetainHandling::DoNotSend,
                    },
                },
                identifier,
            },
        )
}

fn properties() -> impl Strategy<Value = Option<Arc<Properties>>> {
    (
        any::<Option<bool>>(),
        proptest::option::of(mqtt_str()),
        proptest::collection::vec((mqtt_str(), mqtt_str()), 0..3),
    )
        .prop_map(|(format, content_type, user_properties)| {
            let properties = Properties {
                payload_format_indicator: format,
                content_type,
                user_properties,
                ..Properties::default()
            };
            (!properties.is_empty()).then(|| Arc::new(properties))
        })
}

fn delivery() -> impl Strategy<Value = TransferredDelivery> {
    let message = (
        "[a-z0-9/]{1,12}",
        proptest::collection::vec(any::<u8>(), 0..40),
        qos(),
        any::<bool>(),
        properties(),
        proptest::option::of(mqtt_str()),
    )
        .prop_map(
            |(topic, payload, qos, retain, properties, publisher)| Message {
                cluster_id: None,
                topic: MqttStr::try_from(topic).unwrap(),
                payload: Bytes::from(payload),
                qos,
                retain,
                properties,
                expires_at: None,
                publisher,
                id: 0,
            },
        );
    (
        message,
        proptest::option::of((any::<u32>(), 0u32..1_000_000_000)),
        qos(),
        any::<bool>(),
        proptest::collection::vec(1u32..268_435_455, 0..4),
        proptest::option::of(mqtt_str()),
    )
        .prop_map(|(message, expires_in, qos, retain, ids, shared_filter)| {
            TransferredDelivery {
                message,
                expires_in: expires_in
                    .map(|(seconds, nanos)| Duration::new(u64::from(seconds), nanos)),
                qos,
                retain,
                subscription_ids: ids.into_iter().fold(SubscriptionIds::None, |mut all, id| {
                    all.push(id);
                    all
                }),
                shared_filter,
            }
        })
}

fn transfer() -> impl Strategy<Value = SessionTransfer> {
    let expiry = prop_oneof![
        Just(SessionExpiry::AtDisconnect),
        Just(SessionExpiry::Never),
        any::<u32>().prop_map(|seconds| SessionExpiry::After(Duration::from_secs(seconds.into()))),
    ];
    let inflight =
        (1u16.., 0u8..3, delivery()).prop_map(|(packet_id, state, delivery)| TransferredInflight {
            packet_id,
            state: match state {
                0 => InflightState::AwaitingPubAck,
                1 => InflightState::AwaitingPubRec,
                _ => InflightState::AwaitingPubComp,
            },
            delivery,
        });
    (
        mqtt_str(),
        expiry,
        proptest::collection::vec((mqtt_str(), subscription_record()), 0..4),
        proptest::collection::vec(delivery(), 0..4),
        proptest::collection::vec(inflight, 0..4),
        proptest::collection::vec(any::<u16>(), 0..4),
    )
        .prop_map(
            |(client_id, expiry, subscriptions, queue, inflight, inbound_qos2)| SessionTransfer {
                client_id,
                expiry,
                subscriptions,
                queue,
                inflight,
                inbound_qos2,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Issue 16: whatever a session holds survives its encoding.
    #[test]
    fn a_transfer_round_trips_through_its_encoding(transfer in transfer()) {
        let bytes = transfer.encode().unwrap();
        prop_assert_eq!(SessionTransfer::decode(&bytes), Ok(transfer));
    }

    /// Issue 16: a transfer cut short or damaged is refused, never a panic.
    #[test]
    fn damaged_transfers_are_refused_without_panicking(
        transfer in transfer(),
        cut in any::<prop::sample::Index>(),
        flip in any::<(prop::sample::Index, u8)>(),
    ) {
        let bytes = transfer.encode().unwrap();
        let cut = cut.index(bytes.len());
        prop_assert!(SessionTransfer::decode(&bytes[..cut]).is_err());
        let mut damaged = bytes.clone();
        let at = flip.0.index(damaged.len());
        damaged[at] ^= flip.1.max(1);
        let _ = SessionTransfer::decode(&damaged);
    }
}

/// Issue 16: the imported session is written to the store whole (it survives a restart of
/// its new node), and the exported one is removed from the old node's store.
#[test]
fn hand_over_is_stored_on_both_sides_issue_16() {
    let recorder = Arc::new(Recorder::default());
    let a = Net::with_persistence(
        Default::default(),
        Default::default(),
        Some(recorder.clone()),
    );
    let mut client = a.accepted(persistent(V5, "stored"));
    client.subscribe("st/#", QoS::AtLeastOnce);
    let mut publisher = a.connected(V5, "pub");
    publisher.publish("st/1", QoS::AtLeastOnce, b"1");
    assert_eq!(client.publishes().len(), 1);
    drop(client);
    recorder.take();
    let transfer = a.broker.export_session("stored", a.now()).unwrap();
    assert!(submitted(&recorder).contains(&"SessionEnded"));
    let b_recorder = Arc::new(Recorder::default());
    let b = Net::with_persistence(
        Default::default(),
        Default::default(),
        Some(b_recorder.clone()),
    );
    b.broker.import_session(transfer, b.now()).unwrap();
    let kinds = submitted(&b_recorder);
    for kind in ["Session", "Subscribed", "Message", "Inflight"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let (_client, connack) = b.connect(persistent(V5, "stored"));
    assert!(connack.session_present);
}

/// The kinds of the changes submitted since the last look.
fn submitted(recorder: &Recorder) -> Vec<&'static str> {
    recorder
        .take()
        .into_iter()
        .filter_map(|event| match event {
            Event::Submit(_, kind) => Some(kind),
            _ => None,
        })
        .collect()
}

/// Damaged bytes: an empty buffer and an unknown format are refused.
#[test]
fn garbage_is_refused() {
    assert!(SessionTransfer::decode(&[]).is_err());
    assert_eq!(SessionTransfer::decode(&[9]), Err(TransferError::Format(9)));
}

/// Issue 16 ("its queued messages return when N1 does"): node A's copy of a session (a QoS 1
/// message in flight, unacknowledged, and its queue) is taken out up to a cutoff
/// (`export_returned`: what was queued after it is left out) and merged into the session
/// its client resumed on node B (`merge_returned`): the client connected there gets the
/// in-flight message, then the queued one, as new PUBLISH packets of its session on B.
#[test]
fn a_returned_copy_joins_the_live_session_issue_16() {
    let a = Net::new();
    let b = Net::new();
    let mut client = a.accepted(persistent(V5, "roamer"));
    client.subscribe("h/#", QoS::AtLeastOnce);
    let mut publisher = a.connected(V5, "pub-a");
    publisher.publish("h/1", QoS::AtLeastOnce, b"one");
    assert_eq!(client.publishes().len(), 1, "in flight, not acknowledged");
    assert!(a.broker.take_over("roamer"));
    drop(client);
    publisher.publish("h/2", QoS::AtLeastOnce, b"two");
    let cutoff = a
        .broker
        .next_queue_position("roamer")
        .expect("offline on A");
    publisher.publish("h/3", QoS::AtLeastOnce, b"three"); // after the cutoff
    let transfer = a
        .broker
        .export_returned("roamer", cutoff, a.now())
        .expect("offline");
    assert!(a.session("roamer").is_none(), "taken out of node A");
    assert_eq!(transfer.inflight.len(), 1);
    assert_eq!(transfer.queue.len(), 1, "h/3 came after the cutoff");
    let transfer = SessionTransfer::decode(&transfer.encode().unwrap()).unwrap();

    let returned = transfer.clone();
    assert_eq!(
        b.broker.merge_returned(returned, b.now()),
        Err(TransferError::NoSession),
        "no session on B yet"
    );
    let mut client = b.accepted(persistent(V5, "roamer"));
    client.subscribe("h/#", QoS::AtLeastOnce);
    b.broker.merge_returned(transfer, b.now()).unwrap();
    let got: Vec<(bool, Vec<u8>)> = client
        .publishes()
        .iter()
        .map(|publish| (publish.dup, publish.payload.to_vec()))
        .collect();
    assert_eq!(
        got,
        vec![(false, b"one".to_vec()), (false, b"two".to_vec())]
    );
}
