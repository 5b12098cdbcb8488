//! In-process Tern clusters for the tests: nodes on loopback with their own data
//! directories, formed from each other's addresses as seeds.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tern_server::cluster::{Cluster, ClusterConfig};
use tern_server::{Durability, Server, ServerConfig};
use tokio::sync::oneshot;

/// How long the cluster may take to agree on something (a route, a retained message).
pub const AGREE: Duration = Duration::from_secs(15);

pub struct Node {
    pub addr: SocketAddr,
    pub cluster: Cluster,
    pub broker: std::sync::Arc<tern_broker::Broker>,
    /// Reloads the node's TLS files (its listeners' and `[cluster] tls`'s), as SIGHUP does.
    pub tls: tern_server::TlsReloader,
    /// The node's admin backend (its metrics, say).
    pub admin: std::sync::Arc<dyn tern_admin::AdminBackend>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(8), self.task).await;
    }
}

pub struct Dir(pub PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn temp_dir(name: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!(
        "tern-cluster-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    Dir(dir)
}

/// A port free now for a server started later, on a loopback address of its own (127.0.0.10
/// and up, the next one each call): the kernel may hand a just-released port out again, so a
/// port reserved on 127.0.0.1 could be given to another reservation or to a port-0 listener of a
/// test running beside before the server binds it.
pub fn free_addr() -> SocketAddr {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let host = 10 + NEXT.fetch_add(1, Ordering::Relaxed) % 240;
    std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, host), 0))
        .and_then(|socket| socket.local_addr())
        .expect("a free loopback port")
}

pub async fn start_node(id: u64, cluster_addrs: &[SocketAddr], dir: &Dir) -> Node {
    start_node_with(id, cluster_addrs, dir, |_| {}).await
}

/// [`start_node`], with the configuration changed by `adjust` first.
pub async fn start_node_with(
    id: u64,
    cluster_addrs: &[SocketAddr],
    dir: &Dir,
    adjust: impl FnOnce(&mut ServerConfig),
) -> Node {
    let me = cluster_addrs[id as usize - 1];
    let mut config = ServerConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        durability: Durability::Process,
        data_dir: dir.0.join(format!("node{id}")),
        ..ServerConfig::default()
    };
    config.cluster = Some(ClusterConfig {
        node_id: id,
        bind: me.to_string(),
        advertise: None,
        seeds: cluster_addrs
            .iter()
            .filter(|addr| **addr != me)
            .map(ToString::to_string)
            .collect(),
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
    });
    adjust(&mut config);
    Node::run(Server::bind(config).await.expect("bind"))
}

impl Node {
    /// Runs a bound clustered server until the node is shut down.
    pub fn run(server: Server) -> Node {
        let addr = server.local_addrs()[0];
        let cluster = server.cluster().expect("cluster part").clone();
        let broker = server.broker().clone();
        let tls = server.tls_reloader();
        let admin = server.admin_backend();
        let (stop, task) = spawn_server(server);
        Node {
            addr,
            cluster,
            broker,
            tls,
            admin,
            stop: Some(stop),
            task,
        }
    }
}

/// Runs `server` in a task until the sender is used (or dropped), with a 4 s shutdown.
pub fn spawn_server(server: Server) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        let _ = server.run(stopped, Duration::from_secs(4)).await;
    });
    (stop, task)
}

pub async fn three_nodes(dir: &Dir) -> Vec<Node> {
    three_nodes_at(dir).await.0
}

/// Three nodes, and their cluster addresses (to start one again).
pub async fn three_nodes_at(dir: &Dir) -> (Vec<Node>, Vec<SocketAddr>) {
    let cluster_addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start_node(id, &cluster_addrs, dir).await);
    }
    all_registered(&nodes).await;
    (nodes, cluster_addrs)
}

pub async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + AGREE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every node of `nodes` knows all of them as registered members.
pub async fn all_registered(nodes: &[Node]) {
    until("every node registered on every node", || {
        nodes
            .iter()
            .all(|node| node.cluster.node().state().node_count() == nodes.len())
    })
    .await;
}

/// Waits until every node's route table has `filter` for `node`.
pub async fn route_known(nodes: &[Node], filter: &str, node: u64) {
    until(&format!("route {filter} of node {node} everywhere"), || {
        nodes.iter().all(|n| {
            n.cluster
                .node()
                .state()
                .route(filter)
                .is_some_and(|holders| holders.contains(&node))
        })
    })
    .await;
}
