//! Nodes on loopback form a cluster from their seeds, take proposals through any node, let a
//! fourth node join while they run, and go on when the leader stops (issue 16: "a new node
//! must be able to join a running cluster without restarting the others"; "leader killed,
//! traffic goes on").

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tern_cluster::{ClusterNode, Command, NodeConfig, Outcome, Timing};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tern-formation-{name}-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn timing() -> Timing {
    Timing {
        heartbeat: Duration::from_millis(50),
        election_min: Duration::from_millis(300),
        election_max: Duration::from_millis(600),
        proposal_timeout: Duration::from_secs(3),
        probe_interval: Duration::from_millis(100),
        ..Timing::default()
    }
}

/// A port free now for a server started later, on a loopback address of its own (127.0.0.10
/// and up, the next one each call): the kernel may hand a just-released port out again, so a
/// port reserved on 127.0.0.1 could be given to another reservation or to a port-0 listener of a
/// test running beside before the server binds it.
fn free_addr() -> SocketAddr {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let host = 10 + NEXT.fetch_add(1, Ordering::Relaxed) % 240;
    std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, host), 0))
        .and_then(|socket| socket.local_addr())
        .expect("a free loopback port")
}

async fn start(
    id: u64,
    addr: SocketAddr,
    seeds: &[SocketAddr],
    dir: &std::path::Path,
) -> ClusterNode {
    let (node, _events) = ClusterNode::start(NodeConfig {
        node_id: id,
        bind: addr,
        advertise: addr.to_string(),
        seeds: seeds.iter().map(ToString::to_string).collect(),
        dir: dir.join(format!("n{id}")),
        mqtt_addrs: vec![format!("127.0.0.1:{}", 1883 + id)],
        timing: timing(),
        addr_map: None,
        transport: tern_cluster::Transport::plain(),
    })
    .await
    .unwrap();
    node
}

/// Waits (bounded) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn claim(node: &ClusterNode, client: &str) -> Result<Outcome, tern_cluster::rpc::Refusal> {
    node.propose(Command::Claim {
        client_id: client.into(),
        node: node.id(),
        persistent: true,
        clean_start: false,
    })
    .await
}

/// Claims until one is committed (a leader is being elected meanwhile).
async fn claim_eventually(node: &ClusterNode, client: &str) -> Outcome {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match claim(node, client).await {
            Ok(outcome) => return outcome,
            Err(refusal) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no commit: {refusal}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_seeds_form_a_cluster_a_fourth_joins_and_the_leader_can_go() {
    let dir = temp_dir("form");
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let seeds = &addrs[..3];
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let others: Vec<SocketAddr> = seeds
            .iter()
            .copied()
            .filter(|addr| *addr != addrs[id as usize - 1])
            .collect();
        nodes.push(start(id, addrs[id as usize - 1], &others, &dir).await);
    }
    until("three voters", || {
        nodes
            .iter()
            .all(|node| node.status().voters == vec![1, 2, 3])
    })
    .await;

    until("every node registered", || {
        nodes.iter().all(|node| node.state().node_count() == 3)
    })
    .await;

    // A proposal through any node is committed and seen by all.
    let first = claim_eventually(&nodes[2], "client-a").await;
    assert_eq!(
        first,
        Outcome::Claimed {
            epoch: 1,
            previous: None
        }
    );
    let second = claim_eventually(&nodes[0], "client-a").await;
    assert_eq!(
        second,
        Outcome::Claimed {
            epoch: 2,
            previous: Some((3, 1))
        }
    );
    until("the claim on every node", || {
        nodes
            .iter()
            .all(|node| node.state().owner("client-a") == Some((Some(1), 2)))
    })
    .await;

    // A fourth node joins through one seed while the others run: a learner first, with the
    // whole state.
    let fourth = start(4, addrs[3], &[addrs[1]], &dir).await;
    until("the fourth node a member", || fourth.is_member()).await;
    until("the fourth node's replica", || {
        fourth.state().owner("client-a") == Some((Some(1), 2))
    })
    .await;
    assert_eq!(
        fourth.status().voters,
        vec![1, 2, 3],
        "four nodes keep three voters"
    );
    nodes.push(fourth);

    // The leader goes: the others elect another and commit on.
    let leader = nodes[0].status().leader.unwrap();
    let index = nodes.iter().position(|node| node.id() == leader).unwrap();
    let gone = nodes.remove(index);
    gone.shutdown().await;
    let outcome = claim_eventually(&nodes[0], "client-b").await;
    assert!(matches!(outcome, Outcome::Claimed { epoch: 1, .. }));
    until("a new leader", || {
        nodes
            .iter()
            .all(|node| node.status().leader.is_some_and(|l| l != leader))
    })
    .await;

    // The stopped node is removed for good; a learner takes its voter seat.
    nodes[0].remove_node(leader).await.unwrap();
    until("three voters again, without the old leader", || {
        let voters = nodes[0].status().voters;
        voters.len() == 3 && !voters.contains(&leader)
    })
    .await;
    until("the old leader out of the state", || {
        nodes.iter().all(|node| node.state().node(leader).is_none())
    })
    .await;
    for node in &nodes {
        node.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
