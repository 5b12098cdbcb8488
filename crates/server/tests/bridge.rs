//! Bridges (issue 15) through real sockets: two in-process Tern servers, one bridged to the
//! other, with rumqttc clients on each side.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use common::{Client, WAIT, options};
use rumqttc::QoS as R;
use tern_server::bridge::Bridges;
use tern_server::{Durability, Server, ServerConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server with its bridges; stops when dropped.
struct Tern {
    addr: SocketAddr,
    admin: std::sync::Arc<dyn tern_admin::AdminBackend>,
    bridges: Bridges,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Tern {
    async fn start(config: ServerConfig) -> Tern {
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addrs()[0];
        let bridges = server.bridges();
        let admin = server.admin_backend();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            server
                .run(stopped, Duration::from_secs(3))
                .await
                .expect("server runs");
        });
        Tern {
            addr,
            admin,
            bridges,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(8), task)
                .await
                .expect("server stops within its grace period")
                .expect("server task");
        }
    }

    /// The filters the bridge's session here subscribes.
    fn bridge_filters(&self) -> Vec<String> {
        self.admin
            .subscriptions(&tern_admin::SubscriptionQuery {
                client_id: Some("$bridge/b".into()),
                filter: None,
                page: tern_admin::Page {
                    limit: 100,
                    after: None,
                },
            })
            .into_iter()
            .map(|s| s.filter)
            .collect()
    }

    fn bridge(&self) -> tern_server::bridge::BridgeSnapshot {
        self.bridges.snapshots().remove(0)
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A fresh directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        TempDir(
            std::env::temp_dir().join(format!("tern-bridge-{name}-{}-{nanos}", std::process::id())),
        )
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server on `listen` (port 0: any) with `extra` TOML (bridges, auth), state in memory
/// unless `data_dir` is given.
fn config(listen: &str, data_dir: Option<&Path>, extra: &str) -> ServerConfig {
    let durability = match data_dir {
        // The machine's free space is not what these tests are about.
        Some(dir) => format!(
            "durability = \"process\"\ndata_dir = {:?}\nmin_free_disk = \"0\"\n",
            dir.display()
        ),
        None => "durability = \"memory\"\n".to_owned(),
    };
    let text = format!("listen = [\"{listen}\"]\nsys_interval = 0\n{durability}{extra}");
    let mut config = ServerConfig::from_toml(&text).expect("test configuration");
    config.durability = if data_dir.is_some() {
        Durability::Process
    } else {
        Durability::Memory
    };
    config
}

/// One bridge named `b` to `remote` with these topic rules, reconnecting quickly.
fn bridge_to(remote: SocketAddr, topics: &str) -> String {
    format!(
        "[[bridges]]\nname = \"b\"\naddress = \"{remote}\"\nclient_id = \"edge-1\"\n\
         reconnect_min_ms = 50\nreconnect_max_ms = 200\ntopics = [{topics}]\n"
    )
}

/// A port free now for a server started later, on a loopback address of its own (127.0.0.10
/// and up, the next one each call): the kernel may hand a just-released port out again, so a
/// port reserved on 127.0.0.1 could be given to another reservation or to a port-0 listener of a
/// test running beside before the server binds it.
fn free_port() -> SocketAddr {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let host = 10 + NEXT.fetch_add(1, Ordering::Relaxed) % 240;
    std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, host), 0))
        .and_then(|socket| socket.local_addr())
        .expect("a free loopback port")
}

fn qos(level: u8) -> R {
    match level {
        0 => R::AtMostOnce,
        1 => R::AtLeastOnce,
        _ => R::ExactlyOnce,
    }
}

/// Publishes QoS 0 probes on `topic` through `publisher` until `subscriber` receives one: the
/// bridge is then connected and subscribed on both sides. Probes still on their way are
/// skipped by [`recv_skipping_probes`].
async fn wait_flowing(publisher: &Client, subscriber: &mut Client, topic: &str) {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge never carried {topic}"
        );
        publisher
            .publish(topic, R::AtMostOnce, false, "probe")
            .await;
        let got = subscriber
            .next_matching_within(Duration::from_millis(100), |event| match event {
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p.clone()),
                _ => None,
            })
            .await;
        if got.is_ok() {
            return;
        }
    }
}

/// The next PUBLISH that is not a probe.
async fn recv_skipping_probes(client: &mut Client) -> rumqttc::Publish {
    loop {
        let publish = client.recv().await;
        if &publish.payload[..] != b"probe" {
            return publish;
        }
    }
}

/// Receives (probes aside) until a message on `wanted`; none before it may be on `forbidden`.
async fn wait_for_topic(client: &mut Client, wanted: &str, forbidden: &str, why: &str) {
    loop {
        let got = recv_skipping_probes(client).await;
        if got.topic == wanted {
            return;
        }
        assert_ne!(got.topic, forbidden, "{why}");
    }
}

/// Issue 15: `out` and `in` rules carry messages at QoS 0, 1 and 2, with the prefixes of
/// each side swapped, and the QoS of each message kept (at most the rule's).
#[tokio::test]
async fn out_and_in_at_each_qos_with_prefixes() {
    let remote = Tern::start(config("127.0.0.1:0", None, "")).await;
    let local = Tern::start(config(
        "127.0.0.1:0",
        None,
        &bridge_to(
            remote.addr,
            "{ pattern = \"sensors/#\", direction = \"out\", qos = 2, local_prefix = \"site/\", remote_prefix = \"cloud/site/\" },\
             { pattern = \"cmd/#\", direction = \"in\", qos = 2, local_prefix = \"local/\", remote_prefix = \"remote/\" }",
        ),
    ))
    .await;
    let local_pub = Client::simple(local.addr, "local-pub").await;
    let mut local_sub = Client::simple(local.addr, "local-sub").await;
    local_sub.subscribe("local/cmd/#", R::ExactlyOnce).await;
    let remote_pub = Client::simple(remote.addr, "remote-pub").await;
    let mut remote_sub = Client::simple(remote.addr, "remote-sub").await;
    remote_sub
        .subscribe("cloud/site/sensors/#", R::ExactlyOnce)
        .await;
    wait_flowing(&local_pub, &mut remote_sub, "site/sensors/probe").await;
    wait_flowing(&remote_pub, &mut local_sub, "remote/cmd/probe").await;
    for level in 0..=2u8 {
        local_pub
            .publish(
                &format!("site/sensors/q{level}"),
                qos(level),
                false,
                format!("out {level}"),
            )
            .await;
        let got = recv_skipping_probes(&mut remote_sub).await;
        assert_eq!(got.topic, format!("cloud/site/sensors/q{level}"));
        assert_eq!(&got.payload[..], format!("out {level}").as_bytes());
        assert_eq!(got.qos, qos(level));
        remote_pub
            .publish(
                &format!("remote/cmd/q{level}"),
                qos(level),
                false,
                format!("in {level}"),
            )
            .await;
        let got = recv_skipping_probes(&mut local_sub).await;
        assert_eq!(got.topic, format!("local/cmd/q{level}"));
        assert_eq!(&got.payload[..], format!("in {level}").as_bytes());
        assert_eq!(got.qos, qos(level));
    }
    // Topics outside the rules stay where they are.
    local_pub
        .publish("other/x", R::AtLeastOnce, false, "no")
        .await;
    local_pub
        .publish("site/sensors/last", R::AtLeastOnce, false, "last")
        .await;
    let got = recv_skipping_probes(&mut remote_sub).await;
    assert_eq!(got.topic, "cloud/site/sensors/last");
    let state = local.bridge();
    assert!(state.connected);
    assert!(
        state.messages_out >= 4 && state.messages_in >= 3,
        "{state:?}"
    );
    // The admin API and the metrics show it.
    let listed = local.admin.bridges();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "b");
    assert!(listed[0].connected);
    assert_eq!(listed[0].addresses, [remote.addr.to_string()]);
    assert!(
        listed[0].messages_out >= 4 && listed[0].bytes_out >= 20,
        "{listed:?}"
    );
    let metrics = local.admin.metrics_text();
    for line in [
        "tern_bridge_connected{bridge=\"b\"} 1",
        "tern_bridge_messages_total{bridge=\"b\",direction=\"out\"}",
        "tern_bridge_messages_total{bridge=\"b\",direction=\"in\"}",
        "tern_bridge_bytes_total{bridge=\"b\",direction=\"in\"}",
        "tern_bridge_queue_depth{bridge=\"b\"} ",
        "tern_bridge_reconnects_total{bridge=\"b\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    local.shutdown().await;
    remote.shutdown().await;
}

/// Issue 15 (no loops): two Terns bridged both ways on `#` by one `both` bridge: a message
/// published on either side arrives once on each side (no local on both subscriptions),
/// QoS 2 included.
#[tokio::test]
async fn both_on_hash_between_two_terns_does_not_loop() {
    let remote = Tern::start(config("127.0.0.1:0", None, "")).await;
    let local = Tern::start(config(
        "127.0.0.1:0",
        None,
        &bridge_to(
            remote.addr,
            "{ pattern = \"#\", direction = \"both\", qos = 2 }",
        ),
    ))
    .await;
    let local_pub = Client::simple(local.addr, "a-pub").await;
    let remote_pub = Client::simple(remote.addr, "b-pub").await;
    let mut local_sub = Client::simple(local.addr, "a-sub").await;
    local_sub.subscribe("t/#", R::ExactlyOnce).await;
    let mut remote_sub = Client::simple(remote.addr, "b-sub").await;
    remote_sub.subscribe("t/#", R::ExactlyOnce).await;
    wait_flowing(&local_pub, &mut remote_sub, "t/probe-a").await;
    wait_flowing(&remote_pub, &mut local_sub, "t/probe-b").await;
    // Probes that were still on their way.
    for client in [&mut local_sub, &mut remote_sub] {
        while client
            .next_matching_within(Duration::from_millis(300), |event| {
                matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))).then_some(())
            })
            .await
            .is_ok()
        {}
    }
    local_pub
        .publish("t/from-a", R::ExactlyOnce, false, "a")
        .await;
    remote_pub
        .publish("t/from-b", R::ExactlyOnce, false, "b")
        .await;
    for (side, client) in [("a", &mut local_sub), ("b", &mut remote_sub)] {
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.push(client.recv().await.topic);
        }
        seen.sort();
        assert_eq!(seen, ["t/from-a", "t/from-b"], "side {side}");
        // Nothing more: a loop would bring them round again (bounded wait for an absence).
        let more = client
            .next_matching_within(Duration::from_millis(500), |event| match event {
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p.topic.clone()),
                _ => None,
            })
            .await;
        assert!(more.is_err(), "side {side} got {more:?} again");
    }
    local.shutdown().await;
    remote.shutdown().await;
}

/// Issue 15: configuration errors of `[[bridges]]` are reported (as `tern check-config`
/// prints them), naming the bridge.
#[test]
fn bridge_config_errors_are_reported() {
    let cases = [
        (
            "[[bridges]]\nname = \"x\"\ntopics = [{ pattern = \"a\", direction = \"in\" }]\n",
            "needs address",
        ),
        (
            "[[bridges]]\nname = \"x\"\naddress = \"h:1\"\ntopics = [{ pattern = \"a/#/b\", direction = \"in\" }]\n",
            "not a valid topic filter",
        ),
        (
            "[[listeners]]\nname = \"bridge:x\"\nkind = \"mqtt\"\nbind = \"127.0.0.1:0\"\n",
            "bridges' own",
        ),
        // Review 15: all the local packet ids in flight would leave none to allocate.
        (
            "[[bridges]]\nname = \"x\"\naddress = \"h:1\"\nmax_inflight = 65535\ntopics = [{ pattern = \"a\", direction = \"in\" }]\n",
            "max_inflight must be between 1 and 65000",
        ),
        // Review 15: an anonymous bridge where [auth] refuses anonymous clients.
        (
            "[auth]\npassword_file = \"/etc/tern/passwords\"\n\n[[bridges]]\nname = \"x\"\naddress = \"h:1\"\ntopics = [{ pattern = \"a\", direction = \"in\" }]\n",
            "needs local_username",
        ),
    ];
    for (text, expected) in cases {
        let error = ServerConfig::from_toml(text).unwrap_err().to_string();
        assert!(error.contains(expected), "{text}: {error}");
    }
    let error =
        ServerConfig::from_toml("[[bridges]]\nname = \"x\"\naddress = \"h:1\"\ndirection = 1\n")
            .unwrap_err()
            .to_string();
    assert!(
        error.contains("direction") || error.contains("unknown"),
        "{error}"
    );
    // From a file, the error names the bridge's table's line (as check-config prints it).
    let dir = TempDir::new("check");
    std::fs::create_dir_all(dir.path()).expect("dir");
    let file = dir.path().join("tern.toml");
    std::fs::write(
        &file,
        "listen = [\"127.0.0.1:0\"]\n\n[[bridges]]\nname = \"x\"\naddress = \"h:1\"\ntopics = []\n",
    )
    .expect("write");
    let error = ServerConfig::from_file(&file).unwrap_err().to_string();
    assert!(error.contains("tern.toml:3: bridge \"x\""), "{error}");
    // The TLS files are read by check-config.
    let config = ServerConfig::from_toml(
        "[[bridges]]\nname = \"x\"\naddress = \"h:1\"\ntls = { ca = \"/nonexistent/ca.pem\" }\ntopics = [{ pattern = \"a\", direction = \"in\" }]\n",
    )
    .expect("parses");
    let error = tern_server::check_config(&config).unwrap_err().to_string();
    assert!(error.contains("bridge \"x\""), "{error}");
}

/// Issue 15: `$bridge/<name>` is reserved for the bridge: a network client asking for it is
/// refused (3.1.1: return code 2, identifier rejected).
#[tokio::test]
async fn network_client_cannot_take_the_bridge_client_id() {
    let server = Tern::start(config("127.0.0.1:0", None, "")).await;
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options(server.addr, "$bridge/b"), 10);
    let error = tokio::time::timeout(WAIT, eventloop.poll())
        .await
        .expect("answered in time")
        .expect_err("refused");
    assert!(
        matches!(
            error,
            rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::BadClientId)
        ),
        "{error:?}"
    );
    server.shutdown().await;
}

/// Publishes `count` QoS 1 messages `{topic}/{i}` with payload `i` and waits for every PUBACK.
async fn publish_acknowledged(publisher: &mut Client, topic: &str, count: usize) {
    for i in 0..count {
        publisher
            .publish(
                &format!("{topic}/{i}"),
                R::AtLeastOnce,
                false,
                i.to_string(),
            )
            .await;
    }
    for _ in 0..count {
        publisher
            .next_matching(|event| {
                matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(())
            })
            .await
            .expect("PUBACK");
    }
}

/// Receives `count` messages (probes skipped) and checks they are `0..count` in order.
async fn expect_in_order(subscriber: &mut Client, count: usize) {
    for i in 0..count {
        let got = recv_skipping_probes(subscriber).await;
        assert_eq!(
            std::str::from_utf8(&got.payload).expect("text"),
            i.to_string(),
            "message {i} of {count} (topic {})",
            got.topic
        );
    }
}

fn persistent_options(addr: SocketAddr, id: &str) -> rumqttc::MqttOptions {
    let mut options = options(addr, id);
    options.set_clean_session(false);
    options
}

/// Issue 15: with the remote broker down, messages published here are acknowledged to their
/// publisher (stored for the bridge) and, once the remote is back, all arrive there in order.
#[tokio::test]
async fn remote_down_then_up_delivers_everything_in_order() {
    let remote_dir = TempDir::new("remote-down");
    let remote = Tern::start(config("127.0.0.1:0", Some(remote_dir.path()), "")).await;
    let remote_addr = remote.addr;
    let local = Tern::start(config(
        "127.0.0.1:0",
        None,
        &bridge_to(
            remote_addr,
            "{ pattern = \"s/#\", direction = \"out\", qos = 1 }",
        ),
    ))
    .await;
    let mut publisher = Client::simple(local.addr, "pub").await;
    let (mut subscriber, _) = Client::connect(persistent_options(remote_addr, "rsub")).await;
    subscriber.subscribe("s/#", R::AtLeastOnce).await;
    wait_flowing(&publisher, &mut subscriber, "s/probe").await;
    subscriber.disconnect().await;
    remote.shutdown().await;
    common::wait_until("the bridge sees the remote gone", || {
        !local.bridge().connected
    })
    .await;

    publish_acknowledged(&mut publisher, "s/m", 40).await;

    let remote = Tern::start(config(
        &remote_addr.to_string(),
        Some(remote_dir.path()),
        "",
    ))
    .await;
    let (mut subscriber, connack) = Client::connect(persistent_options(remote_addr, "rsub")).await;
    assert!(connack.session_present);
    expect_in_order(&mut subscriber, 40).await;
    let state = local.bridge();
    assert!(state.reconnects >= 1, "{state:?}");
    local.shutdown().await;
    remote.shutdown().await;
}

/// Issue 15: the bridge's queue is its stored local session: messages acknowledged to their
/// publisher while the remote is unreachable survive a restart of this broker on its data
/// directory, and are sent in order once the remote is reachable.
#[tokio::test]
async fn stored_queue_survives_a_local_restart() {
    let local_dir = TempDir::new("local-restart");
    let remote_addr = free_port();
    let bridge = bridge_to(
        remote_addr,
        "{ pattern = \"q/#\", direction = \"out\", qos = 1 }",
    );
    let local = Tern::start(config("127.0.0.1:0", Some(local_dir.path()), &bridge)).await;
    // The bridge's session has subscribed (from then on messages are kept for it).
    common::wait_until("the bridge subscribed", || {
        !local.bridge_filters().is_empty()
    })
    .await;
    let mut publisher = Client::simple(local.addr, "pub").await;
    publish_acknowledged(&mut publisher, "q/m", 25).await;
    common::wait_until("the bridge holds the messages", || {
        local.bridge().queue_depth >= 25
    })
    .await;
    publisher.disconnect().await;
    local.shutdown().await;

    let remote = Tern::start(config(&remote_addr.to_string(), None, "")).await;
    let mut subscriber = Client::simple(remote_addr, "rsub").await;
    subscriber.subscribe("q/#", R::AtLeastOnce).await;
    let local = Tern::start(config("127.0.0.1:0", Some(local_dir.path()), &bridge)).await;
    expect_in_order(&mut subscriber, 25).await;
    common::wait_until("the queue is empty", || local.bridge().queue_depth == 0).await;
    local.shutdown().await;
    remote.shutdown().await;
}

/// Issue 15: access rules apply to bridged traffic: the bridge acts here as its
/// `local_username`, so what that user may not read is not carried out, and what it may not
/// publish is refused here (and acknowledged to the remote, counted as refused).
#[tokio::test]
async fn access_rules_of_local_username_apply() {
    let dir = TempDir::new("acl");
    std::fs::create_dir_all(dir.path()).expect("dir");
    let acl = dir.path().join("tern.acl");
    std::fs::write(
        &acl,
        "topic readwrite #\n\nuser bridgeuser\ntopic readwrite allowed/#\n",
    )
    .expect("acl file");
    let remote = Tern::start(config("127.0.0.1:0", None, "")).await;
    let mut bridge = bridge_to(
        remote.addr,
        "{ pattern = \"#\", direction = \"both\", qos = 1 }",
    );
    bridge.push_str("local_username = \"bridgeuser\"\n");
    let local = Tern::start(config(
        "127.0.0.1:0",
        None,
        &format!(
            "{bridge}[auth]\nallow_anonymous = true\nacl_file = {:?}\n",
            acl.display()
        ),
    ))
    .await;
    let local_pub = Client::simple(local.addr, "local-pub").await;
    let mut local_sub = Client::simple(local.addr, "local-sub").await;
    local_sub.subscribe("#", R::AtLeastOnce).await;
    let remote_pub = Client::simple(remote.addr, "remote-pub").await;
    let mut remote_sub = Client::simple(remote.addr, "remote-sub").await;
    remote_sub.subscribe("#", R::AtLeastOnce).await;
    wait_flowing(&local_pub, &mut remote_sub, "allowed/probe").await;
    wait_flowing(&remote_pub, &mut local_sub, "allowed/probe-in").await;

    local_pub
        .publish("denied/out", R::AtLeastOnce, false, "x")
        .await;
    local_pub
        .publish("allowed/out", R::AtLeastOnce, false, "y")
        .await;
    wait_for_topic(
        &mut remote_sub,
        "allowed/out",
        "denied/out",
        "carried a topic the bridge may not read",
    )
    .await;
    remote_pub
        .publish("denied/in", R::AtLeastOnce, false, "x")
        .await;
    remote_pub
        .publish("allowed/in", R::AtLeastOnce, false, "y")
        .await;
    wait_for_topic(
        &mut local_sub,
        "allowed/in",
        "denied/in",
        "published a topic the bridge may not write",
    )
    .await;
    common::wait_until("the refusal is counted", || {
        local.bridge().messages_refused >= 1
    })
    .await;
    local.shutdown().await;
    remote.shutdown().await;
}

/// Issue 15: the remote's address may be a list tried in turn: a first address where nobody
/// listens is passed over for the next.
#[tokio::test]
async fn addresses_are_tried_in_turn() {
    let remote = Tern::start(config("127.0.0.1:0", None, "")).await;
    let dead = free_port();
    let bridge = format!(
        "[[bridges]]\nname = \"b\"\naddresses = [\"{dead}\", \"{}\"]\nreconnect_min_ms = 20\n\
         reconnect_max_ms = 50\ntopics = [{{ pattern = \"s/#\", direction = \"out\", qos = 1 }}]\n",
        remote.addr
    );
    let local = Tern::start(config("127.0.0.1:0", None, &bridge)).await;
    let publisher = Client::simple(local.addr, "pub").await;
    let mut subscriber = Client::simple(remote.addr, "sub").await;
    subscriber.subscribe("s/#", R::AtLeastOnce).await;
    wait_flowing(&publisher, &mut subscriber, "s/probe").await;
    let state = local.bridge();
    assert!(state.connected && state.reconnects >= 1, "{state:?}");
    local.shutdown().await;
    remote.shutdown().await;
}

/// Issue 15 (reload): a bridge whose configuration changed is restarted with the new one, a
/// removed one is stopped.
#[tokio::test]
async fn reload_restarts_a_changed_bridge_and_stops_a_removed_one() {
    let dir = TempDir::new("reload");
    std::fs::create_dir_all(dir.path()).expect("dir");
    let remote = Tern::start(config("127.0.0.1:0", None, "")).await;
    let file = dir.path().join("tern.toml");
    let base = "listen = [\"127.0.0.1:0\"]\nsys_interval = 0\ndurability = \"memory\"\n";
    let write = |topics: Option<&str>| {
        let bridges = topics.map_or(String::new(), |t| bridge_to(remote.addr, t));
        std::fs::write(&file, format!("{base}{bridges}")).expect("write the file");
    };
    write(Some("{ pattern = \"x/#\", direction = \"out\", qos = 1 }"));
    let local = Tern::start(ServerConfig::from_file(&file).expect("file")).await;
    let publisher = Client::simple(local.addr, "pub").await;
    let mut subscriber = Client::simple(remote.addr, "sub").await;
    subscriber.subscribe("#", R::AtLeastOnce).await;
    wait_flowing(&publisher, &mut subscriber, "x/probe").await;

    write(Some("{ pattern = \"y/#\", direction = \"out\", qos = 1 }"));
    let report = local.admin.reload().await;
    assert!(
        report.applied.iter().any(|a| a == "bridges (b)"),
        "{report:?}"
    );
    assert!(report.needs_restart.is_empty(), "{report:?}");
    wait_flowing(&publisher, &mut subscriber, "y/probe").await;
    publisher.publish("x/old", R::AtLeastOnce, false, "x").await;
    publisher.publish("y/new", R::AtLeastOnce, false, "y").await;
    loop {
        let got = recv_skipping_probes(&mut subscriber).await;
        assert_ne!(got.topic, "x/old", "the old rule still carries");
        if got.topic == "y/new" {
            break;
        }
    }

    // The old rule's subscription is gone from the bridge's session.
    assert_eq!(local.bridge_filters(), ["y/#"]);

    write(None);
    let report = local.admin.reload().await;
    assert!(
        report.applied.iter().any(|a| a == "bridges (b)"),
        "{report:?}"
    );
    assert!(local.bridges.snapshots().is_empty());
    local.shutdown().await;
    remote.shutdown().await;
}

/// The remote broker's side of one connection, played by the test (to resend a QoS 2
/// PUBLISH as a broker does after a lost PUBREC).
struct FakeRemote {
    stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

impl FakeRemote {
    async fn accept(listener: &tokio::net::TcpListener) -> FakeRemote {
        let (stream, _) = tokio::time::timeout(WAIT * 2, listener.accept())
            .await
            .expect("the bridge connects in time")
            .expect("accept");
        FakeRemote {
            stream,
            buf: bytes::BytesMut::new(),
        }
    }

    async fn recv(&mut self) -> tern_codec::Packet {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(packet) =
                tern_codec::Packet::decode(&mut self.buf, tern_codec::ProtocolVersion::V5, u32::MAX)
                    .expect("the bridge sends valid packets")
            {
                return packet;
            }
            self.buf.reserve(4096);
            let read = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("a packet in time")
                .expect("read");
            assert!(read > 0, "the bridge closed the connection");
        }
    }

    async fn send(&mut self, packet: tern_codec::Packet) {
        use tokio::io::AsyncWriteExt;
        let mut out = bytes::BytesMut::new();
        packet
            .encode(tern_codec::ProtocolVersion::V5, &mut out)
            .expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    /// CONNECT, then CONNACK with `session_present`.
    async fn handshake(&mut self, session_present: bool) {
        assert!(matches!(self.recv().await, tern_codec::Packet::Connect(_)));
        self.send(tern_codec::Packet::ConnAck(tern_codec::ConnAck {
            session_present,
            reason_code: tern_codec::ReasonCode::Success,
            properties: Default::default(),
        }))
        .await;
    }
}

fn qos2_publish(topic: &str, id: u16, dup: bool) -> tern_codec::Packet {
    tern_codec::Packet::Publish(tern_codec::Publish {
        dup,
        qos: tern_codec::QoS::ExactlyOnce,
        retain: false,
        topic: tern_codec::MqttStr::try_from(topic).expect("topic"),
        packet_id: id,
        properties: Default::default(),
        payload: bytes::Bytes::from_static(b"once"),
    })
}

/// Issue 15 with MQTT-4.3.3-9: a QoS 2 message from the remote is acknowledged (PUBREC) once
/// it is durable here; when the remote sends it again (DUP, same packet id: its PUBREC was
/// lost with the connection), the bridge answers PUBREC again and does not publish it twice.
#[tokio::test]
async fn qos2_resent_by_the_remote_is_not_published_twice() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let remote_addr = listener.local_addr().expect("address");
    let local = Tern::start(config(
        "127.0.0.1:0",
        None,
        &bridge_to(
            remote_addr,
            "{ pattern = \"f/#\", direction = \"in\", qos = 2 }",
        ),
    ))
    .await;
    let mut subscriber = Client::simple(local.addr, "sub").await;
    subscriber.subscribe("f/#", R::ExactlyOnce).await;

    let mut first = FakeRemote::accept(&listener).await;
    first.handshake(false).await;
    let tern_codec::Packet::Subscribe(subscribe) = first.recv().await else {
        panic!("SUBSCRIBE expected")
    };
    assert!(subscribe.subscriptions[0].options.no_local);
    first
        .send(tern_codec::Packet::SubAck(tern_codec::SubAck {
            packet_id: subscribe.packet_id,
            properties: Default::default(),
            reason_codes: vec![tern_codec::ReasonCode::GrantedQos2],
        }))
        .await;
    first.send(qos2_publish("f/x", 7, false)).await;
    assert!(matches!(first.recv().await, tern_codec::Packet::PubRec(ack) if ack.packet_id == 7));
    assert_eq!(subscriber.recv().await.topic, "f/x");
    drop(first);

    let mut second = FakeRemote::accept(&listener).await;
    second.handshake(true).await;
    second.send(qos2_publish("f/x", 7, true)).await;
    assert!(matches!(second.recv().await, tern_codec::Packet::PubRec(ack) if ack.packet_id == 7));
    second
        .send(tern_codec::Packet::PubRel(tern_codec::Ack::new(7)))
        .await;
    assert!(matches!(second.recv().await, tern_codec::Packet::PubComp(ack) if ack.packet_id == 7));
    second.send(qos2_publish("f/end", 8, false)).await;
    assert_eq!(
        subscriber.recv().await.topic,
        "f/end",
        "f/x was published here twice"
    );
    local.shutdown().await;
}

/// A server whose store takes nothing new (the disk reserve is the whole file system): a
/// QoS 1 or 2 message that needs storing (a retained one) is refused with 0x97.
fn refusing_store(dir: &Path, extra: &str) -> ServerConfig {
    let mut config = config("127.0.0.1:0", Some(dir), extra);
    config.min_free_disk = "100%".parse().expect("a size");
    config
}

/// SUBSCRIBE from the bridge, answered with success.
async fn grant_subscription(remote: &mut FakeRemote) -> tern_codec::Subscribe {
    let tern_codec::Packet::Subscribe(subscribe) = remote.recv().await else {
        panic!("SUBSCRIBE expected")
    };
    remote
        .send(tern_codec::Packet::SubAck(tern_codec::SubAck {
            packet_id: subscribe.packet_id,
            properties: Default::default(),
            reason_codes: vec![tern_codec::ReasonCode::GrantedQos2; subscribe.subscriptions.len()],
        }))
        .await;
    subscribe
}

/// Issue 15 ("acknowledged to the remote only once durable here"; review 15 MUST 1): a
/// message from the remote that the store here refuses (PUBACK 0x97: the disk is full) is not
/// acknowledged to the remote, which keeps it.
#[tokio::test]
async fn message_refused_by_the_local_store_is_not_acknowledged_to_the_remote() {
    let dir = TempDir::new("refuse-in");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let remote_addr = listener.local_addr().expect("address");
    let local = Tern::start(refusing_store(
        dir.path(),
        &bridge_to(
            remote_addr,
            "{ pattern = \"f/#\", direction = \"in\", qos = 1 }",
        ),
    ))
    .await;
    let mut remote = FakeRemote::accept(&listener).await;
    remote.handshake(false).await;
    grant_subscription(&mut remote).await;
    let mut publish = qos2_publish("f/kept", 5, false);
    if let tern_codec::Packet::Publish(p) = &mut publish {
        p.qos = tern_codec::QoS::AtLeastOnce;
        p.retain = true;
    }
    remote.send(publish).await;
    let answer = tokio::time::timeout(Duration::from_millis(1500), remote.recv()).await;
    assert!(
        answer.is_err(),
        "the bridge answered a message not stored here: {answer:?}"
    );
    assert!(
        local.bridge().messages_refused > 0,
        "the refusal is counted"
    );
    local.shutdown().await;
}

/// Issue 15 (the stored queue; review 15 MUST 1): a message the remote does not take now
/// (PUBACK 0x97 Quota exceeded) stays in the bridge's queue and is published again.
#[tokio::test]
async fn message_the_remote_cannot_store_is_published_again() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let remote_addr = listener.local_addr().expect("address");
    let local = Tern::start(config(
        "127.0.0.1:0",
        None,
        &bridge_to(
            remote_addr,
            "{ pattern = \"o/#\", direction = \"out\", qos = 1 }",
        ),
    ))
    .await;
    let mut remote = FakeRemote::accept(&listener).await;
    remote.handshake(false).await;
    let mut publisher = Client::simple(local.addr, "pub").await;
    publish_acknowledged(&mut publisher, "o/x", 1).await;
    let tern_codec::Packet::Publish(first) = remote.recv().await else {
        panic!("PUBLISH expected")
    };
    remote
        .send(tern_codec::Packet::PubAck(tern_codec::Ack {
            reason_code: tern_codec::ReasonCode::QuotaExceeded,
            ..tern_codec::Ack::new(first.packet_id)
        }))
        .await;
    let again = tokio::time::timeout(WAIT, remote.recv())
        .await
        .expect("the message is published again");
    let tern_codec::Packet::Publish(again) = again else {
        panic!("PUBLISH expected, got {again:?}")
    };
    assert_eq!(again.topic, first.topic);
    assert_eq!(again.payload, first.payload);
    remote
        .send(tern_codec::Packet::PubAck(tern_codec::Ack::new(
            again.packet_id,
        )))
        .await;
    local.shutdown().await;
}

/// Issue 15 (reload applies `[[bridges]]`; review 15 MUST 3): an `in` rule changed by a reload
/// is subscribed at the remote although the remote resumes the bridge's session there
/// (clean_start = false).
#[tokio::test]
async fn reload_subscribes_a_changed_in_rule_at_a_resumed_remote_session() {
    let dir = TempDir::new("reload-in");
    std::fs::create_dir_all(dir.path()).expect("dir");
    let remote = Tern::start(config("127.0.0.1:0", None, "")).await;
    let file = dir.path().join("tern.toml");
    let base = "listen = [\"127.0.0.1:0\"]\nsys_interval = 0\ndurability = \"memory\"\n";
    let write = |pattern: &str| {
        let rule = format!("{{ pattern = \"{pattern}\", direction = \"in\", qos = 1 }}");
        std::fs::write(&file, format!("{base}{}", bridge_to(remote.addr, &rule)))
            .expect("write the file");
    };
    write("a/#");
    let local = Tern::start(ServerConfig::from_file(&file).expect("file")).await;
    let remote_pub = Client::simple(remote.addr, "pub").await;
    let mut subscriber = Client::simple(local.addr, "sub").await;
    subscriber.subscribe("#", R::AtLeastOnce).await;
    wait_flowing(&remote_pub, &mut subscriber, "a/probe").await;

    write("b/#");
    let report = local.admin.reload().await;
    assert!(
        report.applied.iter().any(|a| a == "bridges (b)"),
        "{report:?}"
    );
    wait_flowing(&remote_pub, &mut subscriber, "b/probe").await;
    local.shutdown().await;
    remote.shutdown().await;
}

/// Issue 15 (reload; review 15 SHOULD): a reload whose bridge names TLS files that cannot be
/// used is reported as an error and leaves the running bridge as it is (it would not start).
#[tokio::test]
async fn reload_with_unusable_bridge_tls_files_keeps_the_bridge() {
    let dir = TempDir::new("reload-tls");
    std::fs::create_dir_all(dir.path()).expect("dir");
    let remote = Tern::start(config("127.0.0.1:0", None, "")).await;
    let file = dir.path().join("tern.toml");
    let base = "listen = [\"127.0.0.1:0\"]\nsys_interval = 0\ndurability = \"memory\"\n";
    let rule = "{ pattern = \"x/#\", direction = \"out\", qos = 1 }";
    std::fs::write(&file, format!("{base}{}", bridge_to(remote.addr, rule))).expect("write");
    let local = Tern::start(ServerConfig::from_file(&file).expect("file")).await;
    let publisher = Client::simple(local.addr, "pub").await;
    let mut subscriber = Client::simple(remote.addr, "sub").await;
    subscriber.subscribe("#", R::AtLeastOnce).await;
    wait_flowing(&publisher, &mut subscriber, "x/probe").await;

    let broken = format!(
        "{base}{}tls = {{ ca = \"/nonexistent/ca.pem\" }}\n",
        bridge_to(remote.addr, rule)
    );
    std::fs::write(&file, broken).expect("write");
    let report = local.admin.reload().await;
    assert!(
        report.errors.iter().any(|e| e.contains("bridge \"b\"")),
        "{report:?}"
    );
    assert!(
        !report.applied.iter().any(|a| a.starts_with("bridges")),
        "{report:?}"
    );
    wait_flowing(&publisher, &mut subscriber, "x/probe").await;
    local.shutdown().await;
    remote.shutdown().await;
}
