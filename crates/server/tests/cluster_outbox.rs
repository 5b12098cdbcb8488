//! Issue 16, a peer's outbox is bounded: when the copies for a node that is down fill it, a
//! client's QoS 1 message with a copy for that node is refused (MQTT 5 PUBACK 0x97 Quota
//! exceeded, nothing routed) instead of acknowledged and dropped; every acknowledged message
//! reaches the node's subscriber once it is back, and publishing is accepted again once the
//! outbox drained.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::{
    Dir, Node, all_registered, free_addr, route_known, start_node_with, temp_dir, until,
};
use common::v5::{Client5, QoS as Q5};
use common::{Client, options};
use rumqttc::v5::Event as E5;
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
use rumqttc::{Event, Packet, QoS};
use tern_server::ServerConfig;

/// The outbox bound of the test's nodes: congested from 18 messages on.
const OUTBOX: usize = 20;

fn small_outbox(config: &mut ServerConfig) {
    if let Some(cluster) = config.cluster.as_mut() {
        cluster.outbox_max_messages = OUTBOX;
    }
}

/// Three registered nodes with [`small_outbox`], and their cluster addresses.
async fn small_outbox_nodes(dir: &Dir) -> (Vec<Node>, Vec<SocketAddr>) {
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start_node_with(id, &addrs, dir, small_outbox).await);
    }
    all_registered(&nodes).await;
    (nodes, addrs)
}

async fn publish(publisher: &mut Client5, topic: &str, payload: String) -> PubAckReason {
    publisher
        .client
        .publish(topic, Q5::AtLeastOnce, false, payload)
        .await
        .expect("publish request");
    publisher
        .next_matching(|event| match event {
            E5::Incoming(P5::PubAck(ack)) => Some(ack.reason),
            _ => None,
        })
        .await
        .expect("PUBACK")
}

/// Publishes `gone/{i}` at QoS 1 until the broker refuses one (the outbox for the node with
/// the `gone/#` route is congested); returns how many were accepted.
async fn fill_outbox(publisher: &mut Client5) -> usize {
    let mut i = 0;
    while publish(publisher, &format!("gone/{i}"), i.to_string()).await == PubAckReason::Success {
        i += 1;
        assert!(i <= OUTBOX, "never refused");
    }
    i
}

/// [MQTT-4.3.2-1]: a PUBACK with a success code means the message is taken; with a full
/// outbox the broker says 0x97 instead, and keeps every message it did take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_refuses_instead_of_losing_acknowledged_messages_issue_16() {
    let dir = temp_dir("outbox");
    let (mut nodes, addrs) = small_outbox_nodes(&dir).await;

    // A persistent session on node 2, subscribed, then offline; node 2 goes down (its route
    // stays: its subscriber is coming back).
    let mut sink_options = options(nodes[1].addr, "outbox-sink");
    sink_options.set_clean_session(false);
    let (mut sink, _) = Client::connect(sink_options).await;
    sink.subscribe("out/#", QoS::AtLeastOnce).await;
    route_known(&nodes, "out/#", 2).await;
    sink.disconnect().await;
    let node2 = nodes.remove(1);
    node2.shutdown().await;

    // Node 1's publisher: accepted until the outbox for node 2 is congested, then refused.
    let mut publisher = Client5::simple(nodes[0].addr, "outbox-source").await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..30 {
        match publish(&mut publisher, &format!("out/{i}"), i.to_string()).await {
            PubAckReason::Success => {
                assert_eq!(
                    refused, 0,
                    "accepted after a refusal, with node 2 still down"
                );
                accepted.push(i.to_string());
            }
            PubAckReason::QuotaExceeded => refused += 1,
            other => panic!("unexpected PUBACK reason {other:?}"),
        }
    }
    assert_eq!(accepted.len(), OUTBOX - OUTBOX / 10, "taken up to 90 %");
    assert_eq!(refused, 30 - accepted.len());
    let metrics = nodes[0].broker.metrics().snapshot();
    assert_eq!(metrics.messages_refused_cluster_full, refused as u64);
    // Topics with no copy for node 2 still flow.
    assert_eq!(
        publish(&mut publisher, "elsewhere/1", "x".into()).await,
        PubAckReason::NoMatchingSubscribers
    );

    // Node 2 comes back: every accepted message reaches its subscriber, once, in order.
    let node2 = start_node_with(2, &addrs, &dir, small_outbox).await;
    let mut sink_options = options(node2.addr, "outbox-sink");
    sink_options.set_clean_session(false);
    let (mut sink, connack) = Client::connect(sink_options).await;
    assert!(connack.session_present);
    let mut received = Vec::new();
    while received.len() < accepted.len() {
        let message = sink.recv().await;
        received.push(String::from_utf8(message.payload.to_vec()).expect("utf-8"));
    }
    assert_eq!(
        received, accepted,
        "every acknowledged message, once, in order"
    );
    let extra = sink
        .next_matching_within(Duration::from_millis(500), |event| match event {
            Event::Incoming(Packet::Publish(publish)) => Some(publish.clone()),
            _ => None,
        })
        .await;
    assert!(extra.is_err(), "a refused or doubled message: {extra:?}");

    // The outbox drained: the same publisher is accepted again.
    until("node 1's outbox drained", || {
        nodes[0].cluster.forward_pending() == 0
    })
    .await;
    assert_eq!(
        publish(&mut publisher, "out/again", "again".into()).await,
        PubAckReason::Success
    );
    assert_eq!(&sink.recv().await.payload[..], b"again");

    for node in [node2, nodes.remove(1), nodes.remove(0)] {
        node.shutdown().await;
    }
}

/// A node removed from the cluster while its outbox here is congested: the outbox goes with
/// it (memory and stored copies), its subscribers' topics are no longer refused, and the
/// congestion check is back to its one load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_nodes_outbox_goes_with_it_issue_16() {
    let dir = temp_dir("outbox-removed");
    let (mut nodes, _) = small_outbox_nodes(&dir).await;
    let mut sink_options = options(nodes[2].addr, "removed-sink");
    sink_options.set_clean_session(false);
    let (mut sink, _) = Client::connect(sink_options).await;
    sink.subscribe("gone/#", QoS::AtLeastOnce).await;
    route_known(&nodes, "gone/#", 3).await;
    sink.disconnect().await;
    let node3 = nodes.remove(2);
    node3.shutdown().await;

    let mut publisher = Client5::simple(nodes[0].addr, "removed-source").await;
    fill_outbox(&mut publisher).await;
    assert!(nodes[0].cluster.outbox_congested());

    nodes[1]
        .cluster
        .node()
        .remove_node(3)
        .await
        .expect("node 3 removed");
    until("node 1's outbox for node 3 dropped", || {
        !nodes[0].cluster.outbox_congested()
    })
    .await;
    assert_eq!(
        publish(&mut publisher, "gone/after", "x".into()).await,
        PubAckReason::NoMatchingSubscribers,
        "no route to a removed node, nothing refused"
    );
    for node in nodes {
        node.shutdown().await;
    }
}

/// A node removed while this one was down, its removal reaching this node inside a Raft
/// snapshot (the log behind it purged: snapshots every 10 entries here) rather than as a
/// command it applies: the outbox this node restored for it at start goes once it has caught
/// up, instead of being kept, sent for ever and holding the congestion check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_for_a_node_removed_while_this_one_was_down_goes_issue_16() {
    let dir = temp_dir("outbox-departed");
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let adjust = |config: &mut ServerConfig| {
        small_outbox(config);
        if let Some(cluster) = config.cluster.as_mut() {
            cluster.snapshot_every = Some(10);
        }
    };
    let mut nodes = Vec::new();
    for id in 1..=4 {
        nodes.push(start_node_with(id, &addrs, &dir, adjust).await);
    }
    all_registered(&nodes).await;
    let mut sink_options = options(nodes[3].addr, "departed-sink");
    sink_options.set_clean_session(false);
    let (mut sink, _) = Client::connect(sink_options).await;
    sink.subscribe("gone/#", QoS::AtLeastOnce).await;
    route_known(&nodes, "gone/#", 4).await;
    sink.disconnect().await;
    nodes.remove(3).shutdown().await;

    // Node 1's outbox for node 4 fills (stored copies), then node 1 stops.
    let mut publisher = Client5::simple(nodes[0].addr, "departed-source").await;
    fill_outbox(&mut publisher).await;
    drop(publisher);
    nodes.remove(0).shutdown().await;

    // Node 4 is removed while node 1 is down (once nodes 2 and 3 elected a leader, if node 1
    // was it), and the log moves on past a few snapshots.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Err(refusal) = nodes[0].cluster.node().remove_node(4).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 4 not removed: {refusal}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut churn = Client::simple(nodes[0].addr, "departed-churn").await;
    for k in 0..40 {
        churn
            .subscribe(&format!("churn/{k}"), QoS::AtMostOnce)
            .await;
    }

    let node1 = start_node_with(1, &addrs, &dir, adjust).await;
    until("node 1 caught up without node 4", || {
        let state = node1.cluster.node().state();
        state.node(4).is_none() && state.route("churn/39").is_some()
    })
    .await;
    until("node 1's restored outbox for node 4 dropped", || {
        !node1.cluster.outbox_congested()
    })
    .await;
    nodes.insert(0, node1);
    for node in nodes {
        node.shutdown().await;
    }
}
