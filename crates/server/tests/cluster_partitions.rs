//! Issue 16, "Partitions without root", the data plane: three in-process Tern servers with
//! every node-to-node link through a fault-injecting relay (`tern_cluster::testing`), driven
//! by rumqttc clients. QoS 1 messages published on C for a subscriber on A while the link
//! from C to A fails for a while: every acknowledged message arrives, in order, once (the
//! origin sends again what was not acknowledged; the receiver drops what it already took).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Client;
use common::cluster::{AGREE, Dir, Node, all_registered, route_known, temp_dir, until};
use rumqttc::{Event, Packet, QoS};
use tern_cluster::testing::{Mode, Network};
use tern_server::cluster::{ClusterConfig, RelayMap};
use tern_server::{Durability, Server, ServerConfig};

async fn start_node(id: u64, net: &Network, dir: &Dir) -> Node {
    let mut config = ServerConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        durability: Durability::Process,
        data_dir: dir.0.join(format!("node{id}")),
        ..ServerConfig::default()
    };
    config.cluster = Some(ClusterConfig {
        node_id: id,
        bind: net.addr(id).to_string(),
        advertise: None,
        seeds: net.seeds(id),
        mqtt_addrs: Vec::new(),
        heartbeat_ms: 50,
        election_timeout_ms: 300,
        proposal_timeout_ms: 3_000,
        lease_ms: 20_000,
        outbox_max_messages: 100_000,
        outbox_max_bytes: 256 << 20,
        relay: Some(RelayMap(net.addr_map(id))),
        snapshot_every: None,
        tls: None,
    });
    net.release(id);
    Node::run(Server::bind(config).await.expect("bind"))
}

async fn three_nodes(dir: &Dir) -> (Network, Vec<Node>) {
    let net = Network::start(3).await.unwrap();
    let mut nodes = Vec::new();
    for id in net.ids() {
        nodes.push(start_node(id, &net, dir).await);
    }
    all_registered(&nodes).await;
    (net, nodes)
}

/// Waits until every node holds the same replicated state (routes, retained messages,
/// sessions): issue 16, "equal route and retained tables everywhere" after healing.
async fn states_equal(nodes: &[Node]) {
    until("every node's cluster state equal", || {
        let first = nodes[0].cluster.node().state().clone();
        nodes
            .iter()
            .all(|node| *node.cluster.node().state() == first)
    })
    .await;
}

/// Publishes `range` at QoS 1 on `topic`, each once its predecessor's PUBACK came (so each
/// counted message was acknowledged to its publisher); returns the longest wait for a PUBACK.
async fn publish_acknowledged(
    publisher: &mut Client,
    topic: &str,
    range: std::ops::Range<u32>,
) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in range {
        let started = Instant::now();
        publisher
            .publish(topic, QoS::AtLeastOnce, false, format!("{i}"))
            .await;
        publisher
            .next_matching(|event| {
                matches!(event, Event::Incoming(Packet::PubAck(_))).then_some(())
            })
            .await
            .expect("PUBACK");
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// Receives until `count` messages came, then checks for a straggler; returns the payloads.
async fn receive_all(subscriber: &mut Client, count: usize) -> Vec<u32> {
    let mut received = Vec::new();
    while received.len() < count {
        let message = subscriber
            .next_matching_within(AGREE, |event| match event {
                Event::Incoming(Packet::Publish(publish)) => Some(publish.clone()),
                _ => None,
            })
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "{error} after {} of {count} messages: {received:?}",
                    received.len()
                )
            });
        received.push(
            std::str::from_utf8(&message.payload)
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    let extra = subscriber
        .next_matching_within(Duration::from_millis(500), |event| match event {
            Event::Incoming(Packet::Publish(publish)) => Some(publish.clone()),
            _ => None,
        })
        .await;
    assert!(
        extra.is_err(),
        "a message twice: {extra:?} after {received:?}"
    );
    received
}

/// Subscribe on A at QoS 1, publish on C; the link C dials to A fails in `mode` for a while,
/// then heals. Publishers are not held up; every acknowledged message reaches A once, in
/// order; C's outbox empties.
async fn messages_cross_a_failing_link(name: &str, mode: Mode, fault: Duration) {
    let dir = temp_dir(name);
    let (net, nodes) = three_nodes(&dir).await;
    let mut subscriber = Client::simple(nodes[0].addr, "sub-a").await;
    subscriber.subscribe("data/#", QoS::AtLeastOnce).await;
    route_known(&nodes, "data/#", 1).await;
    let mut publisher = Client::simple(nodes[2].addr, "pub-c").await;
    let relay = net.relay(3, 1);

    let before = publish_acknowledged(&mut publisher, "data/x", 0..20).await;
    let accepted_before = relay.accepted();
    net.set(3, 1, mode);
    let during = publish_acknowledged(&mut publisher, "data/x", 20..40).await;
    tokio::time::sleep(fault).await;
    let pending = nodes[2].cluster.forward_pending();
    let accepted_during = relay.accepted() - accepted_before;
    net.set(3, 1, Mode::Pass);
    let after = publish_acknowledged(&mut publisher, "data/x", 40..60).await;

    let received = receive_all(&mut subscriber, 60).await;
    assert_eq!(
        received,
        (0..60).collect::<Vec<u32>>(),
        "all, in order, once"
    );
    until("C's outbox for A empty", || {
        nodes[2].cluster.forward_pending() == 0
    })
    .await;
    eprintln!(
        "{name}: slowest PUBACK before/during/after the fault: {before:?}/{during:?}/{after:?}; \
         waiting in C's outbox during the fault: {pending}; dials of C->A during the fault: \
         {accepted_during}, after healing: {}; not forwarded: {}",
        relay.accepted() - accepted_before - accepted_during,
        nodes[2].cluster.not_forwarded()
    );
    assert_eq!(nodes[2].cluster.not_forwarded(), 0);
    states_equal(&nodes).await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// The link from C to A reset (connections closed, new ones refused) for 1.5 s: what C had
/// not been acknowledged is sent again once A can be dialled, and A drops what it already
/// delivered (issue 16: at least once per link, de-duplicated on (origin, sequence); no
/// acknowledged QoS 1 message lost [MQTT-4.3.2], order per publisher [MQTT-4.6.0-5]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_cross_a_dropped_link_once_and_in_order() {
    messages_cross_a_failing_link("drop", Mode::Drop, Duration::from_millis(1500)).await;
}

/// The same with the link in a black hole for 3 s: connections hang, nothing is forwarded.
/// With no acknowledgement for `ACK_TIMEOUT` (2 s) C drops the connection and dials again
/// (held too); after healing the held bytes of every connection flow, so A gets copies and
/// delivers each message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_cross_a_black_holed_link_once_and_in_order() {
    messages_cross_a_failing_link("blackhole", Mode::Blackhole, Duration::from_secs(3)).await;
}

/// The same with the link slow (40 ms each way, past the Raft heartbeat of 50 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_cross_a_slow_link_once_and_in_order() {
    messages_cross_a_failing_link(
        "delay",
        Mode::Delay(Duration::from_millis(40)),
        Duration::from_millis(1500),
    )
    .await;
}

/// Publisher and subscriber on the two followers (which send each other no Raft traffic);
/// the live connection between them goes silent for good (a middlebox forgot it) while new
/// connections would pass. The origin must notice that nothing is acknowledged, dial again
/// and send again: every acknowledged message arrives, once, in order (issue 16: no
/// acknowledged QoS 1 message lost for sessions whose owner stayed up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_get_past_a_connection_gone_silent() {
    let dir = temp_dir("silent");
    let (net, nodes) = three_nodes(&dir).await;
    let mut leader = None;
    until("a leader every node knows", || {
        let leaders: std::collections::BTreeSet<Option<u64>> = nodes
            .iter()
            .map(|node| node.cluster.status().leader)
            .collect();
        leader = leaders.into_iter().next().flatten();
        leader.is_some()
            && nodes
                .iter()
                .all(|node| node.cluster.status().leader == leader)
    })
    .await;
    let followers: Vec<u64> = [1u64, 2, 3]
        .into_iter()
        .filter(|id| Some(*id) != leader)
        .collect();
    let (to, from) = (followers[0], followers[1]);
    let node = |id: u64| &nodes[id as usize - 1];
    let mut subscriber = Client::simple(node(to).addr, "sub").await;
    subscriber.subscribe("data/#", QoS::AtLeastOnce).await;
    route_known(&nodes, "data/#", to).await;
    let mut publisher = Client::simple(node(from).addr, "pub").await;

    publish_acknowledged(&mut publisher, "data/x", 0..10).await;
    assert_eq!(
        receive_all(&mut subscriber, 10).await,
        (0..10).collect::<Vec<u32>>()
    );
    let relay = net.relay(from, to);
    let dials = relay.accepted();
    relay.forget_connections();
    publish_acknowledged(&mut publisher, "data/x", 10..30).await;
    let started = Instant::now();
    let received = receive_all(&mut subscriber, 20).await;
    assert_eq!(
        received,
        (10..30).collect::<Vec<u32>>(),
        "all, in order, once"
    );
    eprintln!(
        "silent connection: delivered {:?} after the last PUBACK; dials since: {}",
        started.elapsed(),
        relay.accepted() - dials
    );
    for node in nodes {
        node.shutdown().await;
    }
}

/// A node cut off from both others (every link reset) for 2 s while C publishes to
/// subscribers on A (cut off) and B: B gets every message at once; A gets them all after
/// healing, once and in order; A's own clients keep working meanwhile (issue 16: "existing
/// sessions keep working along known routes"); afterwards every node holds the same routes
/// and retained messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_node_gets_its_messages_after_healing_and_serves_its_clients_meanwhile() {
    let dir = temp_dir("isolated");
    let (net, nodes) = three_nodes(&dir).await;
    let mut far = Client::simple(nodes[0].addr, "sub-a").await;
    far.subscribe("data/#", QoS::AtLeastOnce).await;
    let mut near = Client::simple(nodes[1].addr, "sub-b").await;
    near.subscribe("data/#", QoS::AtLeastOnce).await;
    let mut local = Client::simple(nodes[0].addr, "local-a").await;
    local.subscribe("local/#", QoS::AtLeastOnce).await;
    route_known(&nodes, "data/#", 1).await;
    route_known(&nodes, "data/#", 2).await;
    let mut publisher = Client::simple(nodes[2].addr, "pub-c").await;
    let mut local_publisher = Client::simple(nodes[0].addr, "pub-a").await;
    // Connected before the cut: a CONNECT on a cut-off node needs a claim it cannot commit.
    let mut fresh = Client::simple(nodes[0].addr, "fresh-a").await;

    publish_acknowledged(&mut publisher, "data/x", 0..10).await;
    net.isolate(1);
    publish_acknowledged(&mut publisher, "data/x", 10..30).await;
    assert_eq!(
        receive_all(&mut near, 30).await,
        (0..30).collect::<Vec<u32>>(),
        "the connected side gets everything at once"
    );
    // On the cut-off node, a client's traffic to a local subscriber goes on.
    publish_acknowledged(&mut local_publisher, "local/y", 0..5).await;
    assert_eq!(
        receive_all(&mut local, 5).await,
        (0..5).collect::<Vec<u32>>()
    );
    // A new subscription there needs a new route, which the cut-off node cannot commit:
    // SUBACK 0x80 within the proposal timeout, retryable. (Another client: waiting for a
    // SUBACK passes over the PUBLISHes before it.)
    let started = Instant::now();
    let suback = fresh.subscribe("fresh/#", QoS::AtLeastOnce).await;
    assert_eq!(
        suback.return_codes,
        vec![rumqttc::SubscribeReasonCode::Failure],
        "refused after {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    net.heal();
    publish_acknowledged(&mut publisher, "data/x", 30..40).await;

    let received = receive_all(&mut far, 40).await;
    assert_eq!(
        received,
        (0..40).collect::<Vec<u32>>(),
        "all, in order, once"
    );
    assert_eq!(
        receive_all(&mut near, 10).await,
        (30..40).collect::<Vec<u32>>()
    );
    // Healed, the same SUBSCRIBE succeeds (retried until the node is back in its quorum).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let suback = fresh.subscribe("fresh/#", QoS::AtLeastOnce).await;
        if suback.return_codes != vec![rumqttc::SubscribeReasonCode::Failure] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the route was not committed after healing"
        );
    }
    route_known(&nodes, "fresh/#", 1).await;
    publish_acknowledged(&mut publisher, "fresh/z", 0..1).await;
    assert_eq!(receive_all(&mut fresh, 1).await, vec![0]);
    until("C's outbox empty", || {
        nodes[2].cluster.forward_pending() == 0
    })
    .await;
    states_equal(&nodes).await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// The payloads of the PUBLISHes `client` receives until its connection ends or nothing
/// comes for `quiet`, each with its DUP flag.
async fn collect(client: &mut Client, quiet: Duration) -> Vec<(u32, bool)> {
    let mut got = Vec::new();
    while let Ok((payload, dup)) = client
        .next_matching_within(quiet, |event| match event {
            Event::Incoming(Packet::Publish(publish)) => {
                Some((publish.payload.clone(), publish.dup))
            }
            _ => None,
        })
        .await
    {
        got.push((std::str::from_utf8(&payload).unwrap().parse().unwrap(), dup));
    }
    got
}

/// Receives on `client` until the message `wanted` came (up to the time to agree: a loaded
/// machine may take longer than a quiet window), then until it is quiet for 500 ms; what
/// came, in order (a connection error ends it too).
async fn until_came(client: &mut Client, wanted: u32) -> Vec<(u32, bool)> {
    let deadline = Instant::now() + AGREE;
    let mut got = Vec::new();
    while !got.iter().any(|(i, _)| *i == wanted) && Instant::now() < deadline {
        let more = collect(client, Duration::from_millis(500)).await;
        got.extend(more);
    }
    got.extend(collect(client, Duration::from_millis(500)).await);
    got
}

/// The client `mover` connects to `node`, resuming its session there (session present
/// [MQTT-3.2.2-2]).
async fn resume(node: &Node) -> Client {
    let mut options = common::options(node.addr, "mover");
    options.set_clean_session(false);
    let (client, connack) = Client::connect(options).await;
    assert!(connack.session_present, "the session moved with its client");
    client
}

/// Waits until `node`'s registry holds durable subscriptions of `client_id`.
async fn durable_in_registry(node: &Node, client_id: &str) {
    until("the durable subscription in the registry", || {
        node.cluster
            .node()
            .state()
            .session(client_id)
            .is_some_and(|entry| !entry.subscriptions.is_empty())
    })
    .await;
}

/// The messages of `got` that came a second time as new (not a resend with DUP).
fn new_twice(got: &[(u32, bool)]) -> Vec<u32> {
    let mut fresh = std::collections::BTreeSet::new();
    got.iter()
        .filter(|(i, dup)| !dup && !fresh.insert(*i))
        .map(|(i, _)| *i)
        .collect()
}

/// Receives on `client` into `got` until every message of `0..count` came (or the time to
/// agree ran out: then fails, naming the missing ones, with `late` for context).
async fn receive_each(
    client: &mut Client,
    got: &mut Vec<(u32, bool)>,
    count: u32,
    late: impl Fn() -> (u64, usize),
) {
    let deadline = Instant::now() + AGREE;
    loop {
        let mut seen: std::collections::BTreeSet<u32> = got.iter().map(|(i, _)| *i).collect();
        if (0..count).all(|i| seen.contains(&i)) || Instant::now() > deadline {
            let missing: Vec<u32> = (0..count).filter(|i| !seen.remove(i)).collect();
            assert!(
                missing.is_empty(),
                "{} of {count} lost: {missing:?} (late copies sent, addresses: {:?})",
                missing.len(),
                late()
            );
            return;
        }
        got.extend(collect(client, Duration::from_millis(500)).await);
    }
}

/// Issue 16, "closing the move window" (docs/architecture.md): a persistent session moves
/// from A to B while C publishes to it at QoS 1, with the link from C to A slow (250 ms each
/// way), so that copies C routed to A before B's routes reached its table are still on their
/// way when the client reconnects to B. A closes the client's connection first; B then makes
/// a shell of the session whose routes are committed before it asks A for the session; A
/// flushes what the other nodes routed to it before then into the session before handing
/// it over; B puts the handed-over messages first and drops its shell's copies of them.
/// Every message acknowledged to the
/// publisher reaches the client, on its old connection or its new one [MQTT-4.3.2-2], and
/// none comes twice on the new one but a resend with DUP [MQTT-4.4.0-1].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moving_under_traffic_loses_nothing_issue_16() {
    // Messages before the move, and after it: the whole run stays below the session queue
    // limit (1 000), so what waits for the client while it moves fits.
    const BEFORE: u32 = 200;
    const AFTER: u32 = 150;
    let dir = temp_dir("move");
    let (net, nodes) = three_nodes(&dir).await;
    let mut options = common::options(nodes[0].addr, "mover");
    options.set_clean_session(false);
    let (mut old, _) = Client::connect(options).await;
    old.subscribe("move/#", QoS::AtLeastOnce).await;
    route_known(&nodes, "move/#", 1).await;
    durable_in_registry(&nodes[1], "mover").await;
    net.set(3, 1, Mode::Delay(Duration::from_millis(250)));
    let published = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    // Set once the client is connected to B: the publisher stops `AFTER` messages later.
    let stop_at = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(u32::MAX));
    let publisher = {
        let (addr, published, stop_at) = (nodes[2].addr, published.clone(), stop_at.clone());
        tokio::spawn(async move {
            let mut publisher = Client::simple(addr, "pub-c").await;
            let mut i = 0;
            while i < stop_at.load(std::sync::atomic::Ordering::Relaxed) && i < 900 {
                // Paced, so that publishing goes on through the move and after it.
                tokio::time::sleep(Duration::from_millis(2)).await;
                publish_acknowledged(&mut publisher, "move/x", i..i + 1).await;
                i += 1;
                published.store(i, std::sync::atomic::Ordering::Relaxed);
            }
            (publisher, i)
        })
    };
    let old_side = tokio::spawn(async move { collect(&mut old, AGREE).await });
    until("the first messages published", || {
        published.load(std::sync::atomic::Ordering::Relaxed) >= BEFORE
    })
    .await;
    let mut new = resume(&nodes[1]).await;
    let moved_at = published.load(std::sync::atomic::Ordering::Relaxed);
    stop_at.store(moved_at + AFTER, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        nodes[0].cluster.flushed_hand_overs(),
        (1, 0),
        "A handed the session over after a whole flush"
    );
    let (_publisher, count) = publisher.await.unwrap();
    assert!(
        count >= moved_at + AFTER,
        "published {count}, moved after {moved_at}: the publisher stopped early"
    );
    let on_old = old_side.await.unwrap();
    let mut on_new = Vec::new();
    let deadline = Instant::now() + AGREE;
    loop {
        let mut seen: std::collections::BTreeSet<u32> =
            on_old.iter().chain(&on_new).map(|(i, _)| *i).collect();
        if (0..count).all(|i| seen.contains(&i)) || Instant::now() > deadline {
            let missing: Vec<u32> = (0..count).filter(|i| !seen.remove(i)).collect();
            assert!(
                missing.is_empty(),
                "moved after {moved_at}: {} of {count} lost: {missing:?}",
                missing.len()
            );
            break;
        }
        on_new.extend(collect(&mut new, Duration::from_millis(500)).await);
    }
    let doubled = new_twice(&on_new);
    assert!(doubled.is_empty(), "sent twice on B: {doubled:?}");
    // A's connection closed before B's shell was made: what reached the client on A comes
    // again on B only as a resend of an unacknowledged message (DUP), never as a new one
    // (for QoS 2 that would be a second delivery).
    let again: Vec<u32> = on_new
        .iter()
        .filter(|(i, dup)| !dup && on_old.iter().any(|(j, _)| i == j))
        .map(|(i, _)| *i)
        .collect();
    assert!(
        again.is_empty(),
        "delivered on A, then as new on B: {again:?}"
    );
    let both = on_old
        .iter()
        .filter(|(i, _)| on_new.iter().any(|(j, _)| i == j))
        .count();
    eprintln!(
        "moved after {moved_at} of {count}: {} on A, {} on B, {both} on both (QoS 1 resends)",
        on_old.len(),
        on_new.len()
    );
    net.set(3, 1, Mode::Pass);
    for node in nodes {
        node.shutdown().await;
    }
}

/// Issue 16, closing the move window when a node does not answer the flush: the link from C
/// to A is cut while C publishes for a persistent session on A, so C's copies wait in its
/// outbox for A. (Another client on B subscribes to the same topics: B routes them too, to
/// it alone, before the session moves.) The client moves to B: A's flush cannot hear from C,
/// so A hands the session over keeping a forwarding address for it. When the link heals,
/// C's old copies reach A, find no session there and go on to B as late copies (C planned
/// them before the session's routes reached every table): every message acknowledged to
/// the publisher reaches the client on B [MQTT-4.3.2-2], none twice as new [MQTT-4.4.0-1],
/// and the address ends once C has answered a flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_copies_of_a_node_that_missed_the_flush_follow_the_session_issue_16() {
    late_copies(false).await;
}

/// [`late_copies_of_a_node_that_missed_the_flush_follow_the_session_issue_16`] with the link
/// from C to B cut too. That link heals first: C's copies for the other client on B reach B
/// once the session is there, and the client takes and acknowledges each. Then the link
/// to A heals, and A's late copies of the same messages come: the session drops them, each
/// message is delivered once [MQTT-4.3.3-2].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_copy_and_a_direct_copy_make_one_delivery_issue_16() {
    late_copies(true).await;
}

/// Three nodes and the clients of a move from A to B while C publishes, all at `qos`: a
/// client on B subscribed to `{prefix}/+` (B routes those topics for it), the persistent
/// session `mover` on A subscribed to `{prefix}/#` (its route everywhere, its durable
/// subscription in the registry), and a publisher on C.
struct MoveScene {
    dir: Dir,
    net: Network,
    nodes: Vec<Node>,
    /// The indexes of A, B and C in `nodes`.
    roles: (usize, usize, usize),
    watcher: Client,
    old: Client,
    publisher: Client,
}

async fn move_scene(prefix: &str, qos: QoS) -> MoveScene {
    let dir = temp_dir(prefix);
    let (net, nodes) = three_nodes(&dir).await;
    // The roles: C is not the Raft leader (cut off from A or B, it would leave that node
    // without the log until a new election, and the move waiting for it).
    until("a leader", || nodes[0].cluster.status().leader.is_some()).await;
    let id = |index: usize| nodes[index].cluster.node().id();
    let (a, b, c) = if nodes[0].cluster.status().leader == Some(id(2)) {
        (1, 2, 0)
    } else {
        (0, 1, 2)
    };
    let mut watcher = Client::simple(nodes[b].addr, "watcher").await;
    watcher.subscribe(&format!("{prefix}/+"), qos).await;
    route_known(&nodes, &format!("{prefix}/+"), id(b)).await;
    let mut options = common::options(nodes[a].addr, "mover");
    options.set_clean_session(false);
    let (mut old, _) = Client::connect(options).await;
    old.subscribe(&format!("{prefix}/#"), qos).await;
    route_known(&nodes, &format!("{prefix}/#"), id(a)).await;
    durable_in_registry(&nodes[b], "mover").await;
    // Connected first: its claim needs the Raft leader, which may be A.
    let publisher = Client::simple(nodes[c].addr, "pub-c").await;
    MoveScene {
        dir,
        net,
        nodes,
        roles: (a, b, c),
        watcher,
        old,
        publisher,
    }
}

/// The late-copy scenario; with `cut_to_b`, the link from C to B is cut as well.
async fn late_copies(cut_to_b: bool) {
    const WHILE_CUT: u32 = 40;
    const AFTER: u32 = 20;
    let MoveScene {
        dir: _dir,
        net,
        nodes,
        roles: (a, b, c),
        mut watcher,
        old,
        mut publisher,
    } = move_scene("late", QoS::AtLeastOnce).await;
    let id = |index: usize| nodes[index].cluster.node().id();
    net.set(id(c), id(a), Mode::Blackhole);
    if cut_to_b {
        net.set(id(c), id(b), Mode::Blackhole);
    }
    publish_acknowledged(&mut publisher, "late/x", 0..WHILE_CUT).await;
    let mut new = resume(&nodes[b]).await;
    assert_eq!(
        nodes[a].cluster.flushed_hand_overs(),
        (0, 1),
        "C could not answer A's flush"
    );
    assert_eq!(
        nodes[a].cluster.late_copies(),
        (0, 1),
        "A keeps a forwarding address for the session"
    );
    drop(old);
    // Published once C knows B's route: straight to B.
    route_known(std::slice::from_ref(&nodes[c]), "late/#", id(b)).await;
    publish_acknowledged(&mut publisher, "late/x", WHILE_CUT..WHILE_CUT + AFTER).await;
    let count = WHILE_CUT + AFTER;
    let mut on_new = Vec::new();
    if cut_to_b {
        // C's own copies first, each taken and acknowledged by the client; then A's late
        // copies of the same messages come.
        net.set(id(c), id(b), Mode::Pass);
        receive_each(&mut new, &mut on_new, count, || {
            nodes[a].cluster.late_copies()
        })
        .await;
    }
    net.set(id(c), id(a), Mode::Pass);
    if cut_to_b {
        until("A sent its late copies", || {
            nodes[a].cluster.late_copies().0 >= u64::from(WHILE_CUT)
        })
        .await;
    }
    receive_each(&mut new, &mut on_new, count, || {
        nodes[a].cluster.late_copies()
    })
    .await;
    // A second copy would come within a quiet moment.
    on_new.extend(collect(&mut new, Duration::from_millis(500)).await);
    let doubled = new_twice(&on_new);
    assert!(doubled.is_empty(), "sent twice on B: {doubled:?}");
    let mut watched: Vec<u32> = collect(&mut watcher, Duration::from_millis(500))
        .await
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    watched.sort_unstable();
    assert_eq!(
        watched,
        (0..count).collect::<Vec<_>>(),
        "the other client on B got each once (no late copy for it)"
    );
    // Each of C's old copies went on to B (any published before C's table had B's route
    // too).
    let sent = nodes[a].cluster.late_copies().0;
    assert!(
        (u64::from(WHILE_CUT)..=u64::from(count)).contains(&sent),
        "{sent} late copies"
    );
    until("A's forwarding address ended (C flushed)", || {
        nodes[a].cluster.late_copies().1 == 0
    })
    .await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// Issue 16, "no QoS 2 message doubled" when a session moves while a copy of its messages
/// is slow to reach the new owner through a route that node had already (another client on
/// B subscribes to the same topics). The link from C to B is cut while C publishes at QoS 2
/// for a persistent session on A; the client receives and completes each on A, then moves
/// to B; the link heals, and C's copies reach B after the session did. A's flush was whole:
/// every copy C planned before the session's routes reached every table reached A before it
/// handed the session over, so B drops its own copies of them: none is delivered to the
/// client a second time [MQTT-4.3.3-2]; the other client gets each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_completed_on_the_old_node_is_not_delivered_again_on_the_new_one_issue_16() {
    completed_on_the_old_node(false).await;
}

/// [`a_message_completed_on_the_old_node_is_not_delivered_again_on_the_new_one_issue_16`]
/// with the link from C to A cut too once the client completed the messages, and one more
/// message published: it waits in C's outbox to A, so C cannot answer A's flush, and A
/// hands the session over with a forwarding address, naming the last of C's messages that
/// reached it. C's copies cross each link in order, so each one C planned before (with A's
/// routes) reached A too: B drops its own copies of them, none is delivered twice
/// [MQTT-4.3.3-2]. B's copy of the last message is the client's (A's late copy of it, once
/// that link heals, is dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_completed_on_the_old_node_is_not_delivered_again_when_its_origin_missed_the_flush_issue_16()
 {
    completed_on_the_old_node(true).await;
}

/// Publishes `numbers` to `topic` at QoS 2, each completed (PUBCOMP) before the next.
async fn publish_completed(publisher: &mut Client, topic: &str, numbers: std::ops::Range<u32>) {
    for i in numbers {
        publisher
            .publish(topic, QoS::ExactlyOnce, false, format!("{i}"))
            .await;
        publisher
            .next_matching(|event| {
                matches!(event, Event::Incoming(Packet::PubComp(_))).then_some(())
            })
            .await
            .expect("PUBCOMP");
    }
}

/// The scenario of a message completed on the old node; with `missed_flush`, C cannot
/// answer A's flush.
async fn completed_on_the_old_node(missed_flush: bool) {
    const COUNT: u32 = 30;
    let MoveScene {
        dir: _dir,
        net,
        nodes,
        roles: (a, b, c),
        mut watcher,
        mut old,
        mut publisher,
    } = move_scene("taken", QoS::ExactlyOnce).await;
    let id = |index: usize| nodes[index].cluster.node().id();
    net.set(id(c), id(b), Mode::Blackhole);
    publish_completed(&mut publisher, "taken/x", 0..COUNT).await;
    // The client on A takes each message and completes its flow (PUBCOMP sent).
    let (mut on_old, mut completed) = (Vec::new(), 0);
    while on_old.len() < COUNT as usize || completed < COUNT {
        let event = old
            .next_matching(|event| match event {
                Event::Incoming(Packet::Publish(publish)) => Some(Some(publish.clone())),
                Event::Outgoing(rumqttc::Outgoing::PubComp(_)) => Some(None),
                _ => None,
            })
            .await
            .unwrap_or_else(|error| panic!("{error}: {} taken on A", on_old.len()));
        match event {
            Some(publish) => {
                on_old.push(std::str::from_utf8(&publish.payload).unwrap().to_owned());
            }
            None => completed += 1,
        }
    }
    // rumqttc reports a PUBCOMP as sent when it answers the PUBREL, before A reads it: a
    // flow A has not seen completed moves with the session, and B sends its PUBREL again
    // [MQTT-4.4.0-1], which a new rumqttc client, knowing no such flow, takes for a protocol
    // error and drops its connection. The premise is that A saw every flow completed.
    until("A saw every PUBCOMP", || {
        nodes[a]
            .broker
            .session_report("mover")
            .is_some_and(|session| session.inflight == 0 && session.queued == 0)
    })
    .await;
    // With `missed_flush`, one more message waits in C's outbox to A: A's flush cannot get
    // it, and B's copy of it is the client's (A never had it).
    let extra = u32::from(missed_flush);
    if missed_flush {
        net.set(id(c), id(a), Mode::Blackhole);
        publish_completed(&mut publisher, "taken/x", COUNT..COUNT + 1).await;
    }
    let mut new = resume(&nodes[b]).await;
    if missed_flush {
        assert_eq!(
            nodes[a].cluster.flushed_hand_overs(),
            (0, 1),
            "C could not answer A's flush"
        );
        assert_eq!(
            nodes[a].cluster.late_copies(),
            (0, 1),
            "A keeps a forwarding address for the session"
        );
    } else {
        assert_eq!(
            nodes[a].cluster.flushed_hand_overs(),
            (1, 0),
            "every node answered A's flush"
        );
    }
    drop(old);
    // C's copies to B are still on their way: they reach B after the session did.
    assert!(
        collect(&mut watcher, Duration::from_millis(200))
            .await
            .is_empty(),
        "the link from C to B let copies through"
    );
    net.set(id(c), id(b), Mode::Pass);
    let mut watched = Vec::new();
    receive_each(&mut watcher, &mut watched, COUNT + extra, || (0, 0)).await;
    if missed_flush {
        assert_eq!(
            until_came(&mut new, COUNT).await,
            vec![(COUNT, false)],
            "C's messages that reached A delivered again on B, or the one that did not lost"
        );
        // A's late copy of the extra message: the session had it.
        net.set(id(c), id(a), Mode::Pass);
        until("A's forwarding address ended (C flushed)", || {
            nodes[a].cluster.late_copies().1 == 0
        })
        .await;
        assert_eq!(
            nodes[a].cluster.late_copies().0,
            1,
            "A sent its copy of the extra message on"
        );
    }
    // C's copies reached B (the other client has them all): a second copy for the session
    // would come before a message published now.
    let last = COUNT + extra;
    publisher
        .publish("taken/x", QoS::ExactlyOnce, false, format!("{last}"))
        .await;
    let again = until_came(&mut new, last).await;
    assert_eq!(
        again,
        vec![(last, false)],
        "completed on A, delivered again on B (or the new message not delivered)"
    );
    assert_eq!(
        watched.len(),
        (COUNT + extra) as usize,
        "once each: {watched:?}"
    );
    assert_eq!(
        nodes[b].broker.metrics().snapshot().second_copies_dropped,
        u64::from(COUNT + extra),
        "B counts the second copies it dropped"
    );
    for node in nodes {
        node.shutdown().await;
    }
}
