//! tern-client against the Tern broker, with rumqttc (a client we did not write) on the
//! other side where it proves what arrived: QoS flows in both protocol versions, MQTT 5
//! properties, the will, the outbound window, and reconnection with session resume across a
//! broker restart on a data directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tern_client::{
    Backoff, Client, ClientOptions, Endpoint, Event, Events, LastWill, Message, Properties,
    ProtocolVersion, QoS, ReasonCode, SubscriptionOptions,
};
use tern_server::{Durability, OpenConnections, Server, ServerConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

struct Broker {
    addr: SocketAddr,
    open: OpenConnections,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Broker {
    async fn start(config: ServerConfig) -> Broker {
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addrs()[0];
        let open = server.open_connections();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            server
                .run(stopped, Duration::from_secs(4))
                .await
                .expect("server runs");
        });
        Broker {
            addr,
            open,
            stop: Some(stop),
            task,
        }
    }

    async fn memory() -> Broker {
        Broker::start(config(SocketAddr::from(([127, 0, 0, 1], 0)))).await
    }

    /// Waits until the server holds `count` connections: a connection's task ends after the
    /// server has handled what it read, its DISCONNECT included.
    async fn wait_open(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.open.get() != count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server holds {} connections, not {count}",
                self.open.get()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("server stops")
            .expect("server task");
    }
}

fn config(addr: SocketAddr) -> ServerConfig {
    ServerConfig {
        listen: vec![addr],
        durability: Durability::Memory,
        ..ServerConfig::default()
    }
}

fn options(broker: &Broker, id: &str, version: ProtocolVersion) -> ClientOptions {
    let mut options = ClientOptions::new(Endpoint::tcp("127.0.0.1", broker.addr.port()), id);
    options.version = version;
    options
}

async fn next_message(events: &mut Events) -> Message {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(Event::Message(message))) => return message,
            Ok(Some(_)) => {}
            Ok(None) => panic!("client ended"),
            Err(_) => panic!("no message within {WAIT:?}"),
        }
    }
}

async fn subscribe(client: &Client, filter: &str, qos: QoS, properties: Properties) {
    let options = SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    };
    let suback = client
        .subscribe([(filter.to_owned(), options)], properties)
        .await
        .expect("queued")
        .await
        .expect("SUBACK");
    assert!(!suback.reason_codes[0].is_error(), "{suback:?}");
}

/// A rumqttc client whose events (publishes) come out of a channel.
async fn rumqttc_subscriber(
    addr: SocketAddr,
    id: &str,
    filter: &str,
) -> (
    rumqttc::AsyncClient,
    mpsc::UnboundedReceiver<rumqttc::Publish>,
) {
    let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed, ready) = oneshot::channel();
    let mut subscribed = Some(subscribed);
    client
        .subscribe(filter, rumqttc::QoS::ExactlyOnce)
        .await
        .expect("rumqttc subscribe");
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            match event {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    if let Some(s) = subscribed.take() {
                        let _ = s.send(());
                    }
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                    let _ = tx.send(p);
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(WAIT, ready)
        .await
        .expect("rumqttc SUBACK")
        .expect("rumqttc loop");
    (client, rx)
}

/// MQTT-4.3 (QoS 0, 1, 2 flows), in 3.1.1 and 5: every publish is acknowledged with success
/// and delivered once at the subscription's QoS; rumqttc receives the same messages.
#[tokio::test]
async fn qos_0_1_2_flows_both_versions_mqtt_4_3() {
    let broker = Broker::memory().await;
    let (_watcher, mut watched) = rumqttc_subscriber(broker.addr, "watcher", "flow/#").await;
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let (sub, mut events, _) =
            Client::connect(options(&broker, &format!("s{version}"), version))
                .await
                .expect("connect");
        subscribe(&sub, "flow/#", QoS::ExactlyOnce, Properties::default()).await;
        let (publisher, _pub_events, _) =
            Client::connect(options(&broker, &format!("p{version}"), version))
                .await
                .expect("connect");
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let payload = format!("{version} {qos:?}");
            let outcome = publisher
                .publish(Message::new("flow/t", payload.clone(), qos))
                .await
                .expect("queued")
                .await
                .expect("acknowledged");
            assert_eq!(outcome.reason_code, ReasonCode::Success);
            let message = next_message(&mut events).await;
            assert_eq!(message.payload, Bytes::from(payload.clone()));
            assert_eq!(message.qos, qos);
            let seen = tokio::time::timeout(WAIT, watched.recv())
                .await
                .expect("rumqttc receives")
                .expect("rumqttc loop");
            assert_eq!(seen.payload, Bytes::from(payload));
        }
        publisher.disconnect().await.expect("disconnect");
        sub.disconnect().await.expect("disconnect");
    }
    broker.shutdown().await;
}

/// MQTT 5 section 3.3.2.3: user properties, content type, response topic, correlation data
/// and message expiry reach the subscriber, with its subscription identifier (3.8.2.1.2).
#[tokio::test]
async fn mqtt5_properties_reach_the_subscriber_with_the_subscription_identifier() {
    let broker = Broker::memory().await;
    let (sub, mut events, connack) =
        Client::connect(options(&broker, "props-sub", ProtocolVersion::V5))
            .await
            .expect("connect");
    assert!(!connack.session_present);
    let sub_properties = Properties {
        subscription_identifiers: vec![42],
        ..Properties::default()
    };
    subscribe(&sub, "props/t", QoS::AtLeastOnce, sub_properties).await;
    let (publisher, _e, _) = Client::connect(options(&broker, "props-pub", ProtocolVersion::V5))
        .await
        .expect("connect");
    let mut message = Message::new("props/t", "body", QoS::AtLeastOnce);
    message.properties = Properties {
        user_properties: vec![("k".try_into().expect("str"), "v".try_into().expect("str"))],
        content_type: Some("text/plain".try_into().expect("str")),
        response_topic: Some("props/reply".try_into().expect("str")),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        message_expiry_interval: Some(300),
        ..Properties::default()
    };
    publisher
        .publish(message)
        .await
        .expect("queued")
        .await
        .expect("PUBACK");
    let got = next_message(&mut events).await;
    let p = &got.properties;
    assert_eq!(p.user_properties.len(), 1);
    assert_eq!(p.user_properties[0].0.as_str(), "k");
    assert_eq!(
        p.content_type.as_ref().map(|s| s.as_str()),
        Some("text/plain")
    );
    assert_eq!(
        p.response_topic.as_ref().map(|s| s.as_str()),
        Some("props/reply")
    );
    assert_eq!(p.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
    assert!(p.message_expiry_interval.is_some_and(|s| s <= 300));
    assert_eq!(p.subscription_identifiers, vec![42]);
    broker.shutdown().await;
}

/// MQTT-3.1.2-8 / MQTT 5 3.14.2.1 (0x04 Disconnect with Will Message): the will of
/// tern-client is published to rumqttc; a normal disconnection publishes none [MQTT-3.1.2-10].
#[tokio::test]
async fn will_published_on_disconnect_with_will_not_on_normal_mqtt_3_1_2_8() {
    let broker = Broker::memory().await;
    let (_watcher, mut watched) = rumqttc_subscriber(broker.addr, "will-watcher", "will/#").await;
    let mut with_will = options(&broker, "dies", ProtocolVersion::V5);
    with_will.will = Some(LastWill {
        topic: "will/dies".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    });
    let (normal, _e, _) = Client::connect(with_will.clone()).await.expect("connect");
    normal.disconnect().await.expect("disconnect");
    // The server has handled the DISCONNECT before the same client id connects again: were
    // the new CONNECT first, it would take the session over and publish the first will
    // [MQTT-3.1.4-3].
    broker.wait_open(1).await;
    let (dies, _e2, _) = Client::connect(with_will).await.expect("connect");
    dies.disconnect_with(ReasonCode::DisconnectWithWillMessage, Properties::default())
        .await
        .expect("disconnect");
    let will = tokio::time::timeout(WAIT, watched.recv())
        .await
        .expect("will arrives")
        .expect("loop");
    assert_eq!(will.topic, "will/dies");
    assert_eq!(&will.payload[..], b"gone");
    // Only one will came: the normal disconnection's would have been first.
    assert!(watched.try_recv().is_err());
    broker.shutdown().await;
}

/// Issue 13: the outbound window follows the broker's Receive Maximum (MQTT 5 3.3.4,
/// [MQTT-3.3.4-7]): 200 QoS 1 publishes through a window of 3 all arrive, in order.
#[tokio::test]
async fn many_publishes_through_a_small_receive_maximum_mqtt_3_3_4_7() {
    let mut config = config(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.limits.receive_maximum = 3;
    let broker = Broker::start(config).await;
    let (sub, mut events, _) = Client::connect(options(&broker, "win-sub", ProtocolVersion::V5))
        .await
        .expect("connect");
    subscribe(&sub, "win/t", QoS::AtLeastOnce, Properties::default()).await;
    let (publisher, _e, connack) =
        Client::connect(options(&broker, "win-pub", ProtocolVersion::V5))
            .await
            .expect("connect");
    assert_eq!(connack.properties.receive_maximum, Some(3));
    let mut pending = Vec::new();
    for n in 0..200u32 {
        let message = Message::new("win/t", n.to_be_bytes().to_vec(), QoS::AtLeastOnce);
        pending.push(publisher.publish(message).await.expect("queued"));
    }
    for answer in pending {
        assert_eq!(
            answer.await.expect("PUBACK").reason_code,
            ReasonCode::Success
        );
    }
    for n in 0..200u32 {
        assert_eq!(
            &next_message(&mut events).await.payload[..],
            &n.to_be_bytes()
        );
    }
    broker.shutdown().await;
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Issue 13 (reconnect and session resume), MQTT-3.2.2-2 (session present) and MQTT-4.4.0-1:
/// the broker restarts on its data directory; the client reconnects by itself with clean
/// start 0, finds its session, gets the message queued for it meanwhile, and the publish it
/// made while cut off is delivered once the connection is back.
#[tokio::test]
async fn reconnects_and_resumes_across_a_broker_restart_mqtt_4_4_0_1() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir =
        TempDir(std::env::temp_dir().join(format!("tern-client-{}-{nanos}", std::process::id())));
    let stored = |addr| {
        let mut config = config(addr);
        config.durability = Durability::Process;
        config.data_dir = dir.0.clone();
        config
    };
    let broker = Broker::start(stored(SocketAddr::from(([127, 0, 0, 1], 0)))).await;
    let addr = broker.addr;
    let mut resuming = options(&broker, "resumer", ProtocolVersion::V311);
    resuming.clean_start = false;
    resuming.reconnect = Some(Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        ..Backoff::default()
    });
    let (client, mut events, first) = Client::connect(resuming).await.expect("connect");
    assert!(!first.session_present);
    subscribe(&client, "resume/#", QoS::AtLeastOnce, Properties::default()).await;
    broker.shutdown().await;
    // Lost, then reconnecting.
    loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("event")
        {
            Some(Event::Reconnecting { .. }) => break,
            Some(_) => {}
            None => panic!("client ended"),
        }
    }
    let offline = client
        .publish(Message::new("resume/mine", "while away", QoS::AtLeastOnce))
        .await
        .expect("queued while offline");
    let broker = Broker::start(stored(addr)).await;
    let resumed = loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("event")
        {
            Some(Event::Connected(connected)) => break connected,
            Some(_) => {}
            None => panic!("client ended"),
        }
    };
    assert!(
        resumed.session_present,
        "the session was kept across the restart"
    );
    let outcome = tokio::time::timeout(WAIT, offline)
        .await
        .expect("acknowledged in time");
    assert_eq!(outcome.expect("PUBACK").reason_code, ReasonCode::Success);
    let mine = next_message(&mut events).await;
    assert_eq!(mine.topic, "resume/mine");
    client.disconnect().await.expect("disconnect");
    broker.shutdown().await;
}

/// MQTT-3.1.2-23 (keep alive): with nothing else to send, the client sends PINGREQ within the
/// keep-alive and the broker's PINGRESP keeps the connection up; traffic goes on after it.
#[tokio::test]
async fn keep_alive_pings_an_idle_connection_mqtt_3_1_2_23() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tern_client::{Direction, Packet, PacketObserver};
    let broker = Broker::memory().await;
    let pongs = Arc::new(AtomicUsize::new(0));
    let seen = pongs.clone();
    let (notify, mut notified) = mpsc::unbounded_channel();
    let mut idle = options(&broker, "idle", ProtocolVersion::V5);
    idle.keep_alive = 1;
    idle.observer = Some(PacketObserver(Arc::new(move |direction, packet| {
        if direction == Direction::Received && matches!(packet, Packet::PingResp) {
            seen.fetch_add(1, Ordering::Relaxed);
            let _ = notify.send(());
        }
    })));
    let (client, mut events, _) = Client::connect(idle).await.expect("connect");
    for _ in 0..2 {
        tokio::time::timeout(WAIT, notified.recv())
            .await
            .expect("PINGRESP within the keep-alive")
            .expect("observer alive");
    }
    subscribe(&client, "alive/t", QoS::AtMostOnce, Properties::default()).await;
    client
        .publish(Message::new("alive/t", "still here", QoS::AtMostOnce))
        .await
        .expect("queued");
    assert_eq!(&next_message(&mut events).await.payload[..], b"still here");
    assert!(pongs.load(Ordering::Relaxed) >= 2);
    broker.shutdown().await;
}

/// MQTT-3.8.3-3 (No Local) and 3.8.3.1 (Retain As Published): subscription options reach the
/// broker: the client's own publish is not sent back to it, another client's is, with the
/// retain flag as published.
#[tokio::test]
async fn subscription_options_no_local_and_retain_as_published_mqtt_3_8_3_3() {
    let broker = Broker::memory().await;
    let (me, mut events, _) = Client::connect(options(&broker, "nolocal", ProtocolVersion::V5))
        .await
        .expect("connect");
    let options_no_local = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        ..SubscriptionOptions::default()
    };
    me.subscribe(
        [("nl/t".to_owned(), options_no_local)],
        Properties::default(),
    )
    .await
    .expect("queued")
    .await
    .expect("SUBACK");
    me.publish(Message::new("nl/t", "mine", QoS::AtLeastOnce))
        .await
        .expect("queued")
        .await
        .expect("PUBACK");
    let (other, _e, _) = Client::connect(options(&broker, "other", ProtocolVersion::V5))
        .await
        .expect("connect");
    let mut theirs = Message::new("nl/t", "theirs", QoS::AtLeastOnce);
    theirs.retain = true;
    other
        .publish(theirs)
        .await
        .expect("queued")
        .await
        .expect("PUBACK");
    let got = next_message(&mut events).await;
    assert_eq!(&got.payload[..], b"theirs", "own message not echoed");
    assert!(got.retain, "retain as published");
    broker.shutdown().await;
}

/// MQTT-3.2.2-11 / MQTT-3.2.2-14: a client does not send a QoS above the broker's Maximum QoS
/// nor a retained message when Retain Available is 0; tern-client refuses them itself, and
/// what the broker takes still goes through.
#[tokio::test]
async fn maximum_qos_and_retain_available_are_respected_mqtt_3_2_2_11() {
    let mut config = config(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.mqtt.max_qos = 1;
    config.mqtt.retain_available = false;
    let broker = Broker::start(config).await;
    let (client, _events, connack) =
        Client::connect(options(&broker, "limits", ProtocolVersion::V5))
            .await
            .expect("connect");
    assert_eq!(connack.properties.maximum_qos, Some(QoS::AtLeastOnce));
    let too_high = client
        .publish(Message::new("lim/t", "x", QoS::ExactlyOnce))
        .await
        .expect("queued")
        .await;
    assert!(
        matches!(
            too_high,
            Err(tern_client::ClientError::QosNotSupported(QoS::AtLeastOnce))
        ),
        "{too_high:?}"
    );
    let mut retained = Message::new("lim/t", "x", QoS::AtLeastOnce);
    retained.retain = true;
    let refused = client.publish(retained).await.expect("queued").await;
    assert!(
        matches!(refused, Err(tern_client::ClientError::RetainNotSupported)),
        "{refused:?}"
    );
    let fine = client
        .publish(Message::new("lim/t", "x", QoS::AtLeastOnce))
        .await
        .expect("queued")
        .await
        .expect("PUBACK");
    assert!(!fine.reason_code.is_error(), "{fine:?}");
    broker.shutdown().await;
}

/// Review 13 MUST #2, MQTT 5 3.3.2.3.4 and MQTT-3.3.2-12: with Topic Alias Maximum 10 in
/// CONNECT, Tern (default `outbound_topic_aliases = 64`) sends the topic once, then the alias
/// alone with an empty topic; every message still comes out with its topic.
#[tokio::test]
async fn inbound_topic_aliases_from_tern_are_resolved_mqtt_3_3_2_12() {
    use std::sync::{Arc, Mutex};
    use tern_client::{Direction, Packet, PacketObserver};
    let broker = Broker::memory().await;
    let raw_topics = Arc::new(Mutex::new(Vec::new()));
    let seen = raw_topics.clone();
    let mut aliased = options(&broker, "aliased", ProtocolVersion::V5);
    aliased.properties.topic_alias_maximum = Some(10);
    aliased.observer = Some(PacketObserver(Arc::new(move |direction, packet| {
        if let (Direction::Received, Packet::Publish(publish)) = (direction, packet) {
            if let Ok(mut seen) = seen.lock() {
                seen.push(publish.topic.as_str().to_owned());
            }
        }
    })));
    let (client, mut events, _) = Client::connect(aliased).await.expect("connect");
    subscribe(&client, "alias/#", QoS::AtLeastOnce, Properties::default()).await;
    for n in 0..3 {
        client
            .publish(Message::new(
                "alias/some/long/topic",
                format!("m{n}"),
                QoS::AtLeastOnce,
            ))
            .await
            .expect("queued")
            .await
            .expect("PUBACK");
    }
    for n in 0..3 {
        let message = next_message(&mut events).await;
        assert_eq!(message.topic, "alias/some/long/topic", "message {n}");
        assert_eq!(&message.payload[..], format!("m{n}").as_bytes());
        assert!(message.properties.topic_alias.is_some());
    }
    let raw = raw_topics.lock().map(|t| t.clone()).unwrap_or_default();
    assert_eq!(raw.len(), 3);
    assert!(
        raw[1..].iter().all(String::is_empty),
        "the broker used the alias alone: {raw:?}"
    );
    client.disconnect().await.expect("disconnect");
    broker.shutdown().await;
}
