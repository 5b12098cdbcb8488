//! The core's seams for a cluster (issue 16): a fake `ClusterHook` records what the core tells
//! it (routes won and lost, a plan per local publish, forwards, retained changes), and the
//! entry points a cluster calls (`publish_from_cluster`, `apply_cluster_retained`,
//! `take_over`) are driven on the fake clock.

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use tern_broker::{Broker, ClusterHook, ClusterPlan, Message, RemoteCopy, Seq};
use tern_codec::{Connect, Packet, Properties, QoS, ReasonCode, Unsubscribe, Will};

/// One call the core made on the hook.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Added(String, Option<String>),
    Removed(String, Option<String>),
    Plan(String),
    Forward(String, ClusterPlan),
    Retained(String, Option<Bytes>),
    Released(String),
}

/// Records every call; plans per topic prefix what the test set.
#[derive(Default)]
struct FakeCluster {
    calls: Mutex<Vec<Call>>,
    /// `(topic prefix, plan)`: the first whose prefix the topic has is returned.
    plans: Mutex<Vec<(String, ClusterPlan)>>,
    /// What `forward` returns.
    forward_seq: Mutex<Seq>,
    /// Topic prefixes whose QoS 1/2 messages `refuses` (a full outbox on their way).
    refusing: Mutex<Vec<String>>,
}

impl FakeCluster {
    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// Only the route calls, taken.
    fn routes(&self) -> Vec<Call> {
        self.take()
            .into_iter()
            .filter(|call| matches!(call, Call::Added(..) | Call::Removed(..)))
            .collect()
    }

    fn plan_for(&self, prefix: &str, plan: ClusterPlan) {
        self.plans.lock().unwrap().push((prefix.to_owned(), plan));
    }
}

impl ClusterHook for FakeCluster {
    fn route_added(&self, filter: &str, group: Option<&str>) {
        let call = Call::Added(filter.to_owned(), group.map(str::to_owned));
        self.calls.lock().unwrap().push(call);
    }

    fn route_removed(&self, filter: &str, group: Option<&str>) {
        let call = Call::Removed(filter.to_owned(), group.map(str::to_owned));
        self.calls.lock().unwrap().push(call);
    }

    fn plan(&self, message: &Message) -> Option<ClusterPlan> {
        let topic = message.topic.to_string();
        self.calls.lock().unwrap().push(Call::Plan(topic.clone()));
        let plans = self.plans.lock().unwrap();
        plans
            .iter()
            .find(|(prefix, _)| topic.starts_with(prefix.as_str()))
            .map(|(_, plan)| plan.clone())
    }

    fn forward(&self, message: &Arc<Message>, plan: ClusterPlan) -> Seq {
        let call = Call::Forward(message.topic.to_string(), plan);
        self.calls.lock().unwrap().push(call);
        *self.forward_seq.lock().unwrap()
    }

    fn refuses(&self, topic: &str) -> bool {
        let refusing = self.refusing.lock().unwrap();
        refusing
            .iter()
            .any(|prefix| topic.starts_with(prefix.as_str()))
    }

    fn retained_changed(&self, topic: &str, message: Option<&Arc<Message>>) {
        let call = Call::Retained(topic.to_owned(), message.map(|m| m.payload.clone()));
        self.calls.lock().unwrap().push(call);
    }

    fn claimed_session_released(&self, client_id: &str) {
        let call = Call::Released(client_id.to_owned());
        self.calls.lock().unwrap().push(call);
    }
}

fn clustered(net: &Net) -> Arc<FakeCluster> {
    let cluster = Arc::new(FakeCluster::default());
    assert!(net.broker.set_cluster(cluster.clone()));
    cluster
}

fn added(filter: &str, group: Option<&str>) -> Call {
    Call::Added(filter.to_owned(), group.map(str::to_owned))
}

fn removed(filter: &str, group: Option<&str>) -> Call {
    Call::Removed(filter.to_owned(), group.map(str::to_owned))
}

fn group(name: &str, filter: &str) -> (String, String) {
    (name.to_owned(), filter.to_owned())
}

fn unsubscribe(client: &mut Client, filter: &str) {
    client.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 77,
        properties: Properties::default(),
        filters: vec![text(filter)],
    }));
    assert!(matches!(client.next(), Some(Packet::UnsubAck(_))));
}

/// A message as another node forwards it.
fn remote_message(topic: &str, qos: QoS, payload: &'static [u8]) -> Message {
    Message {
        cluster_id: None,
        topic: text(topic),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
        properties: None,
        expires_at: None,
        publisher: Some(text("elsewhere")),
        id: 0,
    }
}

/// Issue 16: routes are proposed only when a node gets its first local subscriber for a
/// filter or loses its last: a second subscriber, or the first's UNSUBSCRIBE while another
/// remains, reports nothing.
#[test]
fn routes_follow_the_first_and_last_subscription_issue_16() {
    let net = Net::new();
    let cluster = clustered(&net);
    let mut a = net.connected(V5, "route-a");
    let mut b = net.connected(V311, "route-b");
    a.subscribe("r/+", QoS::AtLeastOnce);
    assert_eq!(cluster.routes(), vec![added("r/+", None)]);
    b.subscribe("r/+", QoS::AtMostOnce);
    a.subscribe("r/+", QoS::ExactlyOnce); // a replacement [MQTT-3.8.4-3]: no new route
    assert_eq!(cluster.routes(), vec![]);
    unsubscribe(&mut a, "r/+");
    assert_eq!(cluster.routes(), vec![]);
    unsubscribe(&mut b, "r/+");
    assert_eq!(cluster.routes(), vec![removed("r/+", None)]);
}

/// Issue 16: a shared group is a route of its own (`group` Some), beside the plain filter.
#[test]
fn shared_groups_are_routes_of_their_own_issue_16() {
    let net = Net::new();
    let cluster = clustered(&net);
    let mut a = net.connected(V5, "share-a");
    let mut b = net.connected(V5, "share-b");
    a.subscribe("$share/g/s/#", QoS::AtLeastOnce);
    b.subscribe("$share/g/s/#", QoS::AtLeastOnce);
    b.subscribe("s/#", QoS::AtLeastOnce);
    assert_eq!(
        cluster.routes(),
        vec![added("s/#", Some("g")), added("s/#", None)]
    );
    assert_eq!(
        net.broker.local_routes(),
        (vec!["s/#".to_owned()], vec![group("g", "s/#")])
    );
    unsubscribe(&mut a, "$share/g/s/#");
    assert_eq!(cluster.routes(), vec![]);
    drop(b); // a clean session ends with its connection
    let mut routes = cluster.routes();
    routes.sort_by_key(|call| format!("{call:?}"));
    assert_eq!(
        routes,
        vec![removed("s/#", None), removed("s/#", Some("g"))]
    );
}

/// Issue 16: a session's end removes its routes: at its expiry [MQTT-3.1.2-23] and at a clean
/// start that discards it [MQTT-3.1.2-4].
#[test]
fn session_expiry_and_clean_start_remove_routes_issue_16() {
    let net = Net::new();
    let cluster = clustered(&net);
    let mut connect = persistent(V5, "expiring");
    connect.properties.session_expiry_interval = Some(10);
    let mut client = net.accepted(connect);
    client.subscribe("e/1", QoS::AtLeastOnce);
    drop(client);
    assert_eq!(cluster.routes(), vec![added("e/1", None)]);
    net.advance(9_999);
    assert_eq!(cluster.routes(), vec![], "offline, not expired yet");
    net.advance(1);
    assert_eq!(cluster.routes(), vec![removed("e/1", None)]);

    let mut client = net.accepted(persistent(V5, "restarting"));
    client.subscribe("e/2", QoS::AtLeastOnce);
    drop(client);
    assert_eq!(cluster.routes(), vec![added("e/2", None)]);
    let _fresh = net.accepted(connect_packet(V5, "restarting"));
    assert_eq!(cluster.routes(), vec![removed("e/2", None)]);
}

/// Issue 16: a cluster plugged in after subscriptions exist is told of them all, once;
/// the hook is set only once.
#[test]
fn a_late_hook_is_told_the_existing_routes_issue_16() {
    let net = Net::new();
    let mut a = net.connected(V5, "early");
    a.subscribe("x/y", QoS::AtMostOnce);
    a.subscribe("#", QoS::AtMostOnce);
    a.subscribe("$share/w/x/+", QoS::AtMostOnce);
    let cluster = clustered(&net);
    let mut routes = cluster.routes();
    routes.sort_by_key(|call| format!("{call:?}"));
    assert_eq!(
        routes,
        vec![
            added("#", None),
            added("x/+", Some("w")),
            added("x/y", None)
        ]
    );
    assert!(!net.broker.set_cluster(Arc::new(FakeCluster::default())));
}

/// Issue 16: client publishes and wills are planned and forwarded; a message forwarded by
/// another node and the broker's own `$SYS` messages are not (no loops; each node has its
/// own `$SYS`). Remote copies count as reached (no 0x10 No matching subscribers).
#[test]
fn plan_and_forward_for_local_messages_only_issue_16() {
    let net = Net::new();
    let cluster = clustered(&net);
    let plan = ClusterPlan {
        id: None,
        routes_at: 0,
        skip_groups: vec![],
        remote: vec![RemoteCopy {
            node: 2,
            regular: true,
            groups: vec![],
        }],
    };
    cluster.plan_for("far/", plan.clone());
    let mut publisher = net.connected(V5, "planner");
    let id = publisher.publish("far/away", QoS::AtLeastOnce, b"1");
    assert_eq!(
        publisher.next(),
        Some(ack(Packet::PubAck, id)),
        "success: a remote node has subscribers"
    );
    assert_eq!(
        cluster.take(),
        vec![
            Call::Plan("far/away".into()),
            Call::Forward("far/away".into(), plan.clone())
        ]
    );

    let mut connect = connect_packet(V5, "dying");
    connect.will = Some(Will {
        topic: text("far/will"),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    drop(net.accepted(connect));
    assert_eq!(
        cluster.take(),
        vec![
            Call::Plan("far/will".into()),
            Call::Forward("far/will".into(), plan)
        ]
    );

    let mut local = net.connected(V5, "listener");
    local.subscribe("far/#", QoS::AtMostOnce);
    cluster.take();
    let (reached, _) = net.broker.publish_from_cluster(
        remote_message("far/in", QoS::AtMostOnce, b"2"),
        true,
        &[],
        net.now(),
    );
    assert_eq!(reached, 1);
    assert_eq!(&local.publish_received().payload[..], b"2");
    net.broker.publish_system(
        remote_message("$SYS/broker/x", QoS::AtMostOnce, b"3"),
        net.now(),
    );
    assert_eq!(cluster.take(), vec![], "neither is planned");
}

/// Issue 16: the plan's `skip_groups` are shared groups another node serves: the local member
/// gets nothing, other groups and plain subscribers get the message as usual.
#[test]
fn skipped_groups_get_no_local_delivery_issue_16() {
    let net = Net::new();
    let cluster = clustered(&net);
    cluster.plan_for(
        "k/",
        ClusterPlan {
            id: None,
            routes_at: 0,
            skip_groups: vec![group("g", "k/t")],
            remote: vec![RemoteCopy {
                node: 3,
                regular: false,
                groups: vec![group("g", "k/t")],
            }],
        },
    );
    let mut member_g = net.connected(V5, "member-g");
    let mut member_h = net.connected(V5, "member-h");
    let mut plain = net.connected(V5, "plain");
    member_g.subscribe("$share/g/k/t", QoS::AtMostOnce);
    member_h.subscribe("$share/h/k/t", QoS::AtMostOnce);
    plain.subscribe("k/t", QoS::AtMostOnce);
    let mut publisher = net.connected(V5, "pub");
    publisher.publish("k/t", QoS::AtMostOnce, b"m");
    member_g.nothing();
    assert_eq!(&member_h.publish_received().payload[..], b"m");
    assert_eq!(&plain.publish_received().payload[..], b"m");
}

/// Issue 16: a message another node forwarded for some shared groups only (`regular` false)
/// reaches one member of each listed group here and nothing else; with `regular`, the plain
/// subscribers, and still no unlisted group (their member was picked elsewhere).
#[test]
fn cluster_messages_reach_only_what_they_were_sent_for_issue_16() {
    let net = Net::new();
    let _cluster = clustered(&net);
    let mut g1 = net.connected(V5, "g1");
    let mut g2 = net.connected(V5, "g2");
    let mut h = net.connected(V5, "h");
    let mut plain = net.connected(V5, "plain");
    g1.subscribe("$share/g/c/+", QoS::AtMostOnce);
    g2.subscribe("$share/g/c/+", QoS::AtMostOnce);
    h.subscribe("$share/h/c/+", QoS::AtMostOnce);
    plain.subscribe("c/+", QoS::AtMostOnce);
    let now = net.now();
    let (reached, _) = net.broker.publish_from_cluster(
        remote_message("c/1", QoS::AtMostOnce, b"groups"),
        false,
        &[group("g", "c/+")],
        now,
    );
    assert_eq!(reached, 1);
    let got: usize = [&mut g1, &mut g2]
        .into_iter()
        .map(|member| member.publishes().len())
        .sum();
    assert_eq!(got, 1, "one member of the listed group");
    h.nothing();
    plain.nothing();

    let (reached, _) = net.broker.publish_from_cluster(
        remote_message("c/2", QoS::AtMostOnce, b"regular"),
        true,
        &[],
        now,
    );
    assert_eq!(reached, 1);
    assert_eq!(&plain.publish_received().payload[..], b"regular");
    g1.nothing();
    g2.nothing();
    h.nothing();
}

/// Issue 16, shared subscriptions across nodes: another node picked this node for a group
/// whose only member here is offline (its session outlives the connection). The message is
/// queued for that member, as on a single node, and reaches it when it returns
/// [MQTT-3.1.2-5]; it is not dropped.
#[test]
fn a_group_message_for_an_offline_member_here_waits_for_it_issue_16() {
    let net = Net::new();
    let _cluster = clustered(&net);
    let (mut member, _) = net.connect(persistent(V5, "member"));
    member.subscribe("$share/g/w/+", QoS::AtLeastOnce);
    member.disconnect();
    let (reached, _) = net.broker.publish_from_cluster(
        remote_message("w/1", QoS::AtLeastOnce, b"waits"),
        false,
        &[group("g", "w/+")],
        net.now(),
    );
    assert_eq!(reached, 1, "queued for the offline member");
    let (mut member, connack) = net.connect(persistent(V5, "member"));
    assert!(connack.session_present);
    assert_eq!(&member.publish_received().payload[..], b"waits");
}

/// Issue 16: a retained message replicated from another node is kept here (a later
/// subscriber gets it [MQTT-3.3.1-6]) and is not announced back; a local one is announced,
/// and a retained message forwarded as a publish is not kept.
#[test]
fn cluster_retained_messages_are_kept_and_not_reannounced_issue_16() {
    let net = Net::new();
    let cluster = clustered(&net);
    let mut message = remote_message("ret/a", QoS::AtLeastOnce, b"kept");
    message.retain = true;
    net.broker
        .apply_cluster_retained("ret/a", Some(message.clone()));
    net.broker
        .publish_from_cluster(message.clone(), true, &[], net.now());
    assert_eq!(net.broker.retained_count(), 1);
    let mut late = net.connected(V5, "late");
    late.subscribe("ret/#", QoS::AtLeastOnce);
    let publish = late.publish_received();
    assert_eq!((&publish.payload[..], publish.retain), (&b"kept"[..], true));
    assert!(
        !cluster
            .take()
            .iter()
            .any(|call| matches!(call, Call::Retained(..)))
    );

    net.broker.apply_cluster_retained("ret/a", None);
    assert_eq!(net.broker.retained_count(), 0);
    let mut publisher = net.connected(V5, "retainer");
    publisher.publish_with(retained("ret/b", QoS::AtMostOnce, b"mine"));
    publisher.publish_with(retained("ret/b", QoS::AtMostOnce, b""));
    let retained_calls: Vec<Call> = cluster
        .take()
        .into_iter()
        .filter(|call| matches!(call, Call::Retained(..)))
        .collect();
    assert_eq!(
        retained_calls,
        vec![
            Call::Retained("ret/b".into(), Some(Bytes::from_static(b"mine"))),
            Call::Retained("ret/b".into(), None)
        ]
    );
}

fn with_delayed_will(id: &str, delay: u32) -> Connect {
    let mut connect = persistent(V5, id);
    connect.will = Some(Will {
        topic: text(&format!("wills/{id}")),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: Some(delay),
            ..Properties::default()
        },
    });
    connect
}

/// Issue 16 / [MQTT-3.1.4-3]: a claim of the client id on another node closes the connection
/// here with DISCONNECT 0x8E Session taken over; the will is published per its delay, and the
/// session stays here, offline, with its subscriptions.
#[test]
fn take_over_closes_with_0x8e_and_publishes_the_will_per_its_delay_mqtt_3_1_4_3() {
    let net = Net::new();
    let cluster = clustered(&net);
    let mut watcher = net.connected(V5, "watcher");
    watcher.subscribe("wills/#", QoS::AtMostOnce);
    let mut client = net.accepted(with_delayed_will("claimed", 5));
    client.subscribe("mine", QoS::AtLeastOnce);
    cluster.take();
    assert!(net.broker.take_over("claimed"));
    assert_eq!(cluster.take(), vec![], "not before the connection lets go");
    assert_eq!(client.disconnect_reason(), ReasonCode::SessionTakenOver);
    assert_eq!(cluster.take(), vec![Call::Released("claimed".into())]);
    let session = net.session("claimed").expect("kept for a hand-over");
    assert!(!session.is_online());
    assert!(!net.broker.take_over("claimed"), "no connection left here");
    net.advance(4_999);
    watcher.nothing();
    net.advance(1);
    assert_eq!(&watcher.publish_received().payload[..], b"gone");
    assert!(net.session("claimed").is_some(), "the session stays");
    assert_eq!(net.broker.subscription_count(), 2);
}

/// Issue 16: a 3.1.1 client claimed elsewhere is closed with nothing sent (3.x has no
/// DISCONNECT from the server) and its will (no delay in 3.x) is published at once.
#[test]
fn take_over_of_a_3_1_1_client_closes_it_and_publishes_its_will_issue_16() {
    let net = Net::new();
    let _cluster = clustered(&net);
    let mut watcher = net.connected(V311, "watcher");
    watcher.subscribe("wills/#", QoS::AtMostOnce);
    let mut connect = with_delayed_will("old-client", 0);
    connect.protocol = V311;
    connect.properties = Properties::default();
    if let Some(will) = &mut connect.will {
        will.properties = Properties::default();
    }
    let mut client = net.accepted(connect);
    assert!(net.broker.take_over("old-client"));
    client.closed_silently();
    assert_eq!(&watcher.publish_received().payload[..], b"gone");
}

/// Issue 16: the acknowledgement of a QoS 1 message forwarded to another node waits for
/// what `forward` returned (the copy's durable write), as for a local stored delivery.
#[test]
fn the_acknowledgement_waits_for_the_forwarded_copy_issue_16() {
    let recorder = Arc::new(Recorder::default());
    let net = Net::with_persistence(
        Default::default(),
        Default::default(),
        Some(recorder.clone()),
    );
    let cluster = clustered(&net);
    cluster.plan_for(
        "d/",
        ClusterPlan {
            id: None,
            routes_at: 0,
            skip_groups: vec![],
            remote: vec![RemoteCopy {
                node: 2,
                regular: true,
                groups: vec![],
            }],
        },
    );
    *cluster.forward_seq.lock().unwrap() = Seq(1_000);
    recorder.set_durable(Seq(999));
    let mut publisher = net.connected(V5, "durable-pub");
    let id = publisher.publish("d/x", QoS::AtLeastOnce, b"x");
    publisher.nothing();
    recorder.set_durable(Seq(1_000));
    assert_eq!(publisher.next(), Some(ack(Packet::PubAck, id)));
}

/// Issue 16: a client's QoS 1/2 message with a copy for a node whose outbox is full is
/// refused before anything is routed, like one a full store cannot take: MQTT 5 PUBACK /
/// PUBREC 0x97 Quota exceeded with its reason string, no identifier kept [MQTT-4.3.3-4];
/// QoS 0 and other topics flow; a 3.1.1 publisher is not acknowledged and is closed after the
/// bounded wait, so it sends the message again [MQTT-4.4.0-1].
#[test]
fn a_message_whose_copy_an_outbox_cannot_take_is_refused_issue_16() {
    let net = Net::new();
    let cluster = clustered(&net);
    cluster.plan_for(
        "full/",
        ClusterPlan {
            id: None,
            routes_at: 0,
            skip_groups: vec![],
            remote: vec![RemoteCopy {
                node: 2,
                regular: true,
                groups: vec![],
            }],
        },
    );
    cluster.refusing.lock().unwrap().push("full/".to_owned());
    let mut sub = net.connected(V5, "local-sub");
    sub.subscribe("#", QoS::AtLeastOnce);
    cluster.take();
    let mut publisher = net.connected(V5, "pub-5");

    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let id = publisher.publish("full/x", qos, b"no room");
        let ack = match publisher.received().as_slice() {
            [Packet::PubAck(ack) | Packet::PubRec(ack)] => ack.clone(),
            other => panic!("expected one acknowledgement, got {other:?}"),
        };
        assert_eq!(
            (ack.packet_id, ack.reason_code),
            (id, ReasonCode::QuotaExceeded)
        );
        let reason = ack.properties.reason_string.expect("a reason string");
        assert!(reason.contains("cluster node"), "{reason}");
    }
    // Nothing routed, nothing planned or forwarded.
    sub.nothing();
    assert_eq!(cluster.take(), vec![]);
    assert_eq!(
        net.broker
            .metrics()
            .snapshot()
            .messages_refused_cluster_full,
        2
    );

    // QoS 0 is not refused (its copy may be dropped by the cluster); other topics flow.
    publisher.publish("full/x", QoS::AtMostOnce, b"q0");
    assert_eq!(&sub.publish_received().payload[..], b"q0");
    let id = publisher.publish("fine/x", QoS::AtLeastOnce, b"ok");
    assert_eq!(publisher.next(), Some(ack(Packet::PubAck, id)));
    assert_eq!(&sub.publish_received().payload[..], b"ok");

    let mut old = net.connected(V311, "pub-3");
    old.publish("full/x", QoS::AtLeastOnce, b"3.x");
    old.nothing();
    let wait = u64::try_from(tern_broker::STORAGE_REFUSAL_CLOSE.as_millis()).unwrap();
    net.advance(wait - 1);
    assert!(!old.is_closed(), "open until the wait is over");
    net.advance(1);
    old.closed_silently();
    assert_eq!(
        old.close_reason(),
        Some(tern_broker::CloseReason::StorageUnavailable)
    );
    sub.nothing();
}

/// The hook leaves a single node as it was: a broker without one routes as before.
#[test]
fn without_a_hook_nothing_changes_issue_16() {
    let net = Net::new();
    let mut sub = net.connected(V5, "solo-sub");
    sub.subscribe("solo/#", QoS::AtMostOnce);
    let mut publisher = net.connected(V5, "solo-pub");
    publisher.publish("solo/1", QoS::AtMostOnce, b"s");
    assert_eq!(&sub.publish_received().payload[..], b"s");
    let _: &Broker = &net.broker;
}

/// Issue 16: a session handed over takes its routes along: the old node reports them gone,
/// the new one reports them won.
#[test]
fn a_hand_over_moves_the_routes_issue_16() {
    let a = Net::new();
    let b = Net::new();
    let (cluster_a, cluster_b) = (clustered(&a), clustered(&b));
    let mut client = a.accepted(persistent(V5, "mover"));
    client.subscribe("mv/#", QoS::AtLeastOnce);
    client.subscribe("$share/g/mv/+", QoS::AtLeastOnce);
    drop(client);
    assert_eq!(cluster_a.routes().len(), 2);
    let transfer = a.broker.export_session("mover", a.now()).unwrap();
    let mut gone = cluster_a.routes();
    gone.sort_by_key(|call| format!("{call:?}"));
    assert_eq!(
        gone,
        vec![removed("mv/#", None), removed("mv/+", Some("g"))]
    );
    b.broker.import_session(transfer, b.now()).unwrap();
    let mut won = cluster_b.routes();
    won.sort_by_key(|call| format!("{call:?}"));
    assert_eq!(won, vec![added("mv/#", None), added("mv/+", Some("g"))]);
}

/// Issue 16 / [MQTT-3.1.3-9]: a client claimed elsewhere that starts clean there ends its
/// session here (`delete_session`), and a will still waiting for its delay goes out then.
#[test]
fn a_clean_start_elsewhere_ends_the_session_and_sends_the_will_mqtt_3_1_3_9() {
    let net = Net::new();
    let _cluster = clustered(&net);
    let mut watcher = net.connected(V5, "watcher");
    watcher.subscribe("wills/#", QoS::AtMostOnce);
    let mut client = net.accepted(with_delayed_will("restarted", 60));
    assert!(net.broker.take_over("restarted"));
    assert_eq!(client.disconnect_reason(), ReasonCode::SessionTakenOver);
    watcher.nothing();
    assert!(net.broker.delete_session("restarted", net.now()));
    assert_eq!(&watcher.publish_received().payload[..], b"gone");
    assert!(net.session("restarted").is_none());
}

/// A cluster whose new routes wait for a decision (see `ClusterHook::route_pending`): one
/// ticket per route, kept for the test to decide.
#[derive(Default)]
struct DecidingCluster {
    tickets: Mutex<Vec<(String, Arc<tern_broker::RouteTicket>)>>,
}

impl DecidingCluster {
    fn ticket(&self, filter: &str) -> Arc<tern_broker::RouteTicket> {
        let tickets = self.tickets.lock().unwrap();
        let (_, ticket) = tickets.iter().find(|(f, _)| f == filter).expect("a ticket");
        ticket.clone()
    }
}

impl ClusterHook for DecidingCluster {
    fn route_added(&self, filter: &str, _: Option<&str>) {
        let ticket = tern_broker::RouteTicket::new();
        self.tickets
            .lock()
            .unwrap()
            .push((filter.to_owned(), ticket));
    }
    fn route_removed(&self, _: &str, _: Option<&str>) {}
    fn plan(&self, _: &Message) -> Option<ClusterPlan> {
        None
    }
    fn forward(&self, _: &Arc<Message>, _: ClusterPlan) -> Seq {
        Seq::NONE
    }
    fn retained_changed(&self, _: &str, _: Option<&Arc<Message>>) {}
    fn route_pending(
        &self,
        filter: &str,
        _: Option<&str>,
    ) -> Option<Arc<tern_broker::RouteTicket>> {
        let tickets = self.tickets.lock().unwrap();
        tickets
            .iter()
            .find(|(f, ticket)| f == filter && ticket.decided().is_none())
            .map(|(_, ticket)| ticket.clone())
    }
}

/// Issue 16: the SUBACK of a filter that needs a new cluster route waits for the cluster's
/// decision, and nothing is delivered before it (the retained message follows the SUBACK);
/// a route the cluster could not commit (no quorum) is SUBACK 0x80 and the subscription is
/// gone, so the client retries later.
#[test]
fn a_suback_waits_for_its_route_and_a_refused_route_is_a_failure_issue_16() {
    let net = Net::new();
    let cluster = Arc::new(DecidingCluster::default());
    assert!(net.broker.set_cluster(cluster.clone()));
    let mut publisher = net.connected(V5, "route-pub");
    publisher.publish_with(tern_codec::Publish {
        retain: true,
        ..publish_packet("kept/a", QoS::AtLeastOnce, b"retained")
    });
    let _ = publisher.received();

    let mut client = net.connected(V5, "route-sub");
    client.send(subscribe_packet(9, &[("kept/+", QoS::AtLeastOnce)]));
    assert_eq!(
        client.received(),
        vec![],
        "no SUBACK, no retained message yet"
    );
    cluster.ticket("kept/+").complete(true);
    let packets = client.received();
    assert!(
        matches!(&packets[..], [Packet::SubAck(suback), Packet::Publish(p)]
            if suback.reason_codes == vec![ReasonCode::GrantedQos1] && p.payload == b"retained"[..]),
        "the SUBACK, then the retained message: {packets:?}"
    );

    client.send(subscribe_packet(10, &[("lost/+", QoS::AtLeastOnce)]));
    assert_eq!(client.received(), vec![]);
    cluster.ticket("lost/+").complete(false);
    match client.next() {
        Some(Packet::SubAck(suback)) => {
            assert_eq!(suback.reason_codes, vec![ReasonCode::UnspecifiedError])
        }
        other => panic!("expected a SUBACK, got {other:?}"),
    }
    let kept = net.broker.subscriptions_of("route-sub").unwrap();
    assert!(
        kept.iter().all(|(filter, _)| &**filter != "lost/+"),
        "the refused subscription is removed: {kept:?}"
    );
    publisher.publish("lost/x", QoS::AtMostOnce, b"not for you");
    client.nothing();
}
