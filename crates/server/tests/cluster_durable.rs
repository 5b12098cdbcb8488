//! Issue 16, the data plane's promise: a QoS 1 message the publisher got PUBACK for on one
//! node is kept in that node's store until the subscriber's node acknowledges it, so neither
//! node going down (and coming back with its data directory) loses it; the receiver does
//! not deliver twice what is sent again.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::{all_registered, free_addr, route_known, start_node, temp_dir, until};
use common::{Client, options};
use rumqttc::{Event, Packet, QoS};

/// Both ends go down and come back: every acknowledged message arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_a_restart_of_both_nodes() {
    let dir = temp_dir("durable");
    let cluster_addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start_node(id, &cluster_addrs, &dir).await);
    }
    all_registered(&nodes).await;

    // A persistent session on node 1, subscribed, then offline.
    let mut subscriber_options = options(nodes[0].addr, "orders-sink");
    subscriber_options.set_clean_session(false);
    let (mut subscriber, _) = Client::connect(subscriber_options).await;
    subscriber.subscribe("orders/#", QoS::AtLeastOnce).await;
    route_known(&nodes, "orders/#", 1).await;
    subscriber.disconnect().await;

    // Node 1 goes down; node 3's publisher gets PUBACK for each message (kept in node 3's
    // outbox, as node 1 cannot take them).
    let node1 = nodes.remove(0);
    node1.shutdown().await;
    let mut publisher = Client::simple(nodes[1].addr, "orders-source").await;
    let total = 10;
    for i in 0..total {
        publisher
            .publish(
                &format!("orders/{i}"),
                QoS::AtLeastOnce,
                false,
                format!("{i}"),
            )
            .await;
    }
    let mut acked = 0;
    while acked < total {
        publisher
            .next_matching(|event| {
                matches!(event, Event::Incoming(Packet::PubAck(_))).then_some(())
            })
            .await
            .expect("PUBACK");
        acked += 1;
    }
    publisher.disconnect().await;

    // Node 3 goes down too, then both come back with their data directories.
    let node3 = nodes.remove(1);
    node3.shutdown().await;
    let node3 = start_node(3, &cluster_addrs, &dir).await;
    let node1 = start_node(1, &cluster_addrs, &dir).await;

    let mut resumed_options = options(node1.addr, "orders-sink");
    resumed_options.set_clean_session(false);
    let (mut subscriber, connack) = Client::connect(resumed_options).await;
    assert!(
        connack.session_present,
        "the session survived node 1's restart"
    );
    let mut received = Vec::new();
    while received.len() < total {
        let message = subscriber.recv().await;
        received.push(String::from_utf8(message.payload.to_vec()).unwrap());
    }
    let expected: Vec<String> = (0..total).map(|i| i.to_string()).collect();
    assert_eq!(received, expected, "all, once, in order");
    // Nothing more comes (no duplicate sent again after the restart).
    let extra = subscriber
        .next_matching_within(Duration::from_millis(700), |event| match event {
            Event::Incoming(Packet::Publish(publish)) => Some(publish.clone()),
            _ => None,
        })
        .await;
    assert!(extra.is_err(), "a message delivered twice: {extra:?}");
    // Node 3's outbox is empty once node 1 acknowledged everything.
    until("node 3's outbox emptied", || {
        node3.cluster.forward_pending() == 0
    })
    .await;
    for node in [node1, node3, nodes.remove(0)] {
        node.shutdown().await;
    }
}
