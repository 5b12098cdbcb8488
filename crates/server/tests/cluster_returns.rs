//! Issue 16, "Take-over across nodes": "If N1 is down, subscriptions survive (they are
//! replicated) and its queued messages return when N1 does". Three in-process nodes, rumqttc
//! MQTT 5 clients, a persistent session (Clean Start 0, Session Expiry 3600) at QoS 1.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::Client;
use common::cluster::{Node, route_known, start_node, temp_dir, three_nodes_at, until};
use common::v5::{Client5, QoS as QoS5};
use rumqttc::QoS;
use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
use rumqttc::v5::{Event as Event5, MqttOptions};

const ID: &str = "wanderer";

fn options(addr: SocketAddr, clean_start: bool) -> MqttOptions {
    let mut options = common::v5::options(addr, ID);
    options.set_clean_start(clean_start);
    options.set_session_expiry_interval(Some(3600));
    options
}

/// Connects to a node that must first wait out the silent owner's lease (5 s here, as long
/// as rumqttc's and the helpers' timeouts), then lets the connection drop without
/// DISCONNECT: the session stays there, offline. Returns CONNACK's session present.
async fn claim_at(addr: SocketAddr, clean_start: bool) -> bool {
    let mut options = options(addr, clean_start);
    // A claim may also wait for an election (its previous owner was the leader), its
    // proposal and a hand-over that fails: bounded, but more than 15 s under load.
    options.set_connection_timeout(30);
    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 10);
    tokio::time::timeout(Duration::from_secs(35), async {
        loop {
            match eventloop.poll().await {
                Ok(Event5::Incoming(Packet5::ConnAck(connack))) => {
                    return connack.session_present;
                }
                Ok(_) => {}
                Err(error) => panic!("connection error: {error}"),
            }
        }
    })
    .await
    .expect("a CONNACK")
}

/// The payloads of the next `count` messages `client` receives, none of them twice.
async fn distinct(client: &mut Client5, count: usize) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    while got.len() < count {
        let message = client.recv().await;
        let payload = String::from_utf8_lossy(&message.payload).into_owned();
        assert!(got.insert(payload.clone()), "{payload} twice");
    }
    got
}

/// Publishes `payload` to `wander/x` on the node at `addr` and checks that it is the next
/// message `client` gets: nothing else (a duplicate, something of A's copy) came first.
async fn last_message(client: &mut Client5, addr: SocketAddr, payload: &str) {
    let publisher = Client::simple(addr, "pub-last").await;
    publisher
        .publish("wander/x", QoS::AtLeastOnce, false, payload)
        .await;
    assert_eq!(
        client.recv().await.payload,
        payload.as_bytes(),
        "the next message"
    );
}

/// Waits until no node's route table has A's (node 1's) route for `wander/#`.
async fn no_route_of_a(nodes: &[Node]) {
    until("no route of A for the session's filter", || {
        nodes.iter().all(|node| {
            node.cluster
                .node()
                .state()
                .route("wander/#")
                .is_some_and(|holders| !holders.contains(&1))
        })
    })
    .await;
}

/// Waits until every node's registry lists A (node 1) among the session's pending returns.
async fn a_listed(nodes: &[Node]) {
    until("A listed among the pending returns", || {
        nodes.iter().all(|node| {
            node.cluster
                .node()
                .state()
                .session(ID)
                .is_some_and(|entry| entry.pending_returns.contains(&1))
        })
    })
    .await;
}

/// The persistent session of [`ID`] on node A (index 0) with a QoS 1 subscription to
/// `wander/#` known everywhere, offline, with five messages `before-{i}` published on C
/// queued for it on A; then A is shut down. Returns the two nodes left and the cluster
/// addresses (to start A again).
async fn queued_on_a_then_a_down(dir: &common::cluster::Dir) -> (Vec<Node>, Vec<SocketAddr>) {
    let (mut nodes, addrs) = three_nodes_at(dir).await;
    let (mut client, _) = Client5::connect(options(nodes[0].addr, false)).await;
    client.subscribe("wander/#", QoS5::AtLeastOnce).await;
    route_known(&nodes, "wander/#", 1).await;
    until(
        "the durable subscription in the registry everywhere",
        || {
            nodes.iter().all(|node| {
                node.cluster
                    .node()
                    .state()
                    .session(ID)
                    .is_some_and(|entry| entry.subscriptions.contains_key("wander/#"))
            })
        },
    )
    .await;
    client.disconnect().await;
    until("the session offline on A", || {
        nodes[0]
            .broker
            .session(ID)
            .is_some_and(|session| !session.is_online())
    })
    .await;
    let publisher = Client::simple(nodes[2].addr, "pub-c").await;
    for i in 0..5 {
        publisher
            .publish("wander/x", QoS::AtLeastOnce, false, format!("before-{i}"))
            .await;
    }
    until("five messages queued on A", || {
        nodes[0]
            .broker
            .session(ID)
            .is_some_and(|session| session.queued_len() == 5)
    })
    .await;
    nodes.remove(0).shutdown().await;
    (nodes, addrs)
}

/// [`queued_on_a_then_a_down`], then the client claims its session on B (A listed among the
/// pending returns), B (the owner) goes and A comes back: its return to B fails, its copy
/// stays. Returns A and C, and the cluster addresses.
async fn owner_down_copy_back(dir: &common::cluster::Dir) -> (Vec<Node>, Vec<SocketAddr>) {
    let (mut nodes, addrs) = queued_on_a_then_a_down(dir).await;
    assert!(claim_at(nodes[0].addr, false).await, "session present on B");
    a_listed(&nodes).await;
    // B's route for the session is in every table before B goes: what C publishes while B is
    // down waits in C's outbox for B. (Were B to stop before its route committed, that
    // would reach A's copy only, after the cutoff: a crash in the window.)
    route_known(&nodes, "wander/#", 2).await;
    nodes.remove(0).shutdown().await;
    nodes.insert(0, start_node(1, &addrs, dir).await);
    until("A caught up, still holding the copy", || {
        nodes[0]
            .cluster
            .node()
            .state()
            .session(ID)
            .is_some_and(|entry| entry.owner == Some(2))
            && nodes[0].broker.session(ID).is_some()
    })
    .await;
    (nodes, addrs)
}

/// Issue 16 ("its queued messages return when N1 does"): the client reconnects to B while A
/// is down (session present, its subscription from the registry) and gets there what is
/// published meanwhile; once A is back, the five messages queued on A before it stopped are
/// delivered on B, each exactly once (nothing published while A was down comes twice, though
/// C forwarded those to A too), and A keeps neither the session nor its route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_nodes_queue_returns_to_the_sessions_new_owner() {
    let dir = temp_dir("return-queue");
    let (mut nodes, addrs) = queued_on_a_then_a_down(&dir).await;
    assert!(claim_at(nodes[0].addr, false).await, "session present on B");
    let (mut client, connack) = Client5::connect(options(nodes[0].addr, false)).await;
    assert!(connack.session_present);
    route_known(&nodes, "wander/#", 2).await;
    let publisher = Client::simple(nodes[1].addr, "pub-c2").await;
    for i in 0..3 {
        publisher
            .publish("wander/x", QoS::AtLeastOnce, false, format!("during-{i}"))
            .await;
    }
    for i in 0..3 {
        assert_eq!(
            client.recv().await.payload,
            format!("during-{i}").as_bytes()
        );
    }

    nodes.insert(0, start_node(1, &addrs, &dir).await);
    let returned = distinct(&mut client, 5).await;
    assert!(
        returned
            .iter()
            .all(|payload| payload.starts_with("before-")),
        "{returned:?}"
    );
    until(
        "A holds nothing of the session, and is off its pending returns",
        || {
            nodes[0].broker.session(ID).is_none()
                && nodes.iter().all(|node| {
                    node.cluster
                        .node()
                        .state()
                        .session(ID)
                        .is_some_and(|entry| entry.pending_returns.is_empty())
                })
        },
    )
    .await;
    no_route_of_a(&nodes).await;
    // Nothing more comes before a last message: no duplicate of either batch.
    last_message(&mut client, nodes[2].addr, "end").await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// Issue 16 / [MQTT-3.1.2-4]: the client started clean on B while A was down: once A is back,
/// its copy of the old session is discarded, nothing of it delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_nodes_queue_is_discarded_after_a_clean_start_elsewhere() {
    let dir = temp_dir("return-discard");
    let (mut nodes, addrs) = queued_on_a_then_a_down(&dir).await;
    assert!(!claim_at(nodes[0].addr, true).await, "a new session on B");
    let (mut client, _) = Client5::connect(options(nodes[0].addr, false)).await;
    client.subscribe("wander/#", QoS5::AtLeastOnce).await;
    route_known(&nodes, "wander/#", 2).await;

    nodes.insert(0, start_node(1, &addrs, &dir).await);
    until("A's copy discarded", || {
        nodes[0].broker.session(ID).is_none()
    })
    .await;
    no_route_of_a(&nodes).await;
    last_message(&mut client, nodes[1].addr, "end").await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// Issue 16 ("its queued messages return when N1 does"), the client back on the node that
/// holds the copy: A's queue is not returned (B, the owner it was claimed by, is down too:
/// a return, if tried, fails and the copy stays), and the client connects to A again. A's claim lists A among the pending returns,
/// so A's copy joins the session it claims (from the registry, B being silent) instead of
/// being replaced: the five messages queued on A are delivered, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_joins_the_session_when_its_client_comes_back_to_its_node() {
    let dir = temp_dir("return-own");
    let (nodes, _) = owner_down_copy_back(&dir).await;

    assert!(claim_at(nodes[0].addr, false).await, "session present on A");
    let (mut client, connack) = Client5::connect(options(nodes[0].addr, false)).await;
    assert!(connack.session_present);
    let returned = distinct(&mut client, 5).await;
    assert!(
        returned
            .iter()
            .all(|payload| payload.starts_with("before-")),
        "{returned:?}"
    );
    route_known(&nodes, "wander/#", 1).await;
    last_message(&mut client, nodes[1].addr, "end").await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// Issue 16 with [MQTT-3.1.2-4]: the client's session moved to B while A was down (A listed
/// among the pending returns), then the client reconnects to B, its owner, with Clean Start:
/// that reconnection is not granted on the fast path but claimed through the log, whose clean
/// claim takes A off the list; when A comes back its copy is discarded and nothing of the
/// old session reaches the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_start_on_the_owner_discards_a_down_nodes_copy() {
    let dir = temp_dir("return-clean-owner");
    let (mut nodes, addrs) = queued_on_a_then_a_down(&dir).await;
    assert!(claim_at(nodes[0].addr, false).await, "session present on B");
    a_listed(&nodes).await;
    until("the session offline on B", || {
        nodes[0]
            .broker
            .session(ID)
            .is_some_and(|session| !session.is_online())
    })
    .await;

    // Clean Start on B, which owns the client id: the list is emptied.
    let (mut client, connack) = Client5::connect(options(nodes[0].addr, true)).await;
    assert!(!connack.session_present);
    until("nothing pending for the new session", || {
        nodes.iter().all(|node| {
            node.cluster
                .node()
                .state()
                .session(ID)
                .is_some_and(|entry| entry.pending_returns.is_empty())
        })
    })
    .await;
    client.subscribe("wander/#", QoS5::AtLeastOnce).await;

    nodes.insert(0, start_node(1, &addrs, &dir).await);
    until("A's copy discarded", || {
        nodes[0].broker.session(ID).is_none()
    })
    .await;
    last_message(&mut client, nodes[2].addr, "fresh").await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// Issue 16 (return cutoffs kept across restarts): B, the session's new owner, is down when A
/// comes back; three messages published on C meanwhile reach A's copy (A's route) and wait in
/// C's outbox for B. A restarts once more before B is back. Its copy now holds eight
/// messages, but only the five queued before its first restart are returned: the other three
/// reach B from C. Each message is delivered exactly once. (Without the kept cutoff the
/// three come twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_restart_before_the_return_doubles_nothing() {
    let dir = temp_dir("return-twice");
    let (mut nodes, addrs) = owner_down_copy_back(&dir).await;
    route_known(&nodes, "wander/#", 1).await;
    let publisher = Client::simple(nodes[1].addr, "pub-c2").await;
    for i in 0..3 {
        publisher
            .publish("wander/x", QoS::AtLeastOnce, false, format!("during-{i}"))
            .await;
    }
    until("eight messages in A's copy", || {
        nodes[0]
            .broker
            .session(ID)
            .is_some_and(|session| session.queued_len() == 8)
    })
    .await;
    drop(publisher);
    // A learnt of B's claim (it applied it): the copy's cutoff is in its file.
    let kept = dir
        .0
        .join("node1")
        .join(tern_store::CLUSTER_DIR)
        .join("return-cutoffs.json");
    until("A's cutoff for the copy kept", || {
        std::fs::read_to_string(&kept).is_ok_and(|text| text.contains(ID))
    })
    .await;

    // A goes again; B comes back, then A (its return to B, up by then, is not put off).
    nodes.remove(0).shutdown().await;
    nodes.insert(0, start_node(2, &addrs, &dir).await);
    // B has just started: its first claim may wait for its lease or an election.
    assert!(claim_at(nodes[0].addr, false).await, "session present on B");
    let (mut client, connack) = Client5::connect(options(nodes[0].addr, false)).await;
    assert!(connack.session_present);
    nodes.insert(0, start_node(1, &addrs, &dir).await);
    let got = distinct(&mut client, 8).await;
    let expected: BTreeSet<String> = (0..5)
        .map(|i| format!("before-{i}"))
        .chain((0..3).map(|i| format!("during-{i}")))
        .collect();
    assert_eq!(got, expected);
    until("A holds nothing of the session", || {
        nodes[0].broker.session(ID).is_none()
    })
    .await;
    // Nothing more comes before a last message: no duplicate of either batch.
    last_message(&mut client, nodes[2].addr, "end").await;
    for node in nodes {
        node.shutdown().await;
    }
}
