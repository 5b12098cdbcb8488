//! Issue 16, "one long-lived TCP link per peer (..., TLS optional)": `[cluster] tls` puts every
//! node-to-node link (Raft's RPCs, joins and probes, the data plane) under mutual TLS. Three
//! nodes with certificates of one CA form a cluster and carry messages between them; a node
//! whose certificate another CA signed, and a node without TLS, never join it (their links
//! fail their handshakes) while the others go on; a plain-TCP peer speaking the cluster
//! protocol to a TLS node gets no frame through. Certificates are made here with rcgen.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Client;
use common::ca::Ca;
use common::cluster::{
    Dir, all_registered, free_addr, route_known, start_node_with, temp_dir, until,
};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose};
use rumqttc::QoS;
use tern_cluster::testing::{Mode, Network};
use tern_server::cluster::{ClusterTlsConfig, RelayMap};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

impl Ca {
    /// A node's certificate for the IP address it is dialled at, good for both ends of a
    /// link (serverAuth and clientAuth), written to `dir` with the CA `trusted` trusts; the
    /// `tls` table of its configuration.
    fn node(&self, dir: &Path, name: &str, addr: SocketAddr, trusted: &Ca) -> ClusterTlsConfig {
        self.node_until(dir, name, addr, trusted, None)
    }

    /// [`Ca::node`], valid until the day `not_after` (year, month, day; rcgen's default
    /// without).
    fn node_until(
        &self,
        dir: &Path,
        name: &str,
        addr: SocketAddr,
        trusted: &Ca,
        not_after: Option<(i32, u8, u8)>,
    ) -> ClusterTlsConfig {
        let mut params = CertificateParams::new(vec![addr.ip().to_string()]).unwrap();
        if let Some((year, month, day)) = not_after {
            params.not_after = rcgen::date_time_ymd(year, month, day);
        }
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issued = self.sign(&params);
        let write = |file: &str, text: &str| -> PathBuf {
            let path = dir.join(format!("{name}-{file}"));
            std::fs::write(&path, text).unwrap();
            path
        };
        ClusterTlsConfig {
            cert: write("node.pem", &issued.cert),
            key: write("node.key", &issued.key),
            ca: write("ca.pem", &trusted.pem),
        }
    }
}

/// Starts node `id` of `addrs` (its seeds: the others) with `tls`.
async fn start(
    id: u64,
    addrs: &[SocketAddr],
    dir: &Dir,
    tls: Option<ClusterTlsConfig>,
) -> common::cluster::Node {
    start_node_with(id, addrs, dir, move |config| {
        if let Some(cluster) = config.cluster.as_mut() {
            cluster.tls = tls;
        }
    })
    .await
}

/// Three nodes with certificates of the cluster's CA form a cluster over mutual TLS; subscribe
/// on A, publish on C at QoS 1: delivered, in order (issue 16's data plane under TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_mutual_tls_carry_messages_between_them() {
    let dir = temp_dir("tls-route");
    let ca = Ca::new("tern cluster CA");
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let tls = ca.node(&dir.0, &format!("n{id}"), addrs[id as usize - 1], &ca);
        nodes.push(start(id, &addrs, &dir, Some(tls)).await);
    }
    all_registered(&nodes).await;

    let mut subscriber = Client::simple(nodes[0].addr, "sub-a").await;
    subscriber.subscribe("tls/+/x", QoS::AtLeastOnce).await;
    route_known(&nodes, "tls/+/x", 1).await;
    let publisher = Client::simple(nodes[2].addr, "pub-c").await;
    for i in 0..10 {
        publisher
            .publish("tls/c/x", QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    for i in 0..10 {
        let message = subscriber.recv().await;
        assert_eq!(message.topic, "tls/c/x");
        assert_eq!(message.payload, format!("{i}").as_bytes());
        assert_eq!(message.qos, QoS::AtLeastOnce);
    }
    // The leader replicates to both others over its (TLS) links.
    until("the leader linked to both others", || {
        nodes.iter().any(|node| {
            let status = node.cluster.status();
            status.leader == Some(status.node_id)
                && status
                    .nodes
                    .iter()
                    .filter(|peer| peer.id != status.node_id)
                    .all(|peer| peer.linked)
        })
    })
    .await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// A node whose certificate another CA signed cannot join (the cluster's nodes refuse its
/// certificate), nor can a node without `tls` (no fall-back to plain TCP either way); the
/// cluster of the other two forms and carries messages meanwhile, and neither intruder is ever
/// registered (issue 16: TLS on the links; brief: mixed configurations fail cleanly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_a_certificate_of_the_cluster_ca_never_join() {
    let dir = temp_dir("tls-intruder");
    let ca = Ca::new("tern cluster CA");
    let other = Ca::new("another CA");
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let n1 = start(
        1,
        &addrs[..2],
        &dir,
        Some(ca.node(&dir.0, "n1", addrs[0], &ca)),
    )
    .await;
    let n2 = start(
        2,
        &addrs[..2],
        &dir,
        Some(ca.node(&dir.0, "n2", addrs[1], &ca)),
    )
    .await;
    // Trusts the cluster's CA, but its own certificate is another CA's.
    let forged = start(
        3,
        &addrs[..3],
        &dir,
        Some(other.node(&dir.0, "n3", addrs[2], &ca)),
    )
    .await;
    // Speaks plain TCP to nodes that speak TLS.
    let plain = start(4, &addrs, &dir, None).await;
    let cluster = vec![n1, n2];
    until("the two nodes of the CA in one cluster", || {
        cluster
            .iter()
            .all(|node| node.cluster.node().state().node_count() == 2)
    })
    .await;

    let mut subscriber = Client::simple(cluster[0].addr, "sub-1").await;
    subscriber.subscribe("guarded/#", QoS::AtLeastOnce).await;
    route_known(&cluster, "guarded/#", 1).await;
    let publisher = Client::simple(cluster[1].addr, "pub-2").await;
    publisher
        .publish("guarded/door", QoS::AtLeastOnce, false, "closed")
        .await;
    assert_eq!(subscriber.recv().await.payload, &b"closed"[..]);

    // The intruders probe their seeds every 500 ms: a few seconds give them several tries.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        for node in &cluster {
            let state = node.cluster.node().state();
            assert_eq!(state.node_count(), 2, "an intruder was registered");
        }
        for intruder in [&forged, &plain] {
            assert!(
                !intruder.cluster.node().is_member(),
                "an intruder believes it is a member"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The cluster still works.
    publisher
        .publish("guarded/door", QoS::AtLeastOnce, false, "open")
        .await;
    assert_eq!(subscriber.recv().await.payload, &b"open"[..]);
    for node in cluster.into_iter().chain([forged, plain]) {
        node.shutdown().await;
    }
}

/// `[cluster] tls` is read again as the listeners' files are (SIGHUP, a file that changed),
/// without a restart: a node whose certificate another CA signed, kept out of the cluster,
/// joins once its files hold a certificate of the cluster's CA (and the gauge shows the new
/// certificate); a node of a new CA joins once the others' `ca` bundles, reloaded, hold that
/// CA too (the first step of a CA rotation); a reload that finds a broken file keeps the
/// material in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_take_new_certificates_and_cas_on_reload_without_a_restart() {
    let dir = temp_dir("tls-reload");
    let ca = Ca::new("tern cluster CA");
    let other = Ca::new("another CA");
    let next = Ca::new("the next cluster CA");
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    let mut files = Vec::new();
    for id in 1..=2u64 {
        let name = format!("n{id}");
        let tls = ca.node(&dir.0, &name, addrs[id as usize - 1], &ca);
        files.push(tls.clone());
        nodes.push(start(id, &addrs[..2], &dir, Some(tls)).await);
    }
    let outsider_tls = other.node(&dir.0, "n3", addrs[2], &ca);
    let outsider = start(3, &addrs[..3], &dir, Some(outsider_tls.clone())).await;
    all_registered(&nodes).await;
    assert!(!outsider.cluster.node().is_member());

    // A half-written key: the reload fails, naming the file, and changes nothing. (The
    // reload of SIGHUP and the admin API, and the library's call.)
    std::fs::write(&outsider_tls.key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let report = outsider.admin.reload().await;
    let named = format!("cluster.tls: {}: ", outsider_tls.key.display());
    assert!(
        report.errors.len() == 1 && report.errors[0].starts_with(&named),
        "{report:?}"
    );
    let error = outsider.tls.reload().unwrap_err();
    assert_eq!(error.listener, "[cluster]");
    assert_eq!(error.path.as_deref(), Some(outsider_tls.key.as_path()));

    // The same files, now with a certificate of the cluster's CA, valid until 2031-01-02.
    let renewed = ca.node_until(&dir.0, "n3", addrs[2], &ca, Some((2031, 1, 2)));
    assert_eq!(renewed, outsider_tls);
    let report = outsider.admin.reload().await;
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(
        report.applied.iter().any(|part| part == "certificates"),
        "{report:?}"
    );
    files.push(renewed);
    // The gauge shows the certificate in use.
    let text = outsider.admin.metrics_text();
    let left: f64 = text
        .lines()
        .find_map(|line| {
            line.strip_prefix("tern_cluster_certificate_expiry_seconds ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no cluster certificate gauge in:\n{text}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((left - (1_925_078_400.0 - now)).abs() < 60.0, "{left}");
    nodes.push(outsider);
    all_registered(&nodes).await;

    // A node of the next CA (which trusts both) stays out until the others trust it too.
    let mut both = ca.pem.clone();
    both.push_str(&next.pem);
    let newcomer_tls = next.node(&dir.0, "n4", addrs[3], &ca);
    std::fs::write(&newcomer_tls.ca, &both).unwrap();
    let newcomer = start(4, &addrs, &dir, Some(newcomer_tls)).await;
    let state_of = |nodes: &[common::cluster::Node]| {
        nodes
            .iter()
            .map(|node| node.cluster.node().state().node_count())
            .collect::<Vec<_>>()
    };
    for _ in 0..10 {
        assert_eq!(state_of(&nodes), vec![3, 3, 3], "the newcomer was let in");
        assert!(!newcomer.cluster.node().is_member());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (node, tls) in nodes.iter().zip(&files) {
        std::fs::write(&tls.ca, &both).unwrap();
        node.tls.reload().unwrap();
    }
    nodes.push(newcomer);
    all_registered(&nodes).await;

    // The renewed node and the newcomer carry messages.
    let mut subscriber = Client::simple(nodes[2].addr, "sub-3").await;
    subscriber.subscribe("renewed/#", QoS::AtLeastOnce).await;
    route_known(&nodes, "renewed/#", 3).await;
    let publisher = Client::simple(nodes[3].addr, "pub-4").await;
    publisher
        .publish("renewed/cert", QoS::AtLeastOnce, false, "in")
        .await;
    assert_eq!(subscriber.recv().await.payload, &b"in"[..]);
    for node in nodes {
        node.shutdown().await;
    }
}

/// A peer that dials a TLS node's cluster port in plain TCP and speaks the cluster protocol (a
/// hello, then a join request) gets no frame through: the node closes the connection after a
/// failed handshake without answering, and registers nobody (issue 16: TLS on the links).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_tcp_peer_gets_no_frame_through_to_a_tls_node() {
    use tern_cluster::rpc::RpcRequest;
    use tern_cluster::wire::{self, Frame, Kind};

    let dir = temp_dir("tls-plain-peer");
    let ca = Ca::new("tern cluster CA");
    let addrs = [free_addr()];
    let node = start(1, &addrs, &dir, Some(ca.node(&dir.0, "n1", addrs[0], &ca))).await;
    until("a cluster of one", || {
        node.cluster.node().is_member() && node.cluster.node().state().node_count() == 1
    })
    .await;

    let mut stream = tokio::net::TcpStream::connect(addrs[0]).await.unwrap();
    let join = serde_json::to_vec(&RpcRequest::Join {
        node: 99,
        cluster_addr: "127.0.0.1:9".into(),
        mqtt_addrs: Vec::new(),
    })
    .unwrap();
    let mut out = bytes::BytesMut::new();
    wire::hello(99).encode(&mut out);
    Frame::with_id(Kind::Request, 1, &join).encode(&mut out);
    // The node may close before everything is written: a write error is an answer too.
    let _ = stream.write_all(&out).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the node closes the connection");
    // Closed (at most a TLS alert record, content type 21, came back), never a frame.
    assert!(
        read.is_err() || answer.is_empty() || answer[0] == 21,
        "unexpected answer: {answer:?}"
    );
    assert!(
        wire::read_frame(&mut &answer[..])
            .await
            .map_or(true, |frame| frame.is_none_or(|f| f.kind != Kind::Response)),
        "a frame came back"
    );
    assert_eq!(node.cluster.node().state().node_count(), 1, "nobody joined");
    node.shutdown().await;
}

/// TLS through the fault-injecting relay (it forwards bytes): every link of three TLS nodes
/// passes a relay on 127.0.0.1 while the nodes' certificates name only their own addresses
/// (127.0.0.10 and up), so a dialling node checks the name it knows the peer by, not the
/// relay's. The link C dials to A is cut for a while: the QoS 1 messages published meanwhile
/// arrive once the link is dialled again (a new handshake), in order (issue 16: TLS on the
/// links; at least once per link, order per publisher [MQTT-4.6.0-5]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_links_through_the_relay_survive_a_cut() {
    let dir = temp_dir("tls-relay");
    let ca = Ca::new("tern cluster CA");
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let net = Network::between(addrs.clone()).await.unwrap();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let tls = ca.node(&dir.0, &format!("n{id}"), addrs[id as usize - 1], &ca);
        let relay = RelayMap(net.addr_map(id));
        nodes.push(
            start_node_with(id, &addrs, &dir, move |config| {
                if let Some(cluster) = config.cluster.as_mut() {
                    cluster.tls = Some(tls);
                    cluster.relay = Some(relay);
                }
            })
            .await,
        );
    }
    all_registered(&nodes).await;
    let mut subscriber = Client::simple(nodes[0].addr, "sub-a").await;
    subscriber.subscribe("cut/#", QoS::AtLeastOnce).await;
    route_known(&nodes, "cut/#", 1).await;
    let publisher = Client::simple(nodes[2].addr, "pub-c").await;
    for i in 0..5 {
        publisher
            .publish("cut/x", QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    for i in 0..5 {
        assert_eq!(subscriber.recv().await.payload, format!("{i}").as_bytes());
    }
    let accepted = net.relay(3, 1).accepted();
    net.set(3, 1, Mode::Drop);
    for i in 5..15 {
        publisher
            .publish("cut/x", QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    net.set(3, 1, Mode::Pass);
    for i in 5..15 {
        assert_eq!(subscriber.recv().await.payload, format!("{i}").as_bytes());
    }
    assert!(
        net.relay(3, 1).accepted() > accepted,
        "C dialled A again through the relay"
    );
    until("C's outbox for A empty", || {
        nodes[2].cluster.forward_pending() == 0
    })
    .await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// A measurement, not a check (`cargo test -p tern-server --test cluster_tls -- --ignored
/// --nocapture`): QoS 1 messages published on C for a subscriber on A, the links plain TCP and
/// then mutual TLS; the time until the last one arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_cross_node_qos1_plain_and_tls() {
    const COUNT: usize = 3_000;
    for with_tls in [false, true, false, true] {
        let dir = temp_dir("tls-measure");
        let ca = Ca::new("tern cluster CA");
        let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
        let mut nodes = Vec::new();
        for id in 1..=3u64 {
            let tls =
                with_tls.then(|| ca.node(&dir.0, &format!("n{id}"), addrs[id as usize - 1], &ca));
            nodes.push(start(id, &addrs, &dir, tls).await);
        }
        all_registered(&nodes).await;
        let mut subscriber = Client::simple(nodes[0].addr, "sub-a").await;
        subscriber.subscribe("m/#", QoS::AtLeastOnce).await;
        route_known(&nodes, "m/#", 1).await;
        let publisher = Client::simple(nodes[2].addr, "pub-c").await;
        let started = std::time::Instant::now();
        let publishing = async {
            for i in 0..COUNT {
                publisher
                    .publish("m/x", QoS::AtLeastOnce, false, vec![i as u8; 64])
                    .await;
            }
        };
        let receiving = async {
            for _ in 0..COUNT {
                subscriber.recv().await;
            }
        };
        tokio::join!(publishing, receiving);
        let elapsed = started.elapsed();
        eprintln!(
            "CLUSTER-TLS-MEASURE links={} messages={COUNT} seconds={:.3} msg_per_s={:.0}",
            if with_tls { "tls" } else { "plain" },
            elapsed.as_secs_f64(),
            COUNT as f64 / elapsed.as_secs_f64()
        );
        for node in nodes {
            node.shutdown().await;
        }
    }
}
