//! Nothing acknowledged is lost when the broker is killed: the real `tern` binary is killed with
//! SIGKILL at a random moment while publishers send QoS 1, QoS 2 and retained messages to a
//! persistent subscriber (online in some rounds, offline in others, and in others connected but
//! silent: it takes the messages and never acknowledges them, so what the publishers get
//! acknowledged must have been stored after the grace the broker gives unstored deliveries),
//! several rounds on one data directory. After the last restart, every message that got its PUBACK is delivered at least
//! once, every QoS 2 message that got its PUBREC exactly once (and none twice), and every
//! acknowledged retained message is there.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_codec::{
    Ack, Connect, MqttStr, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    Subscription, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const V311: ProtocolVersion = ProtocolVersion::V311;
const ROUNDS: u32 = 6;

fn text(value: &str) -> MqttStr {
    MqttStr::try_from(value).unwrap()
}

/// A small xorshift generator: the kill moments need not be secret, only varied.
struct Random(u64);

impl Random {
    fn new() -> Random {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        eprintln!("crash test seed {seed}");
        Random(seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

struct Broker {
    child: Child,
    addr: SocketAddr,
}

/// How long a start may take: recovery after several kills on a loaded CI machine included.
const START_WAIT: Duration = Duration::from_secs(60);

impl Broker {
    /// Starts `tern serve` on 127.0.0.1:0 and reads the address it bound from its log, so no
    /// port is reserved and released for another test to take meanwhile; a broker that exits
    /// before listening fails the test with its log.
    fn start(dir: &PathBuf) -> Broker {
        // Queues large enough that no message is dropped for overflow: the test is about crashes.
        let config = dir.with_extension("toml");
        std::fs::write(&config, "[limits]\nmax_queued_messages = 1000000\n").unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .arg("--config")
            .arg(&config)
            .args(["--log-level", "info"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        // Reads the log to its end, so the broker never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        let deadline = Instant::now() + START_WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if line.contains("listening for MQTT") {
                        if let Some(addr) = logged_addr(&line) {
                            return Broker { child, addr };
                        }
                    }
                    seen.push(line);
                }
                Err(error) => {
                    // Killed if still running (a timeout), so its exit status is known.
                    let _ = child.kill();
                    panic!(
                        "broker did not start ({error}; exit: {:?}); its log:\n{}",
                        child.wait(),
                        seen.join("\n")
                    )
                }
            }
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// The `addr=` field of a log line.
fn logged_addr(line: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .and_then(|addr| addr.parse().ok())
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Conn {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    buf: BytesMut,
}

impl Conn {
    async fn connect(addr: SocketAddr, client_id: &str, clean: bool) -> Option<(Conn, bool)> {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (reader, writer) = stream.into_split();
        let mut conn = Conn {
            reader,
            writer,
            buf: BytesMut::new(),
        };
        conn.send(&Packet::Connect(Box::new(Connect {
            protocol: V311,
            clean_start: clean,
            keep_alive: 0,
            properties: Properties::default(),
            client_id: text(client_id),
            will: None,
            username: None,
            password: None,
        })))
        .await
        .ok()?;
        match conn.recv().await? {
            Packet::ConnAck(connack) => Some((conn, connack.session_present)),
            _ => None,
        }
    }

    async fn send(&mut self, packet: &Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        packet.encode(V311, &mut out).unwrap();
        self.writer.write_all(&out).await
    }

    /// The next packet; `None` when the connection is gone.
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) = Packet::decode(&mut self.buf, V311, u32::MAX).ok()? {
                return Some(packet);
            }
            self.buf.reserve(4096);
            match self.reader.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// A publisher's session state, kept across reconnects like a real client's.
#[derive(Default)]
struct PublisherState {
    next_packet_id: u16,
    /// PUBLISHes without their PUBACK or PUBREC yet, by packet id.
    unacked: HashMap<u16, Publish>,
}

/// What the test knows across rounds.
#[derive(Default)]
struct Ledger {
    /// QoS 1 ids that got PUBACK.
    acked_q1: HashSet<u32>,
    /// QoS 2 ids that got PUBREC (the broker then owns them).
    accepted_q2: HashSet<u32>,
    /// Every QoS 2 id sent.
    published_q2: HashSet<u32>,
    /// The QoS 1 and QoS 2 publishers' own session state.
    publishers: [PublisherState; 2],
    /// QoS 2 ids waiting for PUBCOMP, by packet id, to release after a reconnect.
    unreleased_q2: HashMap<u16, u32>,
    /// Retained topics whose publish got PUBACK, with the value.
    acked_retained: HashMap<String, u32>,
    /// Deliveries to the subscriber, by message id.
    delivered: HashMap<u32, u32>,
    /// Inbound QoS 2 packet ids the subscriber received and has not seen PUBREL for
    /// (the subscriber's own session state, kept across reconnects).
    subscriber_pending: HashSet<u16>,
    next_id: u32,
}

fn payload(id: u32) -> Bytes {
    Bytes::copy_from_slice(&id.to_be_bytes())
}

fn id_of(payload: &[u8]) -> u32 {
    u32::from_be_bytes(payload[..4].try_into().unwrap())
}

/// Publishes until the connection breaks or `stop` passes, recording acknowledgements. Like a
/// real client, it resends unacknowledged PUBLISHes (DUP, same packet id) and PUBRELs when it
/// reconnects [MQTT-4.4.0-1], and never reuses a packet id whose flow is unfinished.
async fn publish_qos(addr: SocketAddr, qos: QoS, ledger: Arc<Mutex<Ledger>>, stop: Instant) {
    let client_id = if qos == QoS::ExactlyOnce {
        "crash-pub-2"
    } else {
        "crash-pub-1"
    };
    let slot = usize::from(qos.as_u8() - 1);
    let Some((mut conn, _)) = Conn::connect(addr, client_id, false).await else {
        return;
    };
    let (resend, unreleased) = {
        let ledger = ledger.lock().unwrap();
        let unacked: Vec<Publish> = ledger.publishers[slot].unacked.values().cloned().collect();
        let unreleased: Vec<u16> = ledger
            .unreleased_q2
            .keys()
            .copied()
            .filter(|_| qos == QoS::ExactlyOnce)
            .collect();
        (unacked, unreleased)
    };
    for packet_id in unreleased {
        if conn
            .send(&Packet::PubRel(Ack::new(packet_id)))
            .await
            .is_err()
        {
            return;
        }
    }
    for mut publish in resend {
        publish.dup = true;
        if conn.send(&Packet::Publish(publish)).await.is_err() {
            return;
        }
    }
    loop {
        loop {
            let publish = {
                let mut ledger = ledger.lock().unwrap();
                if ledger.publishers[slot].unacked.len() >= 10 || Instant::now() >= stop {
                    break;
                }
                ledger.next_id += 1;
                let id = ledger.next_id;
                let packet_id = loop {
                    let state = &mut ledger.publishers[slot];
                    state.next_packet_id = state.next_packet_id.checked_add(1).unwrap_or(1);
                    let candidate = state.next_packet_id;
                    if !state.unacked.contains_key(&candidate)
                        && !ledger.unreleased_q2.contains_key(&candidate)
                    {
                        break candidate;
                    }
                };
                let retained = qos == QoS::AtLeastOnce && id % 5 == 0;
                let topic = if retained {
                    format!("crash/r/{id}")
                } else {
                    format!("crash/q/{}", qos.as_u8())
                };
                let publish = Publish {
                    dup: false,
                    qos,
                    retain: retained,
                    topic: text(&topic),
                    packet_id,
                    properties: Properties::default(),
                    payload: payload(id),
                };
                if qos == QoS::ExactlyOnce {
                    ledger.published_q2.insert(id);
                }
                ledger.publishers[slot]
                    .unacked
                    .insert(packet_id, publish.clone());
                publish
            };
            if conn.send(&Packet::Publish(publish)).await.is_err() {
                return;
            }
        }
        let idle = {
            let ledger = ledger.lock().unwrap();
            ledger.publishers[slot].unacked.is_empty()
                && (qos == QoS::AtLeastOnce || ledger.unreleased_q2.is_empty())
        };
        if idle {
            return;
        }
        let Some(packet) = conn.recv().await else {
            return;
        };
        let reply = {
            let mut ledger = ledger.lock().unwrap();
            match packet {
                Packet::PubAck(ack) => {
                    if let Some(publish) = ledger.publishers[slot].unacked.remove(&ack.packet_id) {
                        let id = id_of(&publish.payload);
                        if publish.retain {
                            ledger.acked_retained.insert(publish.topic.to_string(), id);
                        }
                        ledger.acked_q1.insert(id);
                    }
                    None
                }
                Packet::PubRec(ack) => {
                    if let Some(publish) = ledger.publishers[slot].unacked.remove(&ack.packet_id) {
                        let id = id_of(&publish.payload);
                        ledger.accepted_q2.insert(id);
                        ledger.unreleased_q2.insert(ack.packet_id, id);
                    }
                    Some(Packet::PubRel(Ack::new(ack.packet_id)))
                }
                Packet::PubComp(ack) => {
                    ledger.unreleased_q2.remove(&ack.packet_id);
                    None
                }
                _ => None,
            }
        };
        if let Some(reply) = reply
            && conn.send(&reply).await.is_err()
        {
            return;
        }
    }
}

fn subscribe_packet(filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        subscriptions: vec![Subscription {
            filter: text(filter),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
    })
}

/// Creates the persistent subscriber's session and subscription, and waits for the SUBACK.
async fn create_subscriber(addr: SocketAddr) {
    let (mut conn, _) = Conn::connect(addr, "crash-sub", false).await.unwrap();
    conn.send(&subscribe_packet("crash/q/#", QoS::ExactlyOnce))
        .await
        .unwrap();
    assert!(matches!(conn.recv().await, Some(Packet::SubAck(_))));
}

/// Receives as the persistent subscriber (QoS 2 by Method B: a packet id awaiting PUBREL is
/// a duplicate) until the connection breaks or it is quiet for `quiet`.
async fn subscribe(addr: SocketAddr, ledger: Arc<Mutex<Ledger>>, quiet: Duration) {
    let Some((mut conn, present)) = Conn::connect(addr, "crash-sub", false).await else {
        return;
    };
    assert!(present, "the persistent subscriber's session survived");
    while let Ok(Some(packet)) = tokio::time::timeout(quiet, conn.recv()).await {
        let reply = {
            let mut ledger = ledger.lock().unwrap();
            match packet {
                Packet::Publish(publish) => {
                    let id = id_of(&publish.payload);
                    match publish.qos {
                        QoS::AtMostOnce => None,
                        QoS::AtLeastOnce => {
                            *ledger.delivered.entry(id).or_default() += 1;
                            Some(Packet::PubAck(Ack::new(publish.packet_id)))
                        }
                        QoS::ExactlyOnce => {
                            if ledger.subscriber_pending.insert(publish.packet_id) {
                                *ledger.delivered.entry(id).or_default() += 1;
                            }
                            Some(Packet::PubRec(Ack::new(publish.packet_id)))
                        }
                    }
                }
                Packet::PubRel(ack) => {
                    ledger.subscriber_pending.remove(&ack.packet_id);
                    Some(Packet::PubComp(Ack::new(ack.packet_id)))
                }
                _ => None,
            }
        };
        if let Some(reply) = reply
            && conn.send(&reply).await.is_err()
        {
            return;
        }
    }
}

/// Connects as the persistent subscriber and reads without acknowledging or counting anything,
/// as a client that crashes before it processes its messages, until the connection breaks.
async fn subscribe_silently(addr: SocketAddr) {
    let Some((mut conn, _)) = Conn::connect(addr, "crash-sub", false).await else {
        return;
    };
    while conn.recv().await.is_some() {}
}

/// How the persistent subscriber behaves during a round.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Subscriber {
    Online,
    Offline,
    Silent,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_in_every_round() {
    let dir = std::env::temp_dir().join(format!(
        "tern-crash-{}-{}",
        std::process::id(),
        Random::new().below(1 << 40)
    ));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut random = Random::new();
    for round in 0..ROUNDS {
        let broker = Broker::start(&dir);
        if round == 0 {
            create_subscriber(broker.addr).await;
        }
        let mode =
            [Subscriber::Online, Subscriber::Offline, Subscriber::Silent][round as usize % 3];
        let stop = Instant::now() + Duration::from_millis(2000);
        let subscriber = if mode == Subscriber::Silent {
            tokio::spawn(subscribe_silently(broker.addr))
        } else {
            tokio::spawn(subscribe(
                broker.addr,
                ledger.clone(),
                Duration::from_secs(5),
            ))
        };
        if mode == Subscriber::Offline {
            // Let it subscribe (round 0) or resume, then leave: messages queue for it.
            tokio::time::sleep(Duration::from_millis(200)).await;
            subscriber.abort();
        }
        let q1 = tokio::spawn(publish_qos(
            broker.addr,
            QoS::AtLeastOnce,
            ledger.clone(),
            stop,
        ));
        let q2 = tokio::spawn(publish_qos(
            broker.addr,
            QoS::ExactlyOnce,
            ledger.clone(),
            stop,
        ));
        tokio::time::sleep(Duration::from_millis(300 + random.below(1200))).await;
        broker.kill();
        for task in [q1, q2] {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        if mode != Subscriber::Offline {
            let _ = tokio::time::timeout(Duration::from_secs(6), subscriber).await;
        }
    }

    // The last start: drain the queue, finish the interrupted QoS 2 flows, check.
    let broker = Broker::start(&dir);
    let stop = Instant::now();
    publish_qos(broker.addr, QoS::ExactlyOnce, ledger.clone(), stop).await;
    subscribe(broker.addr, ledger.clone(), Duration::from_millis(1500)).await;
    let retained = {
        let (mut conn, _) = Conn::connect(broker.addr, "crash-check", true)
            .await
            .unwrap();
        conn.send(&subscribe_packet("crash/r/#", QoS::AtMostOnce))
            .await
            .unwrap();
        let mut found = HashMap::new();
        while let Ok(Some(packet)) =
            tokio::time::timeout(Duration::from_millis(1000), conn.recv()).await
        {
            if let Packet::Publish(publish) = packet {
                found.insert(publish.topic.to_string(), id_of(&publish.payload));
            }
        }
        found
    };
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(dir.with_extension("toml"));

    let ledger = ledger.lock().unwrap();
    assert!(
        ledger.acked_q1.len() > 50,
        "the test published: {} QoS 1 acked",
        ledger.acked_q1.len()
    );
    assert!(
        ledger.accepted_q2.len() > 50,
        "{} QoS 2 accepted",
        ledger.accepted_q2.len()
    );
    let lost_q1: Vec<u32> = ledger
        .acked_q1
        .iter()
        .filter(|id| *id % 5 != 0 && !ledger.delivered.contains_key(id))
        .copied()
        .collect();
    assert!(
        lost_q1.is_empty(),
        "acknowledged QoS 1 messages lost: {lost_q1:?}"
    );
    let lost_q2: Vec<u32> = ledger
        .accepted_q2
        .iter()
        .filter(|id| !ledger.delivered.contains_key(id))
        .copied()
        .collect();
    assert!(
        lost_q2.is_empty(),
        "accepted QoS 2 messages lost: {lost_q2:?}"
    );
    let twice: Vec<u32> = ledger
        .delivered
        .iter()
        .filter(|(id, count)| **count > 1 && ledger.published_q2.contains(id))
        .map(|(id, _)| *id)
        .collect();
    assert!(
        twice.is_empty(),
        "QoS 2 messages delivered twice: {twice:?}"
    );
    let missing: Vec<&String> = ledger
        .acked_retained
        .keys()
        .filter(|topic| !retained.contains_key(*topic))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged retained messages lost: {missing:?}"
    );
    eprintln!(
        "crash test: {} QoS 1 acked, {} QoS 2 accepted, {} retained acked, {} delivered",
        ledger.acked_q1.len(),
        ledger.accepted_q2.len(),
        ledger.acked_retained.len(),
        ledger.delivered.len()
    );
}
