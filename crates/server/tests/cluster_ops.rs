//! Issue 16, "Operating it": the cluster through the admin API and `/metrics`, on in-process
//! clusters of Tern nodes on loopback (each with its own admin listener): every node reports
//! the same leader and voters; a node started apart joins through `POST
//! /api/v1/cluster/join` and leaves through `POST /api/v1/cluster/leave`; the metrics carry
//! the cluster's lines.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Client;
use common::cluster::{Dir, free_addr, spawn_server, temp_dir};
use rumqttc::QoS;
use serde_json::{Value, json};
use tern_server::cluster::ClusterConfig;
use tern_server::{AdminConfig, Durability, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// How long the cluster may take to agree on something (a leader, a member).
const AGREE: Duration = Duration::from_secs(20);

struct Node {
    id: u64,
    mqtt: SocketAddr,
    cluster_addr: SocketAddr,
    admin: SocketAddr,
    token: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(8), self.task).await;
    }

    /// One admin API call; the status and the JSON answer (`null` when empty).
    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = http(self.admin, method, path, Some(&self.token), body).await;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    async fn status(&self) -> Value {
        let (status, value) = self.api("GET", "/api/v1/cluster", None).await;
        assert_eq!(
            status, 200,
            "GET /api/v1/cluster on node {}: {value}",
            self.id
        );
        value
    }

    async fn metrics(&self) -> String {
        let (status, text) = http(self.admin, "GET", "/metrics", None, None).await;
        assert_eq!(status, 200);
        text
    }
}

/// A cluster address whose port the node picks (no race with other tests for a free port).
fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// One HTTP/1.1 request with an optional JSON body; the status and the body (chunked
/// answers are not expected: axum sends a length for JSON).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}connection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Starts node `id` with its cluster links on `cluster_addr`, the given seeds and an admin
/// listener on 127.0.0.1 port 0 (its token generated into its data directory).
async fn start_node(id: u64, cluster_addr: SocketAddr, seeds: Vec<String>, dir: &Dir) -> Node {
    let cluster = ClusterConfig {
        node_id: id,
        bind: cluster_addr.to_string(),
        advertise: None,
        seeds,
        mqtt_addrs: Vec::new(),
        heartbeat_ms: 50,
        election_timeout_ms: 300,
        proposal_timeout_ms: 3_000,
        lease_ms: 5_000,
        outbox_max_messages: 100_000,
        outbox_max_bytes: 256 << 20,
        relay: None,
        snapshot_every: None,
        tls: None,
    };
    start_server(id, cluster_addr, Some(cluster), dir).await
}

/// A server with an admin listener, in a cluster or not.
async fn start_server(
    id: u64,
    cluster_addr: SocketAddr,
    cluster: Option<ClusterConfig>,
    dir: &Dir,
) -> Node {
    let data_dir = dir.0.join(format!("node{id}"));
    let mut config = ServerConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        durability: Durability::Process,
        data_dir: data_dir.clone(),
        admin: AdminConfig {
            bind: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..AdminConfig::default()
        },
        ..ServerConfig::default()
    };
    config.cluster = cluster;
    let server = Server::bind(config).await.expect("bind");
    // Port 0 resolved: the address the node advertises.
    let cluster_addr = server
        .cluster()
        .and_then(|c| c.node().advertise().parse().ok())
        .unwrap_or(cluster_addr);
    let mqtt = server.local_addrs()[0];
    let admin = server.admin_addr().expect("admin listener");
    let token = std::fs::read_to_string(data_dir.join("admin.token"))
        .expect("the generated admin token")
        .trim()
        .to_owned();
    let (stop, task) = spawn_server(server);
    Node {
        id,
        mqtt,
        cluster_addr,
        admin,
        token,
        stop: Some(stop),
        task,
    }
}

/// Three nodes seeded with each other, once each answers with three voters and a leader.
async fn three_nodes(dir: &Dir) -> Vec<Node> {
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for (i, &addr) in addrs.iter().enumerate() {
        let seeds = addrs
            .iter()
            .filter(|other| **other != addr)
            .map(ToString::to_string)
            .collect();
        nodes.push(start_node(i as u64 + 1, addr, seeds, dir).await);
    }
    for node in &nodes {
        until_status(node, "three voters and a leader", |s| {
            s["voters"] == json!([1, 2, 3]) && !s["leader"].is_null()
        })
        .await;
    }
    nodes
}

/// Polls `node`'s `GET /api/v1/cluster` until `check` holds; the status that satisfied it.
async fn until_status(node: &Node, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + AGREE;
    loop {
        let (code, status) = node.api("GET", "/api/v1/cluster", None).await;
        if code == 200 && check(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {}: timed out waiting for {what}: {status}",
            node.id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the sample `line` (name with labels) in a metrics text, if present.
fn sample(metrics: &str, line: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

/// Issue 16, "the cluster's state in metrics and the admin API": `GET /api/v1/cluster`
/// answers on every node with the same leader, voters and nodes (their cluster and MQTT
/// addresses, links up); `/metrics` has one leader among the nodes, the members, the links
/// per peer, and counts the messages forwarded from C to a subscriber on A. A node without
/// `[cluster]` answers 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reports_the_same_cluster_in_the_api_and_metrics() {
    let dir = temp_dir("status");
    let nodes = three_nodes(&dir).await;
    // A node dials the nodes it sends to: the leader every follower (Raft), a follower the
    // leader (its proposals); followers dial each other only to forward messages.
    let leader = nodes[0].status().await["leader"].clone();
    let mut statuses = Vec::new();
    for node in &nodes {
        statuses.push(
            until_status(node, "every node registered, links to the leader up", |s| {
                s["nodes"].as_array().is_some_and(|listed| {
                    listed.len() == 3
                        && listed.iter().all(|n| {
                            let registered =
                                n["mqtt_addrs"].as_array().is_some_and(|a| !a.is_empty());
                            let linked = n["linked"] == json!(true)
                                || (s["node_id"] != leader && n["id"] != leader);
                            registered && linked
                        })
                })
            })
            .await,
        );
    }
    for (node, status) in nodes.iter().zip(&statuses) {
        assert_eq!(status["node_id"], node.id);
        assert_eq!(status["leader"], leader, "node {}: {status}", node.id);
        assert_eq!(status["voters"], json!([1, 2, 3]));
        assert_eq!(status["learners"], json!([]));
        let role = if status["node_id"] == leader {
            "leader"
        } else {
            "follower"
        };
        assert_eq!(status["role"], role);
        for (listed, other) in status["nodes"].as_array().unwrap().iter().zip(&nodes) {
            assert_eq!(listed["id"], other.id);
            assert_eq!(listed["cluster_addr"], other.cluster_addr.to_string());
            assert_eq!(listed["mqtt_addrs"], json!([other.mqtt.to_string()]));
            assert_eq!(listed["voter"], true);
        }
    }

    // A message from C to a subscriber on A crosses one link.
    let mut subscriber = Client::simple(nodes[0].mqtt, "ops-sub").await;
    subscriber.subscribe("ops/#", QoS::AtLeastOnce).await;
    until_status(&nodes[2], "the route of A", |s| {
        s["routes"].as_u64() >= Some(1)
    })
    .await;
    let publisher = Client::simple(nodes[2].mqtt, "ops-pub").await;
    publisher
        .publish("ops/x", QoS::AtLeastOnce, false, "hello")
        .await;
    assert_eq!(subscriber.recv().await.payload, &b"hello"[..]);

    let mut leaders = 0;
    for (i, node) in nodes.iter().enumerate() {
        let metrics = node.metrics().await;
        leaders += sample(&metrics, "tern_cluster_role{role=\"leader\"}").unwrap_or(0.0) as usize;
        assert_eq!(
            sample(&metrics, "tern_cluster_voters"),
            Some(3.0),
            "{metrics}"
        );
        assert_eq!(sample(&metrics, "tern_cluster_learners"), Some(0.0));
        assert_eq!(sample(&metrics, "tern_cluster_nodes"), Some(3.0));
        assert_eq!(sample(&metrics, "tern_cluster_leader_known"), Some(1.0));
        assert!(sample(&metrics, "tern_cluster_term").is_some_and(|t| t >= 1.0));
        assert!(sample(&metrics, "tern_cluster_last_applied_index").is_some_and(|i| i >= 1.0));
        assert!(sample(&metrics, "tern_cluster_routes").is_some_and(|r| r >= 1.0));
        assert_eq!(
            sample(&metrics, "tern_cluster_second_copies_dropped_total"),
            Some(0.0),
            "no session moved"
        );
        for peer in nodes.iter().filter(|other| other.id != node.id) {
            let link = format!("tern_cluster_link_up{{peer=\"{}\"}}", peer.id);
            let up = sample(&metrics, &link);
            if leader == node.id || leader == peer.id {
                assert_eq!(up, Some(1.0), "{link}: {metrics}");
            } else {
                assert!(up.is_some(), "{link}: {metrics}");
            }
            let pending = format!("tern_cluster_pending_messages{{peer=\"{}\"}}", peer.id);
            assert!(sample(&metrics, &pending).is_some(), "{pending}");
        }
        assert!(
            sample(
                &metrics,
                &format!("tern_cluster_link_up{{peer=\"{}\"}}", node.id)
            )
            .is_none(),
            "no link to itself"
        );
        let sent = sample(&metrics, "tern_cluster_messages_sent_total");
        let received = sample(&metrics, "tern_cluster_messages_received_total");
        match i {
            0 => assert!(received >= Some(1.0), "A received: {metrics}"),
            2 => assert!(sent >= Some(1.0), "C sent: {metrics}"),
            _ => assert!(sent.is_some() && received.is_some()),
        }
        for name in ["resent", "duplicate", "dropped", "late"] {
            let line = format!("tern_cluster_messages_{name}_total");
            assert!(sample(&metrics, &line).is_some(), "{line}");
        }
    }
    assert_eq!(leaders, 1, "one leader among the nodes");

    // Without [cluster]: 404, and no cluster lines in the metrics.
    let single = start_server(9, any_port(), None, &dir).await;
    let (status, body) = single.api("GET", "/api/v1/cluster", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not part of a cluster"),
        "{body}"
    );
    assert!(!single.metrics().await.contains("tern_cluster_"));
    single.shutdown().await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// Issue 16, "a new node must be able to join a running cluster without restarting the
/// others" and `tern ctl cluster join | leave`'s API: a fourth node whose seed never answers
/// waits outside; `POST /api/v1/cluster/join` through its admin API, naming a node of the
/// cluster (not necessarily the leader), makes it a learner every node lists; `POST
/// /api/v1/cluster/leave` with no body removes it from every node's list. A member asked to
/// join is refused with 409, as is a node started without seeds (a cluster of one); a
/// stranger cannot be removed (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_and_leaves_through_the_admin_api() {
    let dir = temp_dir("join");
    let nodes = three_nodes(&dir).await;
    // A seed that takes connections and never answers: the node waits for it, outside.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let fourth = start_node(4, any_port(), vec![silent_addr], &dir).await;
    let (code, status) = fourth.api("GET", "/api/v1/cluster", None).await;
    assert_eq!(code, 200);
    assert_eq!(status["leader"], Value::Null, "not a member yet: {status}");

    // Joined through a follower: the request finds the leader.
    let leader = nodes[0].status().await["leader"].as_u64().unwrap();
    let through = nodes.iter().find(|n| n.id != leader).unwrap();
    let (code, answer) = fourth
        .api(
            "POST",
            "/api/v1/cluster/join",
            Some(json!({ "addr": through.cluster_addr.to_string() })),
        )
        .await;
    assert_eq!(code, 204, "join: {answer}");
    for node in nodes.iter().chain([&fourth]) {
        until_status(node, "node 4 a learner", |s| {
            s["learners"] == json!([4])
                && s["voters"] == json!([1, 2, 3])
                && s["nodes"].as_array().is_some_and(|nodes| {
                    nodes.iter().any(|n| {
                        n["id"] == 4 && n["mqtt_addrs"] == json!([fourth.mqtt.to_string()])
                    })
                })
        })
        .await;
    }
    until_status(&fourth, "node 4 following the leader", |s| {
        s["leader"] == json!(leader)
    })
    .await;
    let metrics = nodes[0].metrics().await;
    assert_eq!(
        sample(&metrics, "tern_cluster_learners"),
        Some(1.0),
        "{metrics}"
    );

    // A member asked to join: 409.
    let (code, answer) = nodes[0]
        .api(
            "POST",
            "/api/v1/cluster/join",
            Some(json!({ "addr": fourth.cluster_addr.to_string() })),
        )
        .await;
    assert_eq!(code, 409, "{answer}");
    // A stranger cannot leave.
    let (code, answer) = nodes[1]
        .api("POST", "/api/v1/cluster/leave", Some(json!({ "node": 99 })))
        .await;
    assert_eq!(code, 404, "{answer}");

    // Node 4 leaves (no body: the node asked).
    let (code, answer) = fourth.api("POST", "/api/v1/cluster/leave", None).await;
    assert_eq!((code, answer), (200, json!({ "node": 4 })));
    for node in &nodes {
        until_status(node, "node 4 gone", |s| {
            s["learners"] == json!([])
                && s["nodes"]
                    .as_array()
                    .is_some_and(|nodes| nodes.iter().all(|n| n["id"] != 4))
        })
        .await;
    }

    // A node started without seeds is a cluster of one: it cannot join another.
    let alone = start_node(5, any_port(), Vec::new(), &dir).await;
    until_status(&alone, "a cluster of one", |s| s["leader"] == json!(5)).await;
    let (code, answer) = alone
        .api(
            "POST",
            "/api/v1/cluster/join",
            Some(json!({ "addr": nodes[0].cluster_addr.to_string() })),
        )
        .await;
    assert_eq!(code, 409, "{answer}");
    // ... and, its only voter, it cannot leave its own.
    let (code, answer) = alone.api("POST", "/api/v1/cluster/leave", None).await;
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("only voter"),
        "{answer}"
    );
    drop(silent);
    for node in nodes.into_iter().chain([fourth, alone]) {
        node.shutdown().await;
    }
}

/// Issue 16, `tern ctl cluster leave NODE` from any node: a fourth node joins by itself
/// through its seeds (a learner: three voters are the target for four nodes); a follower
/// voter that died (stopped first, as an operator replaces a lost machine) and is removed
/// through another follower's admin API is replaced by the learner, so the cluster keeps
/// three voters, and every remaining node stops listing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_removed_from_another_node_is_replaced_by_a_learner() {
    let dir = temp_dir("replace");
    let nodes = three_nodes(&dir).await;
    let seeds = nodes.iter().map(|n| n.cluster_addr.to_string()).collect();
    let fourth = start_node(4, any_port(), seeds, &dir).await;
    for node in nodes.iter().chain([&fourth]) {
        until_status(node, "node 4 a learner", |s| s["learners"] == json!([4])).await;
    }
    let leader = nodes[0].status().await["leader"].as_u64().unwrap();
    let removed = nodes.iter().find(|n| n.id != leader).unwrap().id;
    let mut remaining = Vec::new();
    for node in nodes.into_iter().chain([fourth]) {
        if node.id == removed {
            node.shutdown().await;
        } else {
            remaining.push(node);
        }
    }
    let asked = remaining.iter().find(|n| n.id != leader).unwrap();
    let (code, answer) = asked
        .api(
            "POST",
            "/api/v1/cluster/leave",
            Some(json!({ "node": removed })),
        )
        .await;
    assert_eq!((code, answer), (200, json!({ "node": removed })));
    let voters: Vec<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|id| *id != removed)
        .collect();
    for node in &remaining {
        until_status(node, "the learner promoted, the node gone", |s| {
            s["voters"] == json!(voters)
                && s["learners"] == json!([])
                && s["nodes"]
                    .as_array()
                    .is_some_and(|listed| listed.iter().all(|n| n["id"] != removed))
        })
        .await;
        let metrics = node.metrics().await;
        assert_eq!(
            sample(&metrics, "tern_cluster_voters"),
            Some(3.0),
            "{metrics}"
        );
    }
    for node in remaining {
        node.shutdown().await;
    }
}
