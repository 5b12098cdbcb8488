//! The claim of a client id at CONNECT in a cluster (issue 16, "decisions that may wait"): an
//! authenticated CONNECT asks the cluster hook whether this node may own the client id; a
//! pending claim keeps the connection waiting (no input handled, bounded by the connect
//! timeout), the answer comes back through the broker from any thread, and a grant may carry
//! the session the previous owner handed over. Driven on the harness with a fake hook.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tern_broker::{
    BrokerConfig, ClaimDecision, ClaimGrant, ClaimRequest, CloseReason, ClusterHook, ClusterPlan,
    Message, Seq,
};
use tern_codec::{Packet, QoS, ReasonCode};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Completes a claim whose answer carries no session (nothing can come back).
trait CompleteIgnoring {
    fn complete_ignoring(self, result: Result<ClaimGrant, ReasonCode>);
}

impl CompleteIgnoring for tern_broker::ClaimCompletion {
    fn complete_ignoring(self, result: Result<ClaimGrant, ReasonCode>) {
        let carried = result.as_ref().is_ok_and(|grant| grant.transfer.is_some());
        let back = self.complete(result);
        assert!(back.is_none() || carried);
    }
}

/// A cluster hook that answers every claim with `decision` and keeps the requests.
struct FakeCluster {
    decision: ClaimDecision,
    requests: Mutex<Vec<ClaimRequest>>,
}

impl FakeCluster {
    fn new(decision: ClaimDecision) -> Arc<FakeCluster> {
        Arc::new(FakeCluster {
            decision,
            requests: Mutex::new(Vec::new()),
        })
    }

    fn take(&self) -> ClaimRequest {
        let mut requests = self.requests.lock().unwrap();
        assert!(!requests.is_empty(), "a claim was asked");
        requests.remove(0)
    }
}

impl ClusterHook for FakeCluster {
    fn route_added(&self, _: &str, _: Option<&str>) {}
    fn route_removed(&self, _: &str, _: Option<&str>) {}
    fn plan(&self, _: &Message) -> Option<ClusterPlan> {
        None
    }
    fn forward(&self, _: &Arc<Message>, _: ClusterPlan) -> Seq {
        Seq::NONE
    }
    fn retained_changed(&self, _: &str, _: Option<&Arc<Message>>) {}
    fn claim(&self, request: ClaimRequest) -> ClaimDecision {
        self.requests.lock().unwrap().push(request);
        self.decision.clone()
    }
}

/// A hook that does not override `claim`: the default grants.
struct RoutesOnly;

impl ClusterHook for RoutesOnly {
    fn route_added(&self, _: &str, _: Option<&str>) {}
    fn route_removed(&self, _: &str, _: Option<&str>) {}
    fn plan(&self, _: &Message) -> Option<ClusterPlan> {
        None
    }
    fn forward(&self, _: &Arc<Message>, _: ClusterPlan) -> Seq {
        Seq::NONE
    }
    fn retained_changed(&self, _: &str, _: Option<&Arc<Message>>) {}
}

fn net_with(hook: Arc<dyn ClusterHook>) -> Net {
    let net = Net::with_config(BrokerConfig {
        connect_timeout: CONNECT_TIMEOUT,
        ..BrokerConfig::default()
    });
    assert!(net.broker.set_cluster(hook));
    net
}

fn connack(packets: &[Packet]) -> &tern_codec::ConnAck {
    match packets.first() {
        Some(Packet::ConnAck(connack)) => connack,
        other => panic!("expected CONNACK first, got {other:?}"),
    }
}

/// Issue 16 / [MQTT-3.1.4-5]: a pending claim sends no CONNACK and takes no input; packets a
/// driver hands over anyway are held; the grant sends CONNACK, then handles them in order.
#[test]
fn a_pending_claim_waits_then_a_grant_connects_and_handles_held_packets_in_order() {
    let hook = FakeCluster::new(ClaimDecision::Pending);
    let net = net_with(hook.clone());
    let mut client = net.open(V5);
    client.send(Packet::Connect(Box::new(persistent(V5, "claimer"))));
    client.nothing();
    assert!(!client.wants_input(), "no input while the claim is decided");
    let request = hook.take();
    assert_eq!(request.client_id, "claimer");
    assert!(request.persistent);
    assert!(!request.clean_start);
    assert!(request.completion.is_wanted());
    assert_eq!(net.broker.pending_claim_count(), 1);

    client.send(subscribe_packet(1, &[("t/#", QoS::AtLeastOnce)]));
    client.send(Packet::Publish(publish_packet_with_id("t/1", 7)));
    client.nothing();
    assert!(
        net.session("claimer").is_none(),
        "no session before the grant"
    );

    request
        .completion
        .complete_ignoring(Ok(ClaimGrant::default()));
    let packets = client.received();
    let kinds: Vec<&str> = packets
        .iter()
        .map(|packet| match packet {
            Packet::ConnAck(_) => "connack",
            Packet::SubAck(_) => "suback",
            Packet::PubAck(_) => "puback",
            Packet::Publish(_) => "publish",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["connack", "suback", "puback", "publish"]);
    assert_eq!(connack(&packets).reason_code, ReasonCode::Success);
    assert!(!connack(&packets).session_present);
    assert!(client.wants_input());
    assert_eq!(net.broker.pending_claim_count(), 0);
}

fn publish_packet_with_id(topic: &str, packet_id: u16) -> tern_codec::Publish {
    let mut publish = publish_packet(topic, QoS::AtLeastOnce, b"held");
    publish.packet_id = packet_id;
    publish
}

/// Issue 16 ("Partitions"): a cluster that cannot decide refuses with CONNACK 0x88 Server
/// unavailable (3.1.1: return code 3), retryable; at once or later.
#[test]
fn a_refused_claim_is_connack_server_unavailable() {
    for version in [V5, V311] {
        let hook = FakeCluster::new(ClaimDecision::Pending);
        let net = net_with(hook.clone());
        let mut client = net.open(version);
        client.send(Packet::Connect(Box::new(persistent(version, "refused"))));
        hook.take()
            .completion
            .complete_ignoring(Err(ReasonCode::ServerUnavailable));
        assert_eq!(
            connack(&client.received()).reason_code,
            ReasonCode::ServerUnavailable
        );
        assert!(client.is_closed());
        assert_eq!(
            client.close_reason(),
            Some(CloseReason::ConnectRefused(ReasonCode::ServerUnavailable))
        );
        assert!(net.session("refused").is_none());

        let refusing = FakeCluster::new(ClaimDecision::Refused(ReasonCode::ServerUnavailable));
        let net = net_with(refusing);
        let (_, connack) = net.connect(persistent(version, "refused"));
        assert_eq!(connack.reason_code, ReasonCode::ServerUnavailable);
    }
    // A code CONNACK cannot carry becomes 0x88 (the cluster, not the client, is at fault).
    let hook = FakeCluster::new(ClaimDecision::Refused(ReasonCode::SessionTakenOver));
    let net = net_with(hook);
    let (_, connack) = net.connect(persistent(V5, "odd"));
    assert_eq!(connack.reason_code, ReasonCode::ServerUnavailable);
}

/// Issue 16: a claim not answered within the connect timeout is CONNACK 0x88 (3.1.1: 3),
/// closed as `ClaimTimeout`, and the late answer is dropped.
#[test]
fn an_unanswered_claim_times_out_with_server_unavailable() {
    for version in [V5, V311] {
        let hook = FakeCluster::new(ClaimDecision::Pending);
        let net = net_with(hook.clone());
        let mut client = net.open(version);
        client.send(Packet::Connect(Box::new(connect_packet(version, "slow"))));
        let request = hook.take();
        net.advance(CONNECT_TIMEOUT.as_millis() as u64 - 1);
        client.nothing();
        net.advance(1);
        assert_eq!(
            connack(&client.received()).reason_code,
            ReasonCode::ServerUnavailable
        );
        assert_eq!(client.close_reason(), Some(CloseReason::ClaimTimeout));
        assert!(!request.completion.is_wanted());
        assert_eq!(net.broker.pending_claim_count(), 0);
        request
            .completion
            .complete_ignoring(Ok(ClaimGrant::default()));
        assert!(client.received().is_empty());
        assert!(net.session("slow").is_none());
    }
}

/// Issue 16 ("Take-over across nodes") / [MQTT-4.4.0-1]: a grant that carries the session the
/// previous owner handed over resumes it: CONNACK session present, the messages in flight
/// re-sent with DUP under their packet identifiers, then the queued ones; the subscription
/// works here.
#[test]
fn a_grant_with_a_handed_over_session_resumes_it_mqtt_4_4_0_1() {
    // The previous owner: a persistent session with one message in flight, one queued.
    let a = Net::new();
    let mut old = a.accepted(persistent(V5, "roamer"));
    old.subscribe("h/#", QoS::AtLeastOnce);
    let mut publisher = a.connected(V5, "pub-a");
    publisher.publish("h/1", QoS::AtLeastOnce, b"one");
    let sent = old.publishes();
    assert_eq!(sent.len(), 1);
    assert!(a.broker.take_over("roamer"));
    assert_eq!(old.disconnect_reason(), ReasonCode::SessionTakenOver);
    drop(old);
    publisher.publish("h/2", QoS::AtLeastOnce, b"two");
    let transfer = a.broker.export_session("roamer", a.now()).expect("offline");

    let hook = FakeCluster::new(ClaimDecision::Pending);
    let b = net_with(hook.clone());
    let mut client = b.open(V5);
    client.send(Packet::Connect(Box::new(persistent(V5, "roamer"))));
    client.nothing();
    hook.take().completion.complete_ignoring(Ok(ClaimGrant {
        transfer: Some(transfer),
    }));
    let packets = client.received();
    assert!(connack(&packets).session_present, "[MQTT-3.2.2-3]");
    let publishes: Vec<(u16, bool, &[u8])> = packets[1..]
        .iter()
        .map(|packet| match packet {
            Packet::Publish(publish) => (publish.packet_id, publish.dup, &publish.payload[..]),
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect();
    assert_eq!(publishes.len(), 2);
    assert_eq!(publishes[0], (sent[0].packet_id, true, &b"one"[..]));
    assert_eq!((publishes[1].1, publishes[1].2), (false, &b"two"[..]));
    let mut local = b.open(V5);
    local.send(Packet::Connect(Box::new(connect_packet(V5, "pub-b"))));
    hook.take()
        .completion
        .complete_ignoring(Ok(ClaimGrant::default()));
    assert_eq!(connack(&local.received()).reason_code, ReasonCode::Success);
    local.publish("h/3", QoS::AtMostOnce, b"three");
    assert_eq!(&client.publish_received().payload[..], b"three");
}

/// Issue 16 / [MQTT-3.1.2-4]: a Clean Start CONNECT does not take up the session handed over:
/// no session present, nothing re-sent.
#[test]
fn a_clean_start_grant_discards_the_handed_over_session() {
    let a = Net::new();
    let mut old = a.accepted(persistent(V5, "fresh"));
    old.subscribe("h/#", QoS::AtLeastOnce);
    old.disconnect();
    drop(old);
    let mut publisher = a.connected(V5, "pub-a");
    publisher.publish("h/1", QoS::AtLeastOnce, b"one");
    let transfer = a.broker.export_session("fresh", a.now()).expect("offline");

    let hook = FakeCluster::new(ClaimDecision::Pending);
    let b = net_with(hook.clone());
    let mut client = b.open(V5);
    client.send(Packet::Connect(Box::new(connect_packet(V5, "fresh"))));
    let request = hook.take();
    assert!(request.clean_start);
    assert!(!request.persistent);
    request.completion.complete_ignoring(Ok(ClaimGrant {
        transfer: Some(transfer),
    }));
    let packets = client.received();
    assert!(!connack(&packets).session_present);
    assert_eq!(packets.len(), 1, "nothing re-sent: {packets:?}");
    assert_eq!(b.broker.subscription_count(), 0);
}

/// Issue 16: only the first answer counts; a second one, and one for another connection's
/// claim, change nothing.
#[test]
fn a_second_answer_or_another_claims_answer_is_ignored() {
    let hook = FakeCluster::new(ClaimDecision::Pending);
    let net = net_with(hook.clone());
    let mut first = net.open(V5);
    first.send(Packet::Connect(Box::new(connect_packet(V5, "one"))));
    let first_request = hook.take();
    let mut second = net.open(V5);
    second.send(Packet::Connect(Box::new(connect_packet(V5, "two"))));
    let second_request = hook.take();
    assert_ne!(
        first_request.completion.id(),
        second_request.completion.id()
    );

    let again = first_request.completion.clone();
    first_request
        .completion
        .complete_ignoring(Ok(ClaimGrant::default()));
    again
        .clone()
        .complete_ignoring(Err(ReasonCode::ServerUnavailable));
    assert_eq!(
        connack(&first.received()).reason_code,
        ReasonCode::Success,
        "the first answer"
    );
    second.nothing();
    assert!(second_request.completion.is_wanted(), "still waiting");
    // Once taken, a late answer for the first finds nothing.
    let late = again.clone();
    late.complete_ignoring(Err(ReasonCode::ServerUnavailable));
    assert!(first.received().is_empty());
    assert!(!first.is_closed());
    second_request
        .completion
        .complete_ignoring(Err(ReasonCode::ServerUnavailable));
    assert_eq!(
        connack(&second.received()).reason_code,
        ReasonCode::ServerUnavailable
    );
}

/// Issue 16: a connection that closes while its claim is pending forgets it; the late
/// answer is dropped and creates no session.
#[test]
fn a_connection_closed_while_claiming_forgets_its_claim() {
    let hook = FakeCluster::new(ClaimDecision::Pending);
    let net = net_with(hook.clone());
    let mut client = net.open(V5);
    client.send(Packet::Connect(Box::new(persistent(V5, "gone"))));
    let request = hook.take();
    drop(client);
    assert_eq!(net.broker.pending_claim_count(), 0);
    assert!(!request.completion.is_wanted());
    request
        .completion
        .complete_ignoring(Ok(ClaimGrant::default()));
    assert!(net.session("gone").is_none());
    assert_eq!(net.broker.pending_claim_count(), 0);
}

/// Issue 16: a granted claim connects at once; a hook that leaves `claim` alone grants every
/// claim (other hooks keep working); a refused will is refused before any claim is made.
#[test]
fn a_granted_claim_connects_at_once_and_the_default_grants() {
    let hook = FakeCluster::new(ClaimDecision::Granted);
    let net = net_with(hook.clone());
    let (_client, connack) = net.connect(persistent(V311, "local"));
    assert_eq!(connack.reason_code, ReasonCode::Success);
    assert_eq!(hook.take().client_id, "local");
    assert_eq!(net.broker.pending_claim_count(), 0);

    let net = net_with(Arc::new(RoutesOnly));
    let (_client, connack) = net.connect(persistent(V5, "plain"));
    assert_eq!(connack.reason_code, ReasonCode::Success);

    let net = Net::with_config(BrokerConfig {
        max_qos: QoS::AtMostOnce,
        ..BrokerConfig::default()
    });
    let hook = FakeCluster::new(ClaimDecision::Pending);
    assert!(net.broker.set_cluster(hook.clone()));
    let mut connect = connect_packet(V5, "bad-will");
    connect.will = Some(tern_codec::Will {
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: text("w"),
        properties: Default::default(),
        payload: bytes::Bytes::from_static(b"w"),
    });
    let (_, connack) = net.connect(connect);
    assert_eq!(connack.reason_code, ReasonCode::QosNotSupported);
    assert!(hook.requests.lock().unwrap().is_empty(), "no claim asked");
}

/// A session handed over by the previous owner and exported there (a client with one message
/// in flight and one queued).
fn handed_over(client_id: &str) -> tern_broker::SessionTransfer {
    let a = Net::new();
    let mut old = a.accepted(persistent(V5, client_id));
    old.subscribe("h/#", QoS::AtLeastOnce);
    let mut publisher = a.connected(V5, "pub-a");
    publisher.publish("h/1", QoS::AtLeastOnce, b"one");
    assert_eq!(old.publishes().len(), 1);
    drop(old);
    publisher.publish("h/2", QoS::AtLeastOnce, b"two");
    a.broker
        .export_session(client_id, a.now())
        .expect("offline")
}

/// Issue 16 (no message lost in a take-over): a session handed over for a connection that
/// closed before taking it is kept here, offline (this node owns the client id now), and the
/// client's next connection resumes it; one that comes for a connection already gone is given
/// back to the caller to keep.
#[test]
fn a_handed_over_session_nobody_takes_is_kept_not_lost() {
    let hook = FakeCluster::new(ClaimDecision::Pending);
    let net = net_with(hook.clone());
    let mut client = net.open(V5);
    client.send(Packet::Connect(Box::new(persistent(V5, "flaky"))));
    let request = hook.take();
    let back = request.completion.complete(Ok(ClaimGrant {
        transfer: Some(handed_over("flaky")),
    }));
    assert!(back.is_none(), "kept for the connection");
    drop(client); // closed before it took the answer
    let session = net.session("flaky").expect("kept here");
    assert!(!session.is_online());
    assert_eq!((session.inflight_len(), session.queued_len()), (1, 1));

    let mut again = net.open(V5);
    again.send(Packet::Connect(Box::new(persistent(V5, "flaky"))));
    hook.take()
        .completion
        .complete_ignoring(Ok(ClaimGrant::default()));
    let packets = again.received();
    assert!(connack(&packets).session_present);
    assert_eq!(
        packets.len(),
        3,
        "the message in flight, then the queued one"
    );

    let mut gone = net.open(V5);
    gone.send(Packet::Connect(Box::new(persistent(V5, "gone-early"))));
    let request = hook.take();
    drop(gone);
    let back = request.completion.complete(Ok(ClaimGrant {
        transfer: Some(handed_over("gone-early")),
    }));
    assert_eq!(
        back.map(|transfer| transfer.client_id.to_string()),
        Some("gone-early".to_owned()),
        "given back to the caller"
    );
}
