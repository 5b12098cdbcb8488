//! Issue 16, partitions: a node that cannot reach a quorum answers what needs the cluster
//! with a retryable failure — a SUBSCRIBE that needs a new route gets SUBACK 0x80 — while
//! what it already knows keeps working; back in a quorum, the same SUBSCRIBE succeeds.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Client;
use common::cluster::{free_addr, start_node, temp_dir, until};
use rumqttc::{QoS, SubscribeReasonCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_route_without_quorum_is_a_retryable_suback_failure() {
    let dir = temp_dir("quorum");
    let cluster_addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start_node(id, &cluster_addrs, &dir).await);
    }
    until("three registered nodes", || {
        nodes
            .iter()
            .all(|node| node.cluster.node().state().node_count() == 3)
    })
    .await;

    // With a quorum: the SUBACK comes once the route is committed, so the route is in the
    // state of a majority by then.
    let mut before = Client::simple(nodes[0].addr, "before").await;
    let suback = before.subscribe("known/+", QoS::AtLeastOnce).await;
    assert_eq!(
        suback.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    // Two of three go: node 1 is alone, in a minority.
    let node3 = nodes.pop().unwrap();
    let node2 = nodes.pop().unwrap();
    node3.shutdown().await;
    node2.shutdown().await;

    let mut client = Client::simple(nodes[0].addr, "minority").await;
    let started = Instant::now();
    let suback = client.subscribe("new/filter", QoS::AtLeastOnce).await;
    assert_eq!(
        suback.return_codes,
        vec![SubscribeReasonCode::Failure],
        "a route the cluster cannot commit is refused (0x80), retryable"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered within the proposal timeout"
    );
    // A filter this node already routes needs no new decision: granted at once.
    let suback = client.subscribe("known/+", QoS::AtLeastOnce).await;
    assert_eq!(
        suback.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    // Local traffic along known routes goes on.
    client
        .publish("known/x", QoS::AtLeastOnce, false, "local")
        .await;
    assert_eq!(before.recv().await.payload, &b"local"[..]);

    // The others come back: the same SUBSCRIBE succeeds.
    let node2 = start_node(2, &cluster_addrs, &dir).await;
    let node3 = start_node(3, &cluster_addrs, &dir).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let suback = client.subscribe("new/filter", QoS::AtLeastOnce).await;
        if suback.return_codes == vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)] {
            break;
        }
        assert!(Instant::now() < deadline, "no quorum again in time");
    }
    for node in [nodes.remove(0), node2, node3] {
        node.shutdown().await;
    }
}
