//! The node's lease on its clients, as the connections see it (issue 16, "never two live
//! connections for one client id"): a clustered node whose lease ran out serves no client,
//! whichever of its tasks runs first when a stalled process wakes (SIGSTOP, a paused
//! machine), and a lease confirmed again after a gap closes what was connected before it.
//! On the fake clock, with no server task looking at the lease.

mod common;

use std::time::Duration;

use common::*;
use tern_broker::Message;
use tern_codec::{Packet, QoS, ReasonCode};

/// A message another node forwarded, for the topic `topic`.
fn forwarded(topic: &str, payload: &'static [u8]) -> Message {
    Message {
        topic: text(topic),
        payload: bytes::Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: None,
        expires_at: None,
        publisher: Some(text("elsewhere")),
        id: 0,
        cluster_id: None,
    }
}

/// The lease runs out while nothing runs (the process stalled past it): on waking, the
/// publisher's next PUBLISH is not taken (DISCONNECT 0x9C Use another server, the message
/// routed to no one), a message another node forwarded meanwhile is not sent to the
/// subscriber (it is closed with 0x9C instead: its client may be connected elsewhere by
/// now), and a 3.1.1 client is closed at its next packet.
#[test]
fn past_its_lease_a_node_serves_no_client_issue_16() {
    let net = Net::new();
    net.broker.require_lease();
    let start = net.now();
    net.broker
        .extend_lease(start, start + Duration::from_secs(10), || {});
    let mut subscriber = net.connected(V5, "subscriber");
    subscriber.subscribe("t/#", QoS::AtLeastOnce);
    let mut watcher = net.connected(V5, "watcher");
    watcher.subscribe("t/#", QoS::AtLeastOnce);
    let mut old = net.connected(V311, "old");
    let mut publisher = net.connected(V5, "publisher");
    publisher.publish("t/1", QoS::AtLeastOnce, b"within");
    assert!(matches!(publisher.next(), Some(Packet::PubAck(_))));
    assert_eq!(&subscriber.publish_received().payload[..], b"within");
    assert_eq!(&watcher.publish_received().payload[..], b"within");

    // Stalled for 11 s: the timers fire on waking, the lease is not confirmed again.
    net.advance(11_000);
    publisher.publish("t/1", QoS::AtLeastOnce, b"after");
    match publisher.received().as_slice() {
        [Packet::Disconnect(disconnect)] => {
            assert_eq!(disconnect.reason_code, ReasonCode::UseAnotherServer);
        }
        other => panic!("expected DISCONNECT 0x9C alone (no PUBACK), got {other:?}"),
    }
    let (reached, _) =
        net.broker
            .publish_from_cluster(forwarded("t/2", b"forwarded"), true, &[], net.now());
    assert_eq!(reached, 2, "queued for both sessions");
    // Nothing but the DISCONNECT: not the forwarded message.
    for client in [&mut subscriber, &mut watcher] {
        match client.received().as_slice() {
            [Packet::Disconnect(disconnect)] => {
                assert_eq!(disconnect.reason_code, ReasonCode::UseAnotherServer);
            }
            other => panic!("expected DISCONNECT 0x9C alone, got {other:?}"),
        }
        assert!(client.is_closed());
    }
    old.send(Packet::PingReq);
    old.closed_silently();
}

/// A single node has no lease: its clients are served however long it stalls.
#[test]
fn a_single_node_has_no_lease() {
    let net = Net::new();
    let mut client = net.connected(V5, "client");
    net.advance(3_600_000);
    client.subscribe("t", QoS::AtMostOnce);
    assert!(!client.is_closed());
}

/// A lease confirmed again after it had run out (the node asked only then) closes every
/// connection made under the one that ran out first, even one that sent nothing since (and so
/// never looked at the lease): its client id may have been granted elsewhere meanwhile, and
/// this node may not have applied that yet. A lease confirmed again before it ran out (no
/// gap: no other node granted its client ids) closes nothing, nor does the node's first
/// confirmation, nor a stale one. Only the gap runs the caller's `on_gap`, before the lease
/// is extended.
#[test]
fn a_lease_confirmed_again_after_a_gap_closes_what_was_connected_under_the_old_one_issue_16() {
    let net = Net::new();
    net.broker.require_lease();
    let start = net.now();
    let secs = Duration::from_secs;
    let no_gap = || panic!("not a gap");
    assert!(!net.broker.extend_lease(start, start + secs(10), no_gap));
    let mut idle = net.connected(V5, "idle");
    // Asked at 5 s, before the lease ran out at 10 s: it holds until 15 s.
    net.advance(5_000);
    let now = net.now();
    assert!(!net.broker.extend_lease(now, now + secs(10), no_gap));
    assert!(
        !net.broker
            .extend_lease(start + secs(1), start + secs(11), no_gap)
    );
    idle.nothing();
    assert!(!idle.is_closed());
    assert!(net.broker.holds_lease(net.now()));
    // Asked at 16 s, after it ran out at 15 s.
    net.advance(11_000);
    assert!(!net.broker.holds_lease(net.now()));
    let now = net.now();
    let mut seen_before_the_extension = None;
    assert!(net.broker.extend_lease(now, now + secs(10), || {
        seen_before_the_extension = Some(net.broker.holds_lease(now));
    }));
    assert_eq!(seen_before_the_extension, Some(false), "on_gap runs first");
    assert!(net.broker.holds_lease(net.now()));
    assert_eq!(idle.disconnect_reason(), ReasonCode::UseAnotherServer);
    let mut fresh = net.connected(V5, "fresh");
    fresh.subscribe("t", QoS::AtMostOnce);
    assert!(!fresh.is_closed(), "served under the new lease");
}
