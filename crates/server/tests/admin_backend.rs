//! The server's admin backend (issue 13, `impl AdminBackend`), driven against a running
//! broker with rumqttc clients: clients and sessions listed, a client's facts, kick (MQTT 5
//! DISCONNECT 0x98), a session deleted, subscriptions, retained messages listed, read and
//! cleared, publish as the broker, tracing, the metrics scrape after known traffic, `$SYS`
//! values after known traffic, and reload.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::v5::{self, Client5};
use common::{Client, WAIT, wait_until};
use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
use tern_admin::{AdminBackend, Page, PublishRequest, SubscriptionQuery};
use tern_server::{Server, ServerConfig};
use tokio::sync::oneshot;

struct Running {
    addr: std::net::SocketAddr,
    backend: Arc<dyn AdminBackend>,
    _stop: oneshot::Sender<()>,
}

async fn start(config: ServerConfig) -> Running {
    let server = Server::bind(config).await.expect("bind");
    let addr = server.local_addrs()[0];
    let backend = server.admin_backend();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        let _ = server.run(stopped, Duration::from_secs(2)).await;
    });
    Running {
        addr,
        backend,
        _stop: stop,
    }
}

fn page(limit: usize, after: Option<&str>) -> Page {
    Page {
        limit,
        after: after.map(str::to_owned),
    }
}

/// Issue 13: clients and sessions listed with their facts; subscriptions by client and by
/// filter; pages by client id.
#[tokio::test]
async fn clients_sessions_and_subscriptions_are_listed() {
    let broker = start(common::config()).await;
    let mut a = Client5::simple(broker.addr, "alpha").await;
    a.subscribe("sensors/#", v5::QoS::AtLeastOnce).await;
    let mut b = Client::simple(broker.addr, "beta").await;
    b.subscribe("sensors/+/t", rumqttc::QoS::AtMostOnce).await;

    let clients = broker.backend.clients(&page(0, None));
    let ids: Vec<&str> = clients.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(ids, ["alpha", "beta"]);
    assert_eq!(clients[0].protocol, "5");
    assert_eq!(clients[1].protocol, "3.1.1");
    assert_eq!(clients[0].keep_alive_s, 30);
    assert!(
        clients[0]
            .peer
            .as_deref()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(clients[0].connected_at <= now && clients[0].connected_at + 60 > now);
    let second = broker.backend.clients(&page(1, Some("alpha")));
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].client_id, "beta");

    let detail = broker.backend.client("alpha").expect("alpha");
    assert_eq!(detail.subscriptions.len(), 1);
    assert_eq!(detail.subscriptions[0].filter, "sensors/#");
    assert_eq!(detail.subscriptions[0].qos, 1);
    assert!(broker.backend.client("nobody").is_none());

    let all = broker.backend.subscriptions(&SubscriptionQuery::default());
    assert_eq!(all.len(), 2);
    let of_beta = broker.backend.subscriptions(&SubscriptionQuery {
        client_id: Some("beta".to_owned()),
        ..Default::default()
    });
    assert_eq!(of_beta[0].filter, "sensors/+/t");
    let by_filter = broker.backend.subscriptions(&SubscriptionQuery {
        filter: Some("sensors/#".to_owned()),
        ..Default::default()
    });
    assert_eq!(by_filter.len(), 1);
    assert_eq!(by_filter[0].client_id, "alpha");

    let sessions = broker.backend.sessions(&page(10, None));
    assert_eq!(sessions.len(), 2);
    assert!(sessions.iter().all(|s| s.connected));
    let stats = broker.backend.stats();
    assert_eq!(stats.connections, 2);
    assert_eq!(stats.subscriptions, 2);
    assert!(broker.backend.readiness().ready);
}

/// Issue 13: "list/inspect/kick clients (MQTT 5 gets DISCONNECT 0x98)"; the session stays,
/// and deleting it ends it.
#[tokio::test]
async fn kick_sends_administrative_action_and_delete_ends_the_session() {
    let broker = start(common::config()).await;
    let mut options = v5::options(broker.addr, "kicked");
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(600));
    let (mut client, _) = Client5::connect(options).await;
    assert!(broker.backend.kick("kicked"));
    // rumqttc reports the broker's DISCONNECT as the end of its event loop, with the code.
    let ended = client
        .next_matching(|event| match event {
            rumqttc::v5::Event::Incoming(Packet5::Disconnect(d)) => Some(d.reason_code),
            _ => None,
        })
        .await;
    match ended {
        Ok(code) => assert_eq!(code, DisconnectReasonCode::AdministrativeAction),
        Err(error) => assert!(error.contains("AdministrativeAction"), "{error}"),
    }
    wait_until("kicked is offline", || {
        broker.backend.clients(&page(10, None)).is_empty()
    })
    .await;
    assert!(!broker.backend.kick("kicked"), "not connected");
    let sessions = broker.backend.sessions(&page(10, None));
    assert_eq!(sessions.len(), 1, "the session stays");
    assert!(!sessions[0].connected);
    assert!(
        sessions[0]
            .expires_in_s
            .is_some_and(|s| s <= 600 && s > 500)
    );
    assert!(broker.backend.delete_session("kicked"));
    assert!(broker.backend.sessions(&page(10, None)).is_empty());
    assert!(!broker.backend.delete_session("kicked"));
    // The kick counted; the delete of an offline session closed nothing.
    let text = broker.backend.metrics_text();
    assert!(text.contains("tern_connections_kicked_total 1\n"), "{text}");
}

/// Issue 13: "list/get/delete retained messages, publish": a message published by the
/// broker reaches a subscriber; retained ones are listed, read and cleared.
#[tokio::test]
async fn publish_and_retained_messages() {
    let broker = start(common::config()).await;
    let mut sub = Client::simple(broker.addr, "reader").await;
    sub.subscribe("news/#", rumqttc::QoS::AtLeastOnce).await;
    broker
        .backend
        .publish(PublishRequest {
            topic: "news/today".to_owned(),
            payload: Some("hello".to_owned()),
            qos: 1,
            retain: true,
            content_type: Some("text/plain".to_owned()),
            ..Default::default()
        })
        .expect("publish");
    let publish = sub.recv().await;
    assert_eq!(publish.topic, "news/today");
    assert_eq!(&publish.payload[..], b"hello");
    broker
        .backend
        .publish(PublishRequest {
            topic: "news/bin".to_owned(),
            payload_base64: Some("AAEC".to_owned()),
            retain: true,
            ..Default::default()
        })
        .expect("publish");
    let listed = broker.backend.retained("news/#", &page(10, None)).unwrap();
    assert_eq!(listed.len(), 2);
    let message = broker.backend.retained_message("news/bin").unwrap();
    assert_eq!(message.payload_base64, "AAEC");
    let text = broker.backend.retained_message("news/today").unwrap();
    assert_eq!(text.payload.as_deref(), Some("hello"));
    assert_eq!(text.content_type.as_deref(), Some("text/plain"));
    assert_eq!(broker.backend.delete_retained("news/bin"), Ok(true));
    assert_eq!(broker.backend.delete_retained("news/bin"), Ok(false));
    assert!(
        broker
            .backend
            .retained("news/#/x", &page(10, None))
            .is_err()
    );
    assert!(
        broker
            .backend
            .publish(PublishRequest {
                topic: "a/+".to_owned(),
                ..Default::default()
            })
            .is_err(),
        "a wildcard topic is refused"
    );
    assert!(
        broker
            .backend
            .publish(PublishRequest {
                topic: "a".to_owned(),
                payload: Some("x".to_owned()),
                payload_base64: Some("eA==".to_owned()),
                ..Default::default()
            })
            .is_err(),
        "both payload fields are refused"
    );
    assert!(broker.backend.set_client_tracing("reader", true));
    assert!(broker.backend.client("reader").unwrap().tracing);
    assert!(!broker.backend.set_client_tracing("nobody", true));
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Issue 13: "a test that scrapes /metrics and checks the values after known traffic"; no
/// client id or topic as a label.
#[tokio::test]
async fn metrics_after_known_traffic() {
    let broker = start(common::config()).await;
    let mut sub = Client::simple(broker.addr, "metrics-sub").await;
    sub.subscribe("m/#", rumqttc::QoS::AtLeastOnce).await;
    let publisher = Client::simple(broker.addr, "metrics-pub").await;
    for _ in 0..3 {
        publisher
            .publish("m/a", rumqttc::QoS::AtMostOnce, false, b"12345".to_vec())
            .await;
    }
    publisher
        .publish("m/b", rumqttc::QoS::AtLeastOnce, true, b"1234567".to_vec())
        .await;
    for _ in 0..4 {
        sub.recv().await;
    }
    let text = broker.backend.metrics_text();
    assert_eq!(
        sample(&text, "tern_messages_received_total{qos=\"0\"}"),
        3.0
    );
    assert_eq!(
        sample(&text, "tern_messages_received_total{qos=\"1\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "tern_payload_received_bytes_total{qos=\"0\"}"),
        15.0
    );
    assert_eq!(sample(&text, "tern_messages_sent_total{qos=\"0\"}"), 3.0);
    assert_eq!(sample(&text, "tern_messages_sent_total{qos=\"1\"}"), 1.0);
    assert_eq!(
        sample(&text, "tern_connections{listener=\"\",protocol=\"3.1.1\"}"),
        2.0
    );
    assert_eq!(sample(&text, "tern_sessions{state=\"connected\"}"), 2.0);
    assert_eq!(sample(&text, "tern_subscriptions"), 1.0);
    assert_eq!(sample(&text, "tern_retained_messages"), 1.0);
    assert_eq!(sample(&text, "tern_retained_bytes"), 7.0);
    assert_eq!(sample(&text, "tern_connections_accepted_total"), 2.0);
    assert!(sample(&text, "tern_network_received_bytes_total") > 40.0);
    assert!(sample(&text, "process_resident_memory_bytes") > 0.0);
    assert!(sample(&text, "process_open_fds") > 0.0);
    assert!(text.contains("tern_session_queue_depth_bucket{le=\"0.0\"} 2"));
    assert!(
        !text.contains("metrics-sub") && !text.contains("m/a"),
        "no ids or topics"
    );
    let stats = broker.backend.stats();
    assert_eq!(stats.messages_received, 4);
    assert_eq!(stats.retained_messages, 1);
}

/// Issue 13 `$SYS`: Mosquitto's names, every `sys_interval`, values after known traffic,
/// read by rumqttc subscribing `$SYS/#`.
#[tokio::test]
async fn sys_topics_after_known_traffic() {
    let config = ServerConfig {
        sys_interval: 1,
        ..common::config()
    };
    let broker = start(config).await;
    let mut sub = Client::simple(broker.addr, "sys-sub").await;
    sub.subscribe("data", rumqttc::QoS::AtMostOnce).await;
    let publisher = Client::simple(broker.addr, "sys-pub").await;
    publisher
        .publish("data", rumqttc::QoS::AtMostOnce, false, b"x".to_vec())
        .await;
    sub.recv().await;
    sub.subscribe("$SYS/#", rumqttc::QoS::AtMostOnce).await;
    let mut seen = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    // The retained values come at once; the next interval's follow. Wait for a round that
    // counted the traffic above.
    while seen
        .get("$SYS/broker/messages/received")
        .map(String::as_str)
        != Some("1")
        || seen
            .get("$SYS/broker/clients/connected")
            .map(String::as_str)
            != Some("2")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "$SYS values: {seen:?}"
        );
        let publish = sub.recv().await;
        seen.insert(
            publish.topic.clone(),
            String::from_utf8_lossy(&publish.payload).into_owned(),
        );
    }
    for topic in [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/total",
        "$SYS/broker/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
        "$SYS/broker/load/messages/received/1min",
        "$SYS/broker/messages/stored",
    ] {
        while !seen.contains_key(topic) {
            let publish = sub.recv().await;
            seen.insert(
                publish.topic.clone(),
                String::from_utf8_lossy(&publish.payload).into_owned(),
            );
        }
    }
    assert!(seen["$SYS/broker/version"].starts_with("tern version "));
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"));
    assert_eq!(seen["$SYS/broker/clients/total"], "2");
    // Review 13 NIT 14: Mosquitto's payload bytes ("x": 1 byte), from a round after the
    // publish was counted (those read from now on).
    let topic = "$SYS/broker/publish/bytes/received";
    seen.remove(topic);
    while !seen.contains_key(topic) {
        let publish = sub.recv().await;
        seen.insert(
            publish.topic.clone(),
            String::from_utf8_lossy(&publish.payload).into_owned(),
        );
    }
    assert_eq!(seen[topic], "1");
}

/// Issue 13 reload: the file read again; the log level applied (or reported), a changed
/// limit reported in `needs_restart`, a broken file reported in `errors`.
#[tokio::test]
async fn reload_reports_what_needs_a_restart() {
    let dir = std::env::temp_dir().join(format!("tern-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tern.toml");
    std::fs::write(
        &path,
        "listen = [\"127.0.0.1:0\"]\ndurability = \"memory\"\n[limits]\nmax_inflight = 10\n",
    )
    .unwrap();
    let config = ServerConfig::from_file(&path).unwrap();
    let broker = start(config).await;
    assert_eq!(
        broker.backend.config()["values"]["limits"]["max_inflight"],
        10
    );
    std::fs::write(
        &path,
        "listen = [\"127.0.0.1:0\"]\ndurability = \"memory\"\n[limits]\nmax_inflight = 20\nmax_retained_messages = 1\n",
    )
    .unwrap();
    let report = broker.backend.reload().await;
    assert_eq!(report.needs_restart, ["limits.max_inflight"], "{report:?}");
    assert!(
        report
            .applied
            .contains(&"limits.max_retained_messages".to_owned()),
        "{report:?}"
    );
    // The new retained limit is in force: a second retained topic is refused.
    let publisher = Client::simple(broker.addr, "limited").await;
    publisher
        .publish("r/1", rumqttc::QoS::AtMostOnce, true, b"a".to_vec())
        .await;
    publisher
        .publish("r/2", rumqttc::QoS::AtMostOnce, true, b"b".to_vec())
        .await;
    wait_until("the first retained message is kept", || {
        broker.backend.retained_message("r/1").is_some()
    })
    .await;
    publisher
        .publish("r/1", rumqttc::QoS::AtMostOnce, true, b"c".to_vec())
        .await;
    wait_until("r/1 replaced", || {
        broker
            .backend
            .retained_message("r/1")
            .is_some_and(|m| m.payload.as_deref() == Some("c"))
    })
    .await;
    assert!(
        broker.backend.retained_message("r/2").is_none(),
        "over the reloaded limit"
    );
    assert!(report.errors.is_empty(), "{report:?}");
    let config = broker.backend.config();
    assert_eq!(config["values"]["limits"]["max_inflight"], 20, "the file");
    // Review 13 #9: the running configuration is what is in force; the change waits.
    assert_eq!(config["running"]["limits"]["max_inflight"], 10, "{config}");
    assert_eq!(config["running"]["limits"]["max_retained_messages"], 1);
    assert_eq!(
        config["pending_restart"],
        serde_json::json!(["limits.max_inflight"])
    );
    std::fs::write(&path, "limits = 3").unwrap();
    let report = broker.backend.reload().await;
    assert_eq!(report.errors.len(), 1, "{report:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 13, the contract's paging of subscriptions (`SubscriptionQuery`): walked one entry a
/// page with the key the HTTP layer sends (`client\0filter`), every subscription comes back
/// exactly once, with and without `client_id`.
#[tokio::test]
async fn subscriptions_walked_one_a_page_come_back_once() {
    let broker = start(common::config()).await;
    let mut clients = Vec::new();
    for id in ["delta", "echo"] {
        let mut client = Client::simple(broker.addr, id).await;
        for filter in ["a/#", "z1", "z2"] {
            client.subscribe(filter, rumqttc::QoS::AtMostOnce).await;
        }
        clients.push(client);
    }
    let walk = |client_id: Option<&str>| {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..20 {
            let query = SubscriptionQuery {
                client_id: client_id.map(str::to_owned),
                filter: None,
                page: page(1, after.as_deref()),
            };
            let Some(entry) = broker.backend.subscriptions(&query).pop() else {
                return seen;
            };
            after = Some(format!("{}\0{}", entry.client_id, entry.filter));
            seen.push(format!("{} {}", entry.client_id, entry.filter));
        }
        panic!("the walk did not end: {seen:?}");
    };
    assert_eq!(
        walk(None),
        [
            "delta a/#",
            "delta z1",
            "delta z2",
            "echo a/#",
            "echo z1",
            "echo z2"
        ]
    );
    assert_eq!(walk(Some("delta")), ["delta a/#", "delta z1", "delta z2"]);
    for client in clients {
        client.disconnect().await;
    }
}

/// Review 13 #3, issue 13 "what is applied vs what is reported": a reload applies the file
/// with the command line's overrides, as `tern serve` did at start. An unchanged file
/// reloads to no change at all (nothing applied, nothing needing a restart) and the
/// overridden log level stays.
#[tokio::test]
async fn reload_keeps_the_command_line_overrides() {
    let dir = std::env::temp_dir().join(format!("tern-reload-over-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tern.toml");
    std::fs::write(
        &path,
        "listen = [\"127.0.0.1:1\"]\nlog_level = \"info\"\ndurability = \"fsync\"\n\
         data_dir = \"/nonexistent/tern\"\n",
    )
    .unwrap();
    let mut config = ServerConfig::from_file(&path).unwrap();
    let overrides = tern_server::Overrides {
        listen: Some(vec!["127.0.0.1:0".parse().unwrap()]),
        log_level: Some("debug".to_owned()),
        data_dir: Some(dir.join("data")),
        in_memory: true,
        allow_anonymous: true,
    };
    overrides.apply(&mut config);
    let broker = start(config).await;
    let report = broker.backend.reload().await;
    assert!(report.applied.is_empty(), "{report:?}");
    assert!(report.needs_restart.is_empty(), "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    let config = broker.backend.config();
    assert_eq!(config["log_level"], "debug");
    assert_eq!(config["running"]["log_level"], "debug", "{config}");
    assert_eq!(config["running"]["durability"], "memory");
    assert_eq!(config["running"]["auth"]["allow_anonymous"], true);
    assert_eq!(config["values"]["durability"], "fsync", "the file");
    assert_eq!(
        config["overridden"],
        serde_json::json!([
            "listen",
            "log_level",
            "data_dir",
            "durability",
            "auth.allow_anonymous"
        ])
    );
    // A key the file changes is still reported, with the overrides kept.
    std::fs::write(
        &path,
        "listen = [\"127.0.0.1:1\"]\nlog_level = \"info\"\ndurability = \"fsync\"\n\
         data_dir = \"/nonexistent/tern\"\nsys_interval = 3\n",
    )
    .unwrap();
    let report = broker.backend.reload().await;
    assert_eq!(report.needs_restart, ["sys_interval"], "{report:?}");
    assert_eq!(broker.backend.config()["log_level"], "debug");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Review 13 #6 (issue 13 `$SYS`: the broker's own topics, kept out of the retained figures):
/// the admin API may neither clear nor publish a `$` topic, so the count of the broker's own
/// retained messages cannot drift and the retained totals stay the users'.
#[tokio::test]
async fn system_topics_are_refused_by_publish_and_retained_delete() {
    let config = ServerConfig {
        sys_interval: 1,
        ..common::config()
    };
    let broker = start(config).await;
    wait_until("$SYS/broker/uptime retained", || {
        broker
            .backend
            .retained_message("$SYS/broker/uptime")
            .is_some()
    })
    .await;
    let refused = broker.backend.delete_retained("$SYS/broker/uptime");
    assert!(
        matches!(refused, Err(tern_admin::AdminError::Invalid(_))),
        "{refused:?}"
    );
    let request = |topic: &str| PublishRequest {
        topic: topic.to_owned(),
        payload: Some("v".to_owned()),
        payload_base64: None,
        qos: 0,
        retain: true,
        content_type: None,
        message_expiry_s: None,
    };
    let refused = broker.backend.publish(request("$SYS/broker/uptime"));
    assert!(
        matches!(refused, Err(tern_admin::AdminError::Invalid(_))),
        "{refused:?}"
    );
    broker.backend.publish(request("user/r")).unwrap();
    wait_until("the user's retained message counted", || {
        broker.backend.stats().retained_messages == 1
    })
    .await;
    assert!(
        broker
            .backend
            .retained_message("$SYS/broker/uptime")
            .is_some()
    );
}

/// Review 13 #11 (configuration.md, Reload): a file that does not parse changes none of its
/// keys, and the files the running configuration names (here an ACL file) are read again
/// all the same; the report says both.
#[tokio::test]
async fn a_broken_file_still_reloads_the_files_it_names() {
    let dir = std::env::temp_dir().join(format!("tern-reload-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let acl = dir.join("acl");
    std::fs::write(&acl, "topic readwrite #\n").unwrap();
    let path = dir.join("tern.toml");
    std::fs::write(
        &path,
        format!(
            "listen = [\"127.0.0.1:0\"]\ndurability = \"memory\"\n[auth]\nallow_anonymous = true\n\
             acl_file = {:?}\n[limits]\nmax_queued_messages = 7\n",
            acl.display().to_string()
        ),
    )
    .unwrap();
    let broker = start(ServerConfig::from_file(&path).unwrap()).await;
    std::fs::write(&path, "[limits]\nmax_queued_messages = \"many\"\n").unwrap();
    let report = broker.backend.reload().await;
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(report.errors[0].contains("keys stay"), "{report:?}");
    assert_eq!(
        report.applied,
        ["auth files (0 password, 1 ACL, 0 JWT key)"],
        "{report:?}"
    );
    assert!(report.needs_restart.is_empty(), "{report:?}");
    assert_eq!(
        broker.backend.config()["values"]["limits"]["max_queued_messages"],
        7
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Review 13 NIT 16: one name for the protocol version. An MQTT 5 client is "5" in the API's
/// client list (the contract) and in the `protocol` label of `tern_connections`.
#[tokio::test]
async fn the_protocol_version_has_one_name() {
    let broker = start(common::config()).await;
    let _client = v5::Client5::simple(broker.addr, "five").await;
    let clients = broker.backend.clients(&page(10, None));
    assert_eq!(clients[0].protocol, "5");
    let text = broker.backend.metrics_text();
    assert_eq!(
        sample(&text, "tern_connections{listener=\"\",protocol=\"5\"}"),
        1.0,
        "{text}"
    );
}
