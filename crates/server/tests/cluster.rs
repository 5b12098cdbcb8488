//! Issue 16: in-process clusters of three Tern nodes on loopback, driven by rumqttc clients:
//! a message published on one node reaches subscribers on the others, a retained message set
//! on one is seen from the others, a shared subscription's members on several nodes share
//! its messages; a client id claimed on another node takes its session along (issue 16,
//! "Take-over across nodes"), and a claim without a quorum is refused, retryably.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Client;
use common::cluster::{
    AGREE, Node, route_known, start_node, temp_dir, three_nodes, three_nodes_at, until,
};
use rumqttc::QoS;

/// Subscribe on A, publish on C: delivered at QoS 0 and 1, in order (issue 16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_on_one_node_reaches_subscribers_on_others() {
    let dir = temp_dir("route");
    let nodes = three_nodes(&dir).await;
    let mut subscriber = Client::simple(nodes[0].addr, "sub-a").await;
    subscriber
        .subscribe("sensors/+/temp", QoS::AtLeastOnce)
        .await;
    route_known(&nodes, "sensors/+/temp", 1).await;

    let publisher = Client::simple(nodes[2].addr, "pub-c").await;
    for i in 0..20 {
        let qos = if i % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        publisher
            .publish("sensors/kitchen/temp", qos, false, format!("{i}"))
            .await;
    }
    // Every message arrives; per QoS in the order published [MQTT-4.6.0-5] (the order
    // holds per topic and QoS: QoS 0 may overtake QoS 1 as on a single node).
    let mut received = Vec::new();
    for _ in 0..20 {
        let message = subscriber.recv().await;
        assert_eq!(message.topic, "sensors/kitchen/temp");
        let n: u32 = std::str::from_utf8(&message.payload)
            .unwrap()
            .parse()
            .unwrap();
        received.push(n);
    }
    let even: Vec<u32> = received.iter().copied().filter(|n| n % 2 == 0).collect();
    let odd: Vec<u32> = received.iter().copied().filter(|n| n % 2 == 1).collect();
    assert_eq!(
        even,
        (0..20).step_by(2).collect::<Vec<u32>>(),
        "QoS 0 in order"
    );
    assert_eq!(
        odd,
        (1..20).step_by(2).collect::<Vec<u32>>(),
        "QoS 1 in order"
    );
    // A subscriber on the publisher's own node gets it as well, once.
    let mut local = Client::simple(nodes[2].addr, "sub-c").await;
    local.subscribe("sensors/#", QoS::AtMostOnce).await;
    route_known(&nodes, "sensors/#", 3).await;
    publisher
        .publish("sensors/hall/temp", QoS::AtLeastOnce, false, "x")
        .await;
    assert_eq!(local.recv().await.payload, &b"x"[..]);
    assert_eq!(subscriber.recv().await.payload, &b"x"[..]);
    for node in nodes {
        node.shutdown().await;
    }
}

/// A retained message set on A is seen from B by a later subscriber [MQTT-3.3.1-6]; cleared
/// on C, it is gone everywhere [MQTT-3.3.1-10].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_set_on_one_node_is_seen_from_the_others() {
    let dir = temp_dir("retained");
    let nodes = three_nodes(&dir).await;
    let publisher = Client::simple(nodes[0].addr, "pub-a").await;
    publisher
        .publish("status/door", QoS::AtLeastOnce, true, "open")
        .await;
    until("the retained message everywhere", || {
        nodes.iter().all(|node| {
            node.cluster
                .node()
                .state()
                .retained_message("status/door")
                .is_some()
        })
    })
    .await;
    until("the retained message in node 2's core", || {
        nodes[1].broker.retained_message("status/door").is_some()
    })
    .await;
    let mut reader = Client::simple(nodes[1].addr, "reader-b").await;
    reader.subscribe("status/#", QoS::AtLeastOnce).await;
    let message = reader.recv().await;
    assert_eq!(message.topic, "status/door");
    assert_eq!(message.payload, &b"open"[..]);
    assert!(message.retain, "sent as retained to a new subscriber");

    let clearer = Client::simple(nodes[2].addr, "clear-c").await;
    clearer
        .publish("status/door", QoS::AtLeastOnce, true, "")
        .await;
    until("the retained message gone everywhere", || {
        nodes.iter().all(|node| {
            node.cluster
                .node()
                .state()
                .retained_message("status/door")
                .is_none()
        })
    })
    .await;
    // Node 2's core applies the clear after its cluster state does.
    until("the clear in node 2's core", || {
        nodes[1].broker.retained_message("status/door").is_none()
    })
    .await;
    let mut late = Client::simple(nodes[1].addr, "late-b").await;
    late.subscribe("status/#", QoS::AtLeastOnce).await;
    let nothing = late
        .next_matching_within(Duration::from_millis(500), |event| match event {
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await;
    assert!(
        nothing.is_err(),
        "no retained message after the clear: {nothing:?}"
    );
    for node in nodes {
        node.shutdown().await;
    }
}

/// A shared subscription with members on two nodes: each message published on the third goes
/// to exactly one member; both get some [MQTT-4.8.2-?: one member per message].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_picks_among_members_on_all_nodes() {
    let dir = temp_dir("shared");
    let nodes = three_nodes(&dir).await;
    let mut a = Client::simple(nodes[0].addr, "worker-a").await;
    a.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await;
    let mut b = Client::simple(nodes[1].addr, "worker-b").await;
    b.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await;
    until("the group on nodes 1 and 2 everywhere", || {
        nodes.iter().all(|node| {
            node.cluster
                .node()
                .state()
                .shared()
                .any(|(group, filter, holders)| {
                    group == "g" && filter == "jobs/#" && holders.len() == 2
                })
        })
    })
    .await;
    let publisher = Client::simple(nodes[2].addr, "boss-c").await;
    let total = 40;
    for i in 0..total {
        publisher
            .publish("jobs/build", QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    let mut seen = std::collections::BTreeSet::new();
    let (mut got_a, mut got_b) = (0, 0);
    while seen.len() < total {
        tokio::select! {
            message = a.recv() => { got_a += 1; assert!(seen.insert(message.payload.to_vec()), "one member per message"); }
            message = b.recv() => { got_b += 1; assert!(seen.insert(message.payload.to_vec()), "one member per message"); }
        }
    }
    assert!(
        got_a > 0 && got_b > 0,
        "both members got some: {got_a} / {got_b}"
    );
    for node in nodes {
        node.shutdown().await;
    }
}

/// The nodes (indexes) whose core has `client_id`'s session online.
fn online_on(nodes: &[Node], client_id: &str) -> Vec<usize> {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, node)| {
            node.broker
                .session(client_id)
                .is_some_and(|session| session.is_online())
        })
        .map(|(i, _)| i)
        .collect()
}

/// Issue 16 ("Take-over across nodes"): a persistent session (3.1.1, clean session 0) on A,
/// subscribed at QoS 1 and offline while messages are published on C, connects to B: CONNACK
/// session present [MQTT-3.2.2-3], the queued messages delivered, A keeps nothing of it, and
/// its subscription moved with it (B holds the route; a new message published on C arrives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_moves_to_the_node_its_client_reconnects_to() {
    let dir = temp_dir("claim-move");
    let nodes = three_nodes(&dir).await;
    let mut options = common::options(nodes[0].addr, "roamer");
    options.set_clean_session(false);
    let (mut client, connack) = Client::connect(options).await;
    assert!(!connack.session_present);
    client.subscribe("fleet/+/pos", QoS::AtLeastOnce).await;
    route_known(&nodes, "fleet/+/pos", 1).await;
    client.disconnect().await;
    until("the session offline on A", || {
        nodes[0]
            .broker
            .session("roamer")
            .is_some_and(|session| !session.is_online())
    })
    .await;

    let publisher = Client::simple(nodes[2].addr, "pub-c").await;
    for i in 0..5 {
        publisher
            .publish("fleet/7/pos", QoS::AtLeastOnce, false, format!("q{i}"))
            .await;
    }
    until("five messages queued on A", || {
        nodes[0]
            .broker
            .session("roamer")
            .is_some_and(|session| session.queued_len() == 5)
    })
    .await;

    let mut options = common::options(nodes[1].addr, "roamer");
    options.set_clean_session(false);
    let (mut client, connack) = Client::connect(options).await;
    assert!(
        connack.session_present,
        "[MQTT-3.2.2-3]: session present on B"
    );
    for i in 0..5 {
        let message = client.recv().await;
        assert_eq!(
            message.payload,
            format!("q{i}").as_bytes(),
            "queued, in order"
        );
    }
    assert!(nodes[0].broker.session("roamer").is_none(), "A let it go");
    assert_eq!(online_on(&nodes, "roamer"), vec![1]);
    route_known(&nodes, "fleet/+/pos", 2).await;
    publisher
        .publish("fleet/7/pos", QoS::AtLeastOnce, false, "after")
        .await;
    assert_eq!(client.recv().await.payload, &b"after"[..]);
    for node in nodes {
        node.shutdown().await;
    }
}

/// Issue 16 ("Never two live connections for one client id") / [MQTT-3.1.4-3] /
/// [MQTT-4.4.0-1]: an MQTT 5 client connected to A connects again with the same id to B:
/// the first connection gets DISCONNECT 0x8E Session taken over, exactly one node has the
/// client online, and the QoS 1 message it had not acknowledged is re-sent on B with DUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_to_another_node_takes_its_session_over() {
    use common::v5::{Client5, QoS as QoS5};
    use rumqttc::v5::Event as Event5;
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet as Packet5};

    let dir = temp_dir("claim-takeover");
    let nodes = three_nodes(&dir).await;
    let options = |addr| {
        let mut options = common::v5::options(addr, "twice");
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(3600));
        options.set_manual_acks(true);
        options
    };
    let (mut first, _) = Client5::connect(options(nodes[0].addr)).await;
    first.subscribe("cmd/#", QoS5::AtLeastOnce).await;
    route_known(&nodes, "cmd/#", 1).await;
    let publisher = Client::simple(nodes[2].addr, "pub-c").await;
    publisher
        .publish("cmd/reboot", QoS::AtLeastOnce, false, "unacked")
        .await;
    let held = first.recv().await;
    assert_eq!(held.payload, &b"unacked"[..]);
    assert!(!held.dup);
    assert_eq!(online_on(&nodes, "twice"), vec![0]);

    let (mut second, connack) = Client5::connect(options(nodes[1].addr)).await;
    assert!(connack.session_present, "[MQTT-3.2.2-3]");
    // B's CONNACK comes after A's connection let go of the session (the hand-over waits).
    assert_eq!(online_on(&nodes, "twice"), vec![1], "one live connection");
    // rumqttc ends its event loop with the DISCONNECT's reason code as the error.
    let taken = first
        .next_matching(|event| match event {
            Event5::Incoming(Packet5::Disconnect(disconnect)) => {
                Some(format!("{:?}", disconnect.reason_code))
            }
            _ => None,
        })
        .await
        .unwrap_or_else(|error| error);
    assert!(
        taken.contains(&format!("{:?}", DisconnectReasonCode::SessionTakenOver)),
        "DISCONNECT 0x8E on A: {taken}"
    );
    let resent = second.recv().await;
    assert_eq!(resent.payload, &b"unacked"[..]);
    assert!(resent.dup, "[MQTT-4.4.0-1]: re-sent with DUP");
    assert_eq!(resent.pkid, held.pkid, "under its packet identifier");
    assert_eq!(online_on(&nodes, "twice"), vec![1], "one live connection");
    second.client.ack(&resent).await.expect("ack");
    for node in nodes {
        node.shutdown().await;
    }
}

/// Issue 16 ("Never two live connections for one client id") / [MQTT-3.1.4-3]: a 3.1.1
/// client with a clean session on A connects again with the same id to B: by B's CONNACK the
/// connection on A is closed, and only B has the client online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_session_client_reconnecting_elsewhere_closes_the_first_connection() {
    let dir = temp_dir("claim-clean");
    let nodes = three_nodes(&dir).await;
    let mut first = Client::simple(nodes[0].addr, "clean-twice").await;
    assert_eq!(online_on(&nodes, "clean-twice"), vec![0]);
    let (_second, connack) = Client::connect(common::options(nodes[1].addr, "clean-twice")).await;
    assert!(!connack.session_present);
    assert_eq!(
        online_on(&nodes, "clean-twice"),
        vec![1],
        "one live connection"
    );
    let closed = first.closed().await;
    assert!(closed.contains("connection error"), "closed on A: {closed}");
    for node in nodes {
        node.shutdown().await;
    }
}

/// Connects a 3.1.1 client with rumqttc and returns the CONNACK's return code (a refusal is
/// the event loop's `ConnectionRefused`).
async fn connect_code(addr: SocketAddr, id: &str) -> (rumqttc::ConnectReturnCode, Duration) {
    let (code, _, took) = connect_session(addr, id).await;
    (code, took)
}

/// [`connect_code`], with the CONNACK's session present flag (false when refused).
async fn connect_session(
    addr: SocketAddr,
    id: &str,
) -> (rumqttc::ConnectReturnCode, bool, Duration) {
    let started = std::time::Instant::now();
    let mut options = common::options(addr, id);
    options.set_clean_session(false);
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    // A claim may wait out a lease (5 s here): rumqttc's own 5 s would cut it short.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_connection_timeout(15);
    eventloop.set_network_options(network);
    let code = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(connack))) => {
                    return (connack.code, connack.session_present);
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return (code, false),
                Err(error) => panic!("connection error: {error}"),
            }
        }
    })
    .await
    .expect("a CONNACK");
    (code.0, code.1, started.elapsed())
}

/// Issue 16 ("Partitions"): with two of three nodes stopped, a CONNECT that needs a new claim
/// gets CONNACK return code 3 (0x88 Server unavailable) within the proposal timeout; once
/// they are back, a retry succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_without_a_quorum_is_refused_and_a_later_retry_succeeds() {
    let dir = temp_dir("claim-quorum");
    let (mut nodes, addrs) = three_nodes_at(&dir).await;
    let third = nodes.pop().expect("node 3");
    let second = nodes.pop().expect("node 2");
    second.shutdown().await;
    third.shutdown().await;
    let (code, took) = connect_code(nodes[0].addr, "lonely").await;
    assert_eq!(code, rumqttc::ConnectReturnCode::ServiceUnavailable);
    // The proposal timeout is 3 s; a little more for the CONNACK's way back.
    eprintln!("claim without a quorum refused in {took:?}");
    assert!(took < Duration::from_secs(5), "refused in {took:?}");
    assert!(nodes[0].broker.session("lonely").is_none());

    nodes.push(start_node(2, &addrs, &dir).await);
    nodes.push(start_node(3, &addrs, &dir).await);
    let deadline = tokio::time::Instant::now() + AGREE;
    loop {
        let (code, _) = connect_code(nodes[0].addr, "lonely").await;
        if code == rumqttc::ConnectReturnCode::Success {
            break;
        }
        assert_eq!(code, rumqttc::ConnectReturnCode::ServiceUnavailable);
        assert!(
            tokio::time::Instant::now() < deadline,
            "no claim after the quorum came back"
        );
    }
    for node in nodes {
        node.shutdown().await;
    }
}

/// Issue 16 ("If N1 is down ... subscriptions survive (they are replicated)"; "never two live
/// connections"): a persistent session's owner is down when its client connects to another
/// node. The claim still succeeds (two of three nodes agree), the hand-over request fails,
/// and the CONNACK waits out the silent owner's lease: session present, the durable
/// subscription rebuilt from the registry (a message published on C arrives), the queued
/// messages left in the old node's store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_owner_is_down_connects_elsewhere_with_its_subscriptions() {
    let dir = temp_dir("claim-owner-down");
    let mut nodes = three_nodes(&dir).await;
    let mut options = common::options(nodes[0].addr, "orphan");
    options.set_clean_session(false);
    let (mut client, _) = Client::connect(options).await;
    client.subscribe("orphan/#", QoS::AtLeastOnce).await;
    route_known(&nodes, "orphan/#", 1).await;
    until(
        "the durable subscription in the registry everywhere",
        || {
            nodes.iter().all(|node| {
                node.cluster
                    .node()
                    .state()
                    .session("orphan")
                    .is_some_and(|entry| entry.subscriptions.contains_key("orphan/#"))
            })
        },
    )
    .await;
    client.disconnect().await;
    let owner = nodes.remove(0);
    owner.shutdown().await;

    let (code, session_present, took) = connect_session(nodes[0].addr, "orphan").await;
    eprintln!("claim with the previous owner down: CONNACK in {took:?}");
    assert_eq!(code, rumqttc::ConnectReturnCode::Success);
    assert!(session_present, "its subscriptions, from the registry");
    // It waited out the silent owner's lease (5 s in these tests: a node cut off rather
    // than down would have closed its connections by then), within the connect timeout.
    assert!(took >= Duration::from_secs(5), "CONNACK in {took:?}");
    assert!(took < Duration::from_secs(10), "CONNACK in {took:?}");
    // Connected again (this node owns the id now, its lease held: at once).
    let mut options = common::options(nodes[0].addr, "orphan");
    options.set_clean_session(false);
    let (mut client, connack) = Client::connect(options).await;
    assert!(connack.session_present);
    assert_eq!(online_on(&nodes, "orphan"), vec![0]);
    route_known(&nodes, "orphan/#", 2).await;
    let publisher = Client::simple(nodes[1].addr, "pub-c").await;
    publisher
        .publish("orphan/ping", QoS::AtLeastOnce, false, "still subscribed")
        .await;
    assert_eq!(client.recv().await.payload, &b"still subscribed"[..]);
    for node in nodes {
        node.shutdown().await;
    }
}

/// Measures the time to CONNACK of a CONNECT that needs a claim (a client id new to the
/// cluster, proposed through Raft) and of one that does not (a persistent session's
/// reconnection to the node that owns it, which holds its lease): `cargo test -j2 -p tern-server --test cluster -- --ignored --nocapture measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_claim_latency() {
    let dir = temp_dir("claim-measure");
    let nodes = three_nodes(&dir).await;
    let rounds = 100;
    let connect_all = async |what: &str| {
        let mut times = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let started = std::time::Instant::now();
            // Persistent: a clean session's end releases its id in the registry, and its
            // next CONNECT is a new claim.
            let mut options = common::options(nodes[1].addr, &format!("measure-{i}"));
            options.set_clean_session(false);
            let (client, _) = Client::connect(options).await;
            times.push(started.elapsed());
            client.disconnect().await;
        }
        times.sort();
        eprintln!(
            "{what}: median {:?}, p90 {:?}, max {:?} ({rounds} connects)",
            times[rounds / 2],
            times[rounds * 9 / 10],
            times[rounds - 1]
        );
    };
    until("node 2 holds its lease", || {
        nodes[1].cluster.node().holds_lease(Duration::from_secs(5))
    })
    .await;
    connect_all("a claim through Raft").await;
    connect_all("a reconnection to the owning node").await;
    for node in nodes {
        node.shutdown().await;
    }
}
