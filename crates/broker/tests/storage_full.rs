//! A full (or failing) disk: while the store takes no new durable work, what would need it is
//! refused with the reason code the protocol has for it, and everything else goes on. A slow
//! disk: a connection whose changes wait for it stops taking input, the others read on.
//!
//! The store is a recording double whose answers the tests set; the real store's watermark is
//! tested in `tern-store`, the whole through sockets in `tern-server`.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{Client, Net};
use common::{
    Recorder, V5, V311, ack_with, connect_packet, persistent, publish_packet, retained,
    subscribe_packet, text,
};
use tern_broker::persist::{Persistence, Seq};
use tern_broker::{BrokerConfig, CloseReason, Hooks, STORAGE_REFUSAL_CLOSE};
use tern_codec::{Ack, Packet, Properties, Publish, QoS, ReasonCode, Will};

/// A broker over a recording store, and the store.
fn broker() -> (Net, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let persistence: Arc<dyn Persistence> = recorder.clone();
    let net = Net::with_persistence(BrokerConfig::default(), Hooks::default(), Some(persistence));
    (net, recorder)
}

/// A persistent MQTT 5 session subscribed to `filter` at QoS 1.
fn stored_subscriber(net: &Net, id: &str, filter: &str) -> Client {
    let mut client = net.accepted(persistent(V5, id));
    client.subscribe(filter, QoS::AtLeastOnce);
    client
}

/// The changes submitted since the last call that would make the store grow.
fn growth(recorder: &Recorder) -> Vec<&'static str> {
    recorder
        .take_kinds()
        .into_iter()
        .filter(|kind| ["Message", "Queued", "Retained", "Subscribed", "Inflight"].contains(kind))
        .collect()
}

fn only_ack(client: &mut Client) -> Ack {
    match client.received().as_slice() {
        [Packet::PubAck(ack) | Packet::PubRec(ack) | Packet::PubComp(ack)] => ack.clone(),
        other => panic!("expected one acknowledgement, got {other:?}"),
    }
}

/// MQTT 5 section 3.4.2.1: PUBACK 0x97 Quota exceeded. A QoS 1 PUBLISH that would be queued for
/// a persistent session is refused as a whole while the disk is full; nothing is stored and
/// nothing forwarded, so the publisher knows it must send it again.
#[test]
fn a_qos1_publish_for_a_stored_session_gets_puback_quota_exceeded() {
    let (net, recorder) = broker();
    let mut subscriber = stored_subscriber(&net, "stored", "meters/#");
    let mut publisher = net.connected(V5, "publisher");
    recorder.take();
    recorder.set_accepting(false);

    let id = publisher.publish("meters/1", QoS::AtLeastOnce, b"1532");
    let ack = only_ack(&mut publisher);
    assert_eq!(
        (ack.packet_id, ack.reason_code),
        (id, ReasonCode::QuotaExceeded)
    );
    let reason = ack.properties.reason_string.expect("a reason string");
    assert!(reason.contains("storage is full"), "{reason}");
    subscriber.nothing();
    assert_eq!(growth(&recorder), Vec::<&str>::new());
    let metrics = net.broker.metrics().snapshot();
    assert_eq!(metrics.messages_refused_storage_full, 1);

    // Room again: the same message goes through.
    recorder.set_accepting(true);
    let id = publisher.publish("meters/1", QoS::AtLeastOnce, b"1532");
    let delivered = subscriber.publish_received();
    assert_eq!(delivered.payload, Bytes::from_static(b"1532"));
    // (The PUBACK waits for the subscriber's, or for the store.)
    subscriber.ack(&delivered);
    assert_eq!(
        only_ack(&mut publisher),
        Ack::new(id),
        "accepted once the store takes work again"
    );
}

/// QoS 0 traffic and QoS 1 between clean sessions need no disk and are untouched; a QoS 0
/// message still reaches a persistent subscriber (at QoS 0, which is never stored).
#[test]
fn qos0_and_clean_sessions_carry_on_while_the_disk_is_full() {
    let (net, recorder) = broker();
    let mut stored = stored_subscriber(&net, "stored", "meters/#");
    let mut clean = net.connected(V5, "clean");
    clean.subscribe("room/#", QoS::AtLeastOnce);
    let mut publisher = net.connected(V5, "publisher");
    let mut old_publisher = net.connected(V311, "old-publisher");
    recorder.take();
    recorder.set_accepting(false);

    for round in 0..3u8 {
        let id = publisher.publish("room/1", QoS::AtLeastOnce, &[round]);
        assert_eq!(only_ack(&mut publisher), Ack::new(id));
        let id = old_publisher.publish("room/2", QoS::AtLeastOnce, &[round]);
        assert_eq!(only_ack(&mut old_publisher), Ack::new(id));
        publisher.publish("meters/1", QoS::AtMostOnce, &[round]);
    }
    assert_eq!(clean.publishes().len(), 6);
    let to_stored = stored.publishes();
    assert_eq!(to_stored.len(), 3);
    assert!(to_stored.iter().all(|p| p.qos == QoS::AtMostOnce));
    assert_eq!(growth(&recorder), Vec::<&str>::new());
    assert!(!old_publisher.is_closed());
}

/// MQTT 5 PUBREC 0x97 ends the QoS 2 flow: no packet identifier is kept, so a PUBREL for it
/// gets PUBCOMP 0x92 [MQTT-4.3.3-4 .. 4.3.3-13, section 3.5.2.1].
#[test]
fn a_qos2_publish_for_a_stored_session_gets_pubrec_quota_exceeded_and_keeps_no_identifier() {
    let (net, recorder) = broker();
    let mut subscriber = stored_subscriber(&net, "stored", "meters/#");
    let mut publisher = net.accepted(persistent(V5, "publisher"));
    recorder.set_accepting(false);

    let id = publisher.publish("meters/1", QoS::ExactlyOnce, b"x");
    let ack = only_ack(&mut publisher);
    assert_eq!(
        (ack.packet_id, ack.reason_code),
        (id, ReasonCode::QuotaExceeded)
    );
    publisher.send(ack_with(Packet::PubRel, id, ReasonCode::Success));
    let comp = only_ack(&mut publisher);
    assert_eq!(comp.reason_code, ReasonCode::PacketIdentifierNotFound);
    subscriber.nothing();
}

/// A QoS 2 PUBLISH taken before the disk filled and sent again (its PUBREC lost) is the same
/// message: acknowledged again, not refused and not forwarded twice [MQTT-4.3.3-9].
#[test]
fn a_resent_qos2_publish_taken_before_the_disk_filled_is_acknowledged_not_refused() {
    let (net, recorder) = broker();
    let mut subscriber = stored_subscriber(&net, "stored", "meters/#");
    let mut publisher = net.accepted(persistent(V5, "publisher"));
    let mut publish = publish_packet("meters/1", QoS::ExactlyOnce, b"x");
    publish.packet_id = 9;
    publisher.send(Packet::Publish(publish.clone()));
    assert_eq!(only_ack(&mut publisher), Ack::new(9));
    assert_eq!(subscriber.publishes().len(), 1);

    recorder.set_accepting(false);
    publisher.send(Packet::Publish(Publish {
        dup: true,
        ..publish
    }));
    assert_eq!(only_ack(&mut publisher), Ack::new(9));
    subscriber.nothing();
}

/// Retained messages: setting one needs the disk (0x97 for QoS 1; a QoS 0 one is forwarded but
/// not retained), clearing one frees it and is accepted [MQTT-3.3.1-5, MQTT-3.3.1-6].
#[test]
fn retained_messages_are_not_replaced_while_the_disk_is_full_but_may_be_cleared() {
    let (net, recorder) = broker();
    let mut publisher = net.connected(V5, "publisher");
    publisher.publish_with(retained("status/a", QoS::AtLeastOnce, b"old"));
    publisher.publish_with(retained("status/b", QoS::AtLeastOnce, b"old"));
    publisher.received();
    let mut live = net.connected(V5, "live");
    live.subscribe("status/#", QoS::AtMostOnce);
    live.received();
    recorder.set_accepting(false);

    let id = publisher.publish_with(retained("status/a", QoS::AtLeastOnce, b"new"));
    let ack = only_ack(&mut publisher);
    assert_eq!(
        (ack.packet_id, ack.reason_code),
        (id, ReasonCode::QuotaExceeded)
    );
    live.nothing();

    publisher.publish_with(retained("status/a", QoS::AtMostOnce, b"qos0"));
    assert_eq!(live.payloads(), vec![Bytes::from_static(b"qos0")]);
    assert_eq!(
        net.broker
            .metrics()
            .snapshot()
            .retained_dropped_storage_full,
        1
    );

    let id = publisher.publish_with(retained("status/b", QoS::AtLeastOnce, b""));
    assert_eq!(
        only_ack(&mut publisher).reason_code,
        ReasonCode::Success,
        "a clear is taken ({id})"
    );

    let mut late = net.connected(V5, "late");
    late.subscribe("status/#", QoS::AtMostOnce);
    assert_eq!(late.payloads(), vec![Bytes::from_static(b"old")]);
}

/// MQTT 3.1.1 has no negative PUBACK: the message is not acknowledged (it was not stored) and
/// the connection is closed after a bounded wait, so the client resends it after reconnecting
/// [MQTT-4.4.0-1]. An abnormal close: the will is published [MQTT-3.1.2-8].
#[test]
fn a_3_1_1_publisher_is_not_acknowledged_and_closed_after_a_bounded_wait() {
    let (net, recorder) = broker();
    let _stored = stored_subscriber(&net, "stored", "meters/#");
    let mut watcher = net.connected(V5, "watcher");
    watcher.subscribe("wills/#", QoS::AtMostOnce);
    let mut connect = connect_packet(V311, "old");
    connect.will = Some(Will {
        topic: text("wills/old"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    let mut publisher = net.accepted(connect);
    recorder.set_accepting(false);

    publisher.publish("meters/1", QoS::AtLeastOnce, b"1");
    publisher.publish("meters/1", QoS::ExactlyOnce, b"2");
    publisher.nothing();
    let wait = u64::try_from(STORAGE_REFUSAL_CLOSE.as_millis()).unwrap();
    net.advance(wait - 1);
    assert!(!publisher.is_closed(), "open until the wait is over");
    // QoS 0 still flows meanwhile.
    publisher.publish("wills/chatter", QoS::AtMostOnce, b"hi");
    net.advance(1);
    publisher.closed_silently();
    assert_eq!(
        publisher.close_reason(),
        Some(CloseReason::StorageUnavailable)
    );
    assert_eq!(
        watcher.payloads(),
        vec![Bytes::from_static(b"hi"), Bytes::from_static(b"gone")]
    );
}

/// SUBSCRIBE of a persistent session while the disk is full: a new subscription gets SUBACK
/// 0x97 (MQTT 5) or 0x80 (3.1.1, its only failure code) [MQTT-3.9.3-1]; one the session already
/// has is replaced as usual; a clean session subscribes as usual.
#[test]
fn a_stored_session_may_not_add_subscriptions_while_the_disk_is_full() {
    let (net, recorder) = broker();
    let mut stored = stored_subscriber(&net, "stored", "meters/#");
    let mut old = net.accepted(persistent(V311, "old"));
    let mut clean = net.connected(V5, "clean");
    recorder.take();
    recorder.set_accepting(false);

    stored.send(subscribe_packet(
        7,
        &[
            ("meters/#", QoS::AtLeastOnce),
            ("rooms/#", QoS::AtLeastOnce),
        ],
    ));
    match stored.received().as_slice() {
        [Packet::SubAck(suback)] => assert_eq!(
            suback.reason_codes,
            vec![ReasonCode::GrantedQos1, ReasonCode::QuotaExceeded]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    assert_eq!(
        old.subscribe("rooms/#", QoS::AtLeastOnce).reason_codes,
        vec![ReasonCode::UnspecifiedError]
    );
    assert_eq!(
        clean.subscribe("rooms/#", QoS::AtLeastOnce).reason_codes,
        vec![ReasonCode::GrantedQos1]
    );
    // Only the replaced subscription was written.
    let subscribed = recorder
        .take_kinds()
        .into_iter()
        .filter(|k| *k == "Subscribed");
    assert_eq!(subscribed.count(), 1);
    assert_eq!(
        net.broker
            .metrics()
            .snapshot()
            .subscriptions_refused_storage_full,
        2
    );

    recorder.set_accepting(true);
    assert_eq!(
        old.subscribe("rooms/#", QoS::AtLeastOnce).reason_codes,
        vec![ReasonCode::GrantedQos1]
    );
}

/// A slow disk: a connection whose own changes are not durable stops taking input while the
/// store is congested, and takes it again once they are; a connection that waits for nothing
/// from the store reads on.
#[test]
fn a_publisher_waits_for_a_congested_store_and_others_do_not() {
    let (net, recorder) = broker();
    // Offline: its messages are queued in the store.
    stored_subscriber(&net, "stored", "meters/#").disconnect();
    let mut publisher = net.connected(V5, "publisher");
    let mut chatter = net.connected(V5, "chatter");
    recorder.set_durable(Seq::NONE);

    publisher.publish("meters/1", QoS::AtLeastOnce, b"1");
    chatter.publish("meters/1", QoS::AtMostOnce, b"0");
    assert!(publisher.wants_input(), "not congested: read on");
    recorder.set_congested(true);
    assert!(!publisher.wants_input(), "its message waits for the disk");
    assert!(chatter.wants_input(), "QoS 0 waits for nothing");
    publisher.nothing();

    recorder.set_durable(Seq::ALL);
    assert!(publisher.wants_input(), "its changes are durable");
    assert_eq!(only_ack(&mut publisher).reason_code, ReasonCode::Success);
}

/// While the store is congested, a QoS 1 message for a *connected* persistent session is
/// stored at once rather than held for its subscriber's acknowledgement (which the sweep would
/// store later, out of reach of the publisher's input barrier): the publisher waits too.
#[test]
fn while_congested_deliveries_to_connected_sessions_are_stored_at_once() {
    let (net, recorder) = broker();
    let _online = stored_subscriber(&net, "online", "meters/#");
    let mut publisher = net.connected(V5, "publisher");
    recorder.set_durable(Seq::NONE);
    recorder.set_congested(true);
    recorder.take();
    publisher.publish("meters/1", QoS::AtLeastOnce, b"1");
    assert!(growth(&recorder).contains(&"Message"), "stored at once");
    assert!(!publisher.wants_input());
}

/// While commits fail, what would wait on one with no bound is refused: a stored session's
/// QoS 2 PUBLISH (PUBREC 0x97, even with no stored subscriber) and the CONNECT of a persistent
/// session (CONNACK 0x88 Server unavailable; 3.1.1: return code 3). Clean sessions carry on.
#[test]
fn while_commits_fail_nothing_waits_on_them_without_a_bound() {
    let (net, recorder) = broker();
    let mut clean_sub = net.connected(V5, "clean-sub");
    clean_sub.subscribe("room/#", QoS::ExactlyOnce);
    let mut stored_pub = net.accepted(persistent(V5, "stored-pub"));
    recorder.set_failing(true);

    let id = stored_pub.publish("room/1", QoS::ExactlyOnce, b"x");
    let ack = only_ack(&mut stored_pub);
    assert_eq!(
        (ack.packet_id, ack.reason_code),
        (id, ReasonCode::QuotaExceeded)
    );
    clean_sub.nothing();
    let (_, connack) = net.connect(persistent(V5, "returning"));
    assert_eq!(connack.reason_code, ReasonCode::ServerUnavailable);
    let (_, connack) = net.connect(persistent(V311, "returning-old"));
    assert_eq!(connack.reason_code, ReasonCode::ServerUnavailable);
    let (_, connack) = net.connect(connect_packet(V5, "clean"));
    assert_eq!(connack.reason_code, ReasonCode::Success);

    recorder.set_failing(false);
    let (_, connack) = net.connect(persistent(V5, "returning"));
    assert_eq!(connack.reason_code, ReasonCode::Success);
}

/// The storage alarm is a gauge that follows the store and clears itself.
#[test]
fn the_storage_alarm_follows_the_store() {
    let (net, recorder) = broker();
    let alarm = || net.broker.metrics().snapshot().storage_alarm;
    net.advance(1000);
    assert_eq!(alarm(), 0);
    recorder.set_accepting(false);
    net.broker.handle_timeout(net.now());
    assert_eq!(alarm(), 1);
    recorder.set_accepting(true);
    net.broker.handle_timeout(net.now());
    assert_eq!(alarm(), 0);
}
