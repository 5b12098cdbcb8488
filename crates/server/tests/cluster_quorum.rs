//! Issue 16, partitions: a node that cannot reach a quorum answers what needs the cluster
//! with a retryable failure — a SUBSCRIBE that needs a new route gets SUBACK 0x80 — while
//! its existing connections keep working along known routes for the lease; past the lease it
//! closes them (MQTT 5: DISCONNECT 0x9C Use another server), since the majority may give
//! their client ids to another node. Back in a quorum, the same SUBSCRIBE succeeds.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Client;
use common::cluster::{all_registered, free_addr, start_node_with, temp_dir};
use rumqttc::{QoS, SubscribeReasonCode};
use tern_server::ServerConfig;

/// The nodes' lease (`cluster.lease_ms`).
const LEASE_MS: u64 = 6_000;

/// A short proposal timeout (the SUBACK failure comes fast), a lease long enough to watch
/// the connections go on meanwhile.
fn timers(config: &mut ServerConfig) {
    if let Some(cluster) = config.cluster.as_mut() {
        cluster.proposal_timeout_ms = 1_000;
        cluster.lease_ms = LEASE_MS;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_new_routes_fail_and_connections_last_the_lease() {
    let dir = temp_dir("quorum");
    let cluster_addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start_node_with(id, &cluster_addrs, &dir, timers).await);
    }
    all_registered(&nodes).await;

    // With a quorum: the SUBACK comes once the route is committed.
    let mut before = Client::simple(nodes[0].addr, "before").await;
    let suback = before.subscribe("known/+", QoS::AtLeastOnce).await;
    assert_eq!(
        suback.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let mut client = Client::simple(nodes[0].addr, "minority").await;

    // Two of three go: node 1 is alone, in a minority.
    let node3 = nodes.pop().unwrap();
    let node2 = nodes.pop().unwrap();
    node3.shutdown().await;
    node2.shutdown().await;
    let lost_at = Instant::now();
    // The lease runs from the last confirmation of the quorum, before the shutdowns.
    let lease_end = nodes[0]
        .cluster
        .node()
        .lease_until(Duration::from_millis(LEASE_MS))
        .expect("a lease held");

    let suback = client.subscribe("new/filter", QoS::AtLeastOnce).await;
    assert_eq!(
        suback.return_codes,
        vec![SubscribeReasonCode::Failure],
        "a route the cluster cannot commit is refused (0x80), retryable"
    );
    // A filter this node already routes needs no new decision: granted at once.
    let suback = client.subscribe("known/+", QoS::AtLeastOnce).await;
    assert_eq!(
        suback.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    // Local traffic along known routes goes on within the lease.
    client
        .publish("known/x", QoS::AtLeastOnce, false, "local")
        .await;
    assert_eq!(before.recv().await.payload, &b"local"[..]);
    assert!(
        lost_at.elapsed() < Duration::from_secs(6),
        "the checks above ran within the lease"
    );

    // Past the lease, the node lets its clients go.
    let error = before
        .next_matching_within(Duration::from_secs(15), |_| None::<()>)
        .await
        .unwrap_err();
    assert!(
        tokio::time::Instant::now() >= lease_end,
        "closed only once the lease ran out ({:?} after the quorum went): {error}",
        lost_at.elapsed()
    );

    // The others come back: a new connection's SUBSCRIBE succeeds (retried until the
    // cluster has a leader again).
    let node2 = start_node_with(2, &cluster_addrs, &dir, timers).await;
    let node3 = start_node_with(3, &cluster_addrs, &dir, timers).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no quorum again in time");
        let Ok((mut again, _)) = tokio::time::timeout(
            Duration::from_secs(5),
            Client::connect(common::options(nodes[0].addr, "again")),
        )
        .await
        else {
            continue;
        };
        let suback = again.subscribe("new/filter", QoS::AtLeastOnce).await;
        if suback.return_codes == vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its lease was confirmed again after the gap: the claims' fast path waited until it
    // had applied a barrier of its own proposed since (a claim of its clients' ids made
    // elsewhere meanwhile would have been applied, and taken the client from here, first).
    common::cluster::until("node 1 caught up after its lease's gap", || {
        nodes[0].cluster.lease_gaps() == (1, false)
    })
    .await;
    for node in [nodes.remove(0), node2, node3] {
        node.shutdown().await;
    }
}
