//! Fuzzes the broker core (`Broker` and `Connection`, sans-IO) with sequences of operations from
//! several clients and steps of a fake clock, checking invariants after every operation.
//!
//! The input is a small broker configuration (limits, a store double that is durable at once or
//! only after a clock step, or no store) and a list of operations: a client connects (version,
//! clean start, session expiry, Receive Maximum, keep-alive, will), subscribes, unsubscribes,
//! publishes, answers what it received, resends or releases its own QoS 2 messages, sends
//! arbitrary bytes, disconnects, loses its transport, or polls its connection; the clock moves;
//! the broker crashes and restarts from what the store made durable.
//!
//! The harness plays the clients: it decodes what every `Connection` gives to `poll_transmit`
//! and keeps, per client, what the client holds of its session (messages received and not
//! finished, its own QoS 2 messages not released), across reconnections and restarts. The
//! clients follow the protocol except for the arbitrary bytes and the acknowledgements of
//! identifiers they do not know, which are kept out of the model's way: a raw acknowledgement of
//! an identifier the client holds is not sent.
//!
//! Invariants (any failure panics):
//! - nothing panics, and every byte the broker sends decodes;
//! - packet identifiers are unique among a session's messages in flight, both in the session and
//!   as the client sees them (no new PUBLISH under an identifier the client still holds);
//! - a connection never has more QoS 1/2 PUBLISH packets unacknowledged than the client's
//!   Receive Maximum and the broker's `max_inflight` [MQTT-3.3.4-7], and resends nothing within
//!   a connection [MQTT-4.4.0-1];
//! - a session's queue never holds more than `max_queued_messages`;
//! - one connection owns a session: the session's owner is the client's latest accepted
//!   connection, and only while it is open; a connection that has been taken over sends no
//!   PUBLISH [MQTT-3.1.4-2];
//! - QoS 2 is exactly once towards subscribers: a (non-retained) QoS 2 message reaches a session
//!   as a new message at most once per route (once, plus once per shared subscription the session
//!   has had), and a QoS 2 message the client holds unfinished stays in flight in its session
//!   under the same identifier until the client finishes it [MQTT-4.3.3, MQTT-4.8.2-4]; all of
//!   this across restarts too, where the broker has only its durable changes (every delivery
//!   the store holds has its message body);
//! - no atomic group of the store stays open between operations.

#![no_main]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tern_broker::persist::{
    Change, MessageId, Persistence, Recovered, RecoveredDelivery, RecoveredSession, RecoveredWill,
    Seq, StoredDelivery,
};
use tern_broker::{
    Broker, BrokerConfig, Connection, ConnectionId, Hooks, InflightState, Message, Session,
    SubscriptionRecord, Wakeup,
};
use tern_codec::{
    Ack, Connect, Disconnect, MqttStr, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, RetainHandling, Subscribe, Subscription, SubscriptionOptions, Unsubscribe, Will,
};

const CLIENTS: usize = 4;
/// Connections open at once, at most (taken-over ones included).
const MAX_CONNECTIONS: usize = 8;
const TOPICS: [&str; 5] = ["a", "a/b", "a/c", "b", "$SYS/x"];
const FILTERS: [&str; 10] = [
    "a",
    "a/+",
    "a/#",
    "#",
    "+",
    "b",
    "$share/g/a/+",
    "$share/g/#",
    "$share/h/a/b",
    "$share/g/b",
];

#[derive(Arbitrary, Debug)]
struct Input {
    config: Config,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
struct Config {
    max_inflight: u8,
    max_queued: u8,
    queue_qos0_offline: bool,
    /// The broker's Receive Maximum (inbound QoS 2 awaiting PUBREL, MQTT 5 clients).
    receive_maximum: u8,
    outbound_aliases: bool,
    /// 3.x persistent sessions expire after two seconds instead of never.
    v3_expiry: bool,
    store: StoreMode,
    unstored_grace: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum StoreMode {
    None,
    /// Every change is durable as soon as it is submitted.
    Immediate,
    /// Changes become durable at the next clock step (or `Commit`).
    Lagging,
}

#[derive(Arbitrary, Debug)]
struct WillSpec {
    topic: u8,
    qos: u8,
    retain: bool,
    delay: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect {
        client: u8,
        version: u8,
        clean_start: bool,
        expiry: u8,
        receive_maximum: u8,
        keep_alive: u8,
        will: Option<WillSpec>,
    },
    Subscribe {
        conn: u8,
        filter: u8,
        qos: u8,
        flags: u8,
    },
    Unsubscribe {
        conn: u8,
        filter: u8,
    },
    Publish {
        conn: u8,
        topic: u8,
        qos: u8,
        retain: bool,
        /// Bit 0: empty payload (clears a retained message); bit 1: a Message Expiry Interval
        /// of one second (MQTT 5); bits 2-3: a topic alias (MQTT 5).
        flags: u8,
    },
    /// Resends one of the client's QoS 2 messages not released yet (DUP set).
    Resend {
        conn: u8,
        pick: u8,
    },
    /// PUBREL for one of the client's QoS 2 messages.
    Release {
        conn: u8,
        pick: u8,
    },
    /// Answers one message the client received: PUBACK, PUBREC (or, MQTT 5, a refusing PUBREC)
    /// or PUBCOMP.
    Ack {
        conn: u8,
        pick: u8,
        refuse: bool,
    },
    AckAll {
        conn: u8,
    },
    /// An acknowledgement of an identifier the client does not hold.
    StrayAck {
        conn: u8,
        kind: u8,
        id: u16,
    },
    Ping {
        conn: u8,
    },
    Disconnect {
        conn: u8,
        with_will: bool,
        expiry: Option<u8>,
    },
    TransportClosed {
        conn: u8,
    },
    Raw {
        conn: u8,
        bytes: Vec<u8>,
    },
    Advance {
        amount: u8,
    },
    Poll {
        conn: u8,
        budget: u8,
    },
    PollAll,
    Commit,
    /// The broker stops without warning (a crash, or `kill -9`) and starts again from what the
    /// store made durable; the clients keep their side of their sessions.
    Restart,
}

/// A wakeup that does nothing: the harness polls the connections itself.
struct Quiet;

impl Wakeup for Quiet {
    fn wake(&self) {}
}

/// A store double: keeps the changes, durable at once or once committed, and holds back what
/// an open atomic group covers; rebuilds what a restart reads back from the durable ones.
struct MemStore {
    lagging: bool,
    state: Mutex<StoreState>,
}

#[derive(Default)]
struct StoreState {
    /// Every change submitted, in order (sequence number = index + 1).
    log: Vec<Change>,
    submitted: u64,
    committed: u64,
    /// First sequence numbers of the open atomic groups.
    groups: Vec<u64>,
}

/// A session as the store keeps it.
#[derive(Default)]
struct StoredSession {
    expiry: Option<tern_broker::SessionExpiry>,
    subscriptions: BTreeMap<MqttStr, SubscriptionRecord>,
    queue: BTreeMap<u64, StoredDelivery>,
    /// In the order the store first saw them (the order they are sent again in).
    inflight: Vec<(u16, InflightState, StoredDelivery)>,
    inbound_qos2: Vec<u16>,
    will: Option<RecoveredWill>,
}

impl MemStore {
    fn new(lagging: bool) -> MemStore {
        MemStore {
            lagging,
            state: Mutex::default(),
        }
    }

    fn commit(&self) {
        let mut state = self.state.lock().unwrap();
        state.committed = state.submitted;
    }

    /// A store holding only the durable changes of this one (what survives a crash), all
    /// durable, the state a broker reads back from them, and the clients whose session ended
    /// in a change the crash lost.
    fn crash(&self) -> (MemStore, Recovered, HashSet<MqttStr>) {
        let durable = self.durable().get();
        let state = self.state.lock().unwrap();
        let log: Vec<Change> = state.log[..durable as usize].to_vec();
        let lost_ends = state.log[durable as usize..]
            .iter()
            .filter_map(|change| match change {
                Change::SessionEnded { client_id } => Some(client_id.clone()),
                _ => None,
            })
            .collect();
        let recovered = recover(&log);
        let survivor = MemStore::new(self.lagging);
        {
            let mut next = survivor.state.lock().unwrap();
            next.submitted = log.len() as u64;
            next.committed = next.submitted;
            next.log = log;
        }
        (survivor, recovered, lost_ends)
    }

    fn open_groups(&self) -> usize {
        self.state.lock().unwrap().groups.len()
    }
}

impl Persistence for MemStore {
    fn submit(&self, change: Change) -> Seq {
        let mut state = self.state.lock().unwrap();
        state.log.push(change);
        state.submitted += 1;
        Seq(state.submitted)
    }

    fn durable(&self) -> Seq {
        let state = self.state.lock().unwrap();
        let done = if self.lagging {
            state.committed
        } else {
            state.submitted
        };
        // Nothing of an open group, nor after its start, is durable.
        Seq(match state.groups.iter().min() {
            Some(&first) => done.min(first - 1),
            None => done,
        })
    }

    fn wake_when_durable(&self, _seq: Seq, _wakeup: Arc<dyn Wakeup>) {}

    fn submitted(&self) -> Seq {
        Seq(self.state.lock().unwrap().submitted)
    }

    fn begin_group(&self) -> u64 {
        let mut state = self.state.lock().unwrap();
        let token = state.submitted + 1;
        state.groups.push(token);
        token
    }

    fn end_group(&self, token: u64) {
        let mut state = self.state.lock().unwrap();
        let index = state.groups.iter().position(|&t| t == token);
        let index = index.expect("end_group of a group that is not open");
        state.groups.swap_remove(index);
    }
}

/// What a broker reads back from `log` at start-up, as the store would rebuild it.
fn recover(log: &[Change]) -> Recovered {
    let mut messages: HashMap<MessageId, Arc<Message>> = HashMap::new();
    let mut sessions: BTreeMap<MqttStr, StoredSession> = BTreeMap::new();
    let mut retained: BTreeMap<MqttStr, Arc<Message>> = BTreeMap::new();
    for change in log {
        match change.clone() {
            Change::Message(message) => {
                messages.insert(message.id, Arc::new(message));
            }
            Change::MessageRouted { .. } => {}
            Change::Session {
                client_id, expiry, ..
            } => sessions.entry(client_id).or_default().expiry = Some(expiry),
            Change::SessionEnded { client_id } => {
                sessions.remove(&client_id);
            }
            Change::Subscribed {
                client_id,
                filter,
                record,
            } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.subscriptions.insert(filter, record);
                }
            }
            Change::Unsubscribed { client_id, filter } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.subscriptions.remove(&filter);
                }
            }
            Change::Queued {
                client_id,
                position,
                delivery,
            } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.queue.insert(position, delivery);
                }
            }
            Change::Unqueued {
                client_id,
                position,
            } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.queue.remove(&position);
                }
            }
            Change::Inflight {
                client_id,
                packet_id,
                state,
                delivery,
            } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    set_inflight(session, packet_id, state, delivery);
                }
            }
            Change::Dispatched {
                client_id,
                position,
                packet_id,
                state,
                delivery,
            } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.queue.remove(&position);
                    set_inflight(session, packet_id, state, delivery);
                }
            }
            Change::InflightDone {
                client_id,
                packet_id,
            } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.inflight.retain(|(id, _, _)| *id != packet_id);
                }
            }
            Change::InboundQos2 {
                client_id,
                packet_id,
            } => {
                if let Some(session) = sessions.get_mut(&client_id)
                    && !session.inbound_qos2.contains(&packet_id)
                {
                    session.inbound_qos2.push(packet_id);
                }
            }
            Change::InboundQos2Released {
                client_id,
                packet_id,
            } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.inbound_qos2.retain(|&id| id != packet_id);
                }
            }
            Change::Retained(message) => {
                retained.insert(message.topic.clone(), message);
            }
            Change::RetainedCleared { topic } => {
                retained.remove(&topic);
            }
            Change::Will {
                client_id,
                message,
                delay,
                expiry_interval,
            } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.will = Some(RecoveredWill {
                        message,
                        delay,
                        expiry_interval,
                    });
                }
            }
            Change::WillCleared { client_id } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.will = None;
                }
            }
        }
    }
    let body = |delivery: &StoredDelivery| {
        let message = messages.get(&delivery.message_id).unwrap_or_else(|| {
            panic!(
                "the store holds a delivery of message {} without its body",
                delivery.message_id
            )
        });
        RecoveredDelivery {
            message: message.clone(),
            qos: delivery.qos,
            retain: delivery.retain,
            subscription_ids: delivery.subscription_ids.clone(),
            shared_filter: delivery.shared_filter.clone(),
        }
    };
    // As tern-store counts it: every id the store still holds (bodies, deliveries, retained
    // messages, wills), so no new message takes the id of one that comes back.
    let max_id = messages
        .keys()
        .copied()
        .chain(retained.values().map(|message| message.id))
        .chain(sessions.values().flat_map(|session| {
            let queued = session.queue.values().map(|delivery| delivery.message_id);
            let inflight = session.inflight.iter().map(|(_, _, d)| d.message_id);
            let will = session.will.iter().map(|will| will.message.id);
            queued.chain(inflight).chain(will)
        }))
        .max()
        .unwrap_or(0);
    let next_message_id = max_id + 1;
    Recovered {
        sessions: sessions
            .into_iter()
            .filter_map(|(client_id, session)| {
                Some(RecoveredSession {
                    client_id,
                    expiry: session.expiry?,
                    offline_for: Duration::ZERO,
                    subscriptions: session.subscriptions.into_iter().collect(),
                    queue: session
                        .queue
                        .iter()
                        .map(|(&position, delivery)| (position, body(delivery)))
                        .collect(),
                    inflight: session
                        .inflight
                        .iter()
                        .map(|(id, state, delivery)| (*id, *state, body(delivery)))
                        .collect(),
                    inbound_qos2: session.inbound_qos2,
                    will: session.will,
                })
            })
            .collect(),
        retained: retained.into_values().collect(),
        next_message_id,
    }
}

/// A new in-flight entry, or the new state of one.
fn set_inflight(
    session: &mut StoredSession,
    packet_id: u16,
    state: InflightState,
    delivery: StoredDelivery,
) {
    match session
        .inflight
        .iter_mut()
        .find(|(id, _, _)| *id == packet_id)
    {
        Some(entry) => *entry = (packet_id, state, delivery),
        None => session.inflight.push((packet_id, state, delivery)),
    }
}

/// A message the client received and has not finished.
#[derive(Debug)]
struct Inbound {
    qos: QoS,
    payload: Bytes,
    /// QoS 2: PUBREC sent (and taken by the broker).
    rec_sent: bool,
}

/// What a client holds of its session, and what it has seen of it.
#[derive(Default)]
struct Client {
    /// The broker's session the state below belongs to; reset when it changes.
    session: Option<Arc<Session>>,
    /// Received QoS 1/2 messages not finished, by packet identifier.
    inbound: BTreeMap<u16, Inbound>,
    /// QoS 2: PUBREL of a message the client held received, PUBCOMP still to send. (A PUBREL
    /// of an identifier the client does not hold, which follows a stray PUBREC, is answered at
    /// once, as a client does: answered later, its PUBCOMP could complete a new message the
    /// broker has since sent under the same identifier.)
    pubcomp_due: Vec<u16>,
    /// New (non-retained) QoS 2 arrivals per message number.
    copies: HashMap<u32, u32>,
    /// Shared filters subscribed to in this session.
    shared_filters: HashSet<Vec<u8>>,
    /// Own QoS 2 messages not released yet: packet identifier, the PUBLISH as first sent, and
    /// whether its PUBREC came.
    outbound: BTreeMap<u16, (Publish, bool)>,
    next_id: u16,
    /// The latest connection whose CONNECT the broker accepted.
    latest: Option<ConnectionId>,
}

impl Client {
    fn reset_session(&mut self, session: Option<Arc<Session>>) {
        let latest = self.latest;
        let next_id = self.next_id;
        *self = Client {
            session,
            latest,
            next_id,
            ..Client::default()
        };
    }

    /// A packet identifier for a new PUBLISH, not used by an own QoS 2 message.
    fn allocate(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.outbound.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    /// Whether the client holds `id` in any flow.
    fn knows(&self, id: u16) -> bool {
        self.inbound.contains_key(&id)
            || self.pubcomp_due.contains(&id)
            || self.outbound.contains_key(&id)
    }
}

struct Conn {
    conn: Connection,
    client: usize,
    version: ProtocolVersion,
    /// QoS 1/2 PUBLISH packets the client may have unacknowledged on this connection.
    window: usize,
    /// Identifiers of QoS 1/2 PUBLISH packets received on this connection and not yet
    /// acknowledged on it (PUBACK, PUBCOMP, refusing PUBREC).
    unacked: HashSet<u16>,
    /// Another connection of the same client has been accepted since.
    superseded: bool,
    /// Topic aliases the client set up towards the broker, by alias.
    aliases: HashMap<u16, MqttStr>,
}

struct Harness {
    broker: Arc<Broker>,
    store: Option<Arc<MemStore>>,
    config: BrokerConfig,
    now: Instant,
    conns: Vec<Conn>,
    clients: Vec<Client>,
    next_message: u32,
    next_sub_id: u16,
}

fn text(value: &str) -> MqttStr {
    MqttStr::try_from(value).unwrap()
}

fn qos(value: u8) -> QoS {
    match value % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The message number of a payload the harness made.
fn message_number(payload: &[u8]) -> Option<u32> {
    match payload {
        [0xA5, a, b, c, d] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

impl Harness {
    fn new(config: &Config) -> Harness {
        let broker_config = BrokerConfig {
            max_inflight: u16::from(config.max_inflight % 4 + 1),
            max_queued_messages: usize::from(config.max_queued % 8 + 1),
            queue_qos0_offline: config.queue_qos0_offline,
            receive_maximum: u16::from(config.receive_maximum % 4 + 1),
            outbound_topic_aliases: if config.outbound_aliases { 2 } else { 0 },
            topic_alias_maximum: 3,
            persistent_session_expiry: config.v3_expiry.then(|| Duration::from_secs(2)),
            unstored_grace: Duration::from_millis(u64::from(config.unstored_grace % 4) * 5),
            ..BrokerConfig::default()
        };
        let store = match config.store {
            StoreMode::None => None,
            mode => Some(Arc::new(MemStore::new(mode == StoreMode::Lagging))),
        };
        let broker = Broker::with_persistence(
            broker_config.clone(),
            Hooks::default(),
            store.clone().map(|store| store as Arc<dyn Persistence>),
        );
        Harness {
            broker,
            store,
            config: broker_config,
            now: Instant::now(),
            conns: Vec::new(),
            clients: (0..CLIENTS).map(|_| Client::default()).collect(),
            next_message: 0,
            next_sub_id: 0,
        }
    }

    fn payload(&mut self) -> Bytes {
        self.next_message += 1;
        let mut payload = vec![0xA5];
        payload.extend_from_slice(&self.next_message.to_be_bytes());
        Bytes::from(payload)
    }

    fn pick_conn(&self, conn: u8) -> Option<usize> {
        (!self.conns.is_empty()).then(|| usize::from(conn) % self.conns.len())
    }

    /// Whether the broker takes packets from connection `ci` into its session.
    fn processes(&self, ci: usize) -> bool {
        let c = &self.conns[ci];
        c.conn.is_connected() && !c.conn.is_closed() && !c.superseded
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Connect {
                client,
                version,
                clean_start,
                expiry,
                receive_maximum,
                keep_alive,
                will,
            } => self.connect(
                usize::from(client) % CLIENTS,
                version,
                clean_start,
                expiry,
                receive_maximum,
                keep_alive,
                will,
            ),
            Op::Subscribe {
                conn,
                filter,
                qos: q,
                flags,
            } => {
                let Some(ci) = self.pick_conn(conn) else {
                    return;
                };
                let v5 = self.conns[ci].version.is_v5();
                let filter = FILTERS[usize::from(filter) % FILTERS.len()];
                let options = SubscriptionOptions {
                    qos: qos(q),
                    no_local: v5 && flags & 1 != 0 && !filter.starts_with("$share"),
                    retain_as_published: v5 && flags & 2 != 0,
                    retain_handling: if v5 {
                        match (flags >> 2) % 3 {
                            0 => RetainHandling::SendAtSubscribe,
                            1 => RetainHandling::SendAtSubscribeIfNew,
                            _ => RetainHandling::DoNotSend,
                        }
                    } else {
                        RetainHandling::SendAtSubscribe
                    },
                };
                let mut properties = Properties::default();
                if v5 && flags & 16 != 0 {
                    properties.subscription_identifiers = vec![u32::from(flags >> 5) + 1];
                }
                self.next_sub_id = self.next_sub_id.wrapping_add(1).max(1);
                self.client_sends(
                    ci,
                    Packet::Subscribe(Subscribe {
                        packet_id: self.next_sub_id,
                        properties,
                        subscriptions: vec![Subscription {
                            filter: text(filter),
                            options,
                        }],
                    }),
                );
            }
            Op::Unsubscribe { conn, filter } => {
                let Some(ci) = self.pick_conn(conn) else {
                    return;
                };
                self.next_sub_id = self.next_sub_id.wrapping_add(1).max(1);
                self.client_sends(
                    ci,
                    Packet::Unsubscribe(Unsubscribe {
                        packet_id: self.next_sub_id,
                        properties: Properties::default(),
                        filters: vec![text(FILTERS[usize::from(filter) % FILTERS.len()])],
                    }),
                );
            }
            Op::Publish {
                conn,
                topic,
                qos: q,
                retain,
                flags,
            } => {
                let Some(ci) = self.pick_conn(conn) else {
                    return;
                };
                let topic = text(TOPICS[usize::from(topic) % TOPICS.len()]);
                let qos = qos(q);
                let payload = if flags & 1 != 0 && retain {
                    Bytes::new()
                } else {
                    self.payload()
                };
                let packet_id = if qos == QoS::AtMostOnce {
                    0
                } else {
                    self.clients[self.conns[ci].client].allocate()
                };
                let mut properties = Properties::default();
                let mut topic_sent = topic.clone();
                if self.conns[ci].version.is_v5() {
                    if flags & 2 != 0 {
                        properties.message_expiry_interval = Some(1);
                    }
                    let alias = u16::from((flags >> 2) & 3);
                    if alias != 0 {
                        properties.topic_alias = Some(alias);
                        let known = self.conns[ci].aliases.get(&alias) == Some(&topic);
                        if known {
                            topic_sent = MqttStr::default();
                        } else {
                            self.conns[ci].aliases.insert(alias, topic.clone());
                        }
                    }
                }
                self.client_sends(
                    ci,
                    Packet::Publish(Publish {
                        dup: false,
                        qos,
                        retain,
                        topic: topic_sent,
                        packet_id,
                        properties,
                        payload,
                    }),
                );
            }
            Op::Resend { conn, pick } => {
                let Some(ci) = self.pick_conn(conn) else {
                    return;
                };
                let client = &self.clients[self.conns[ci].client];
                if client.outbound.is_empty() {
                    return;
                }
                let index = usize::from(pick) % client.outbound.len();
                let Some((publish, _)) = client.outbound.values().nth(index) else {
                    return;
                };
                let publish = Publish {
                    dup: true,
                    ..publish.clone()
                };
                self.client_sends(ci, Packet::Publish(publish));
            }
            Op::Release { conn, pick } => {
                let Some(ci) = self.pick_conn(conn) else {
                    return;
                };
                let client = &self.clients[self.conns[ci].client];
                if client.outbound.is_empty() {
                    return;
                }
                // Those whose PUBREC came first.
                let mut ids: Vec<u16> = client
                    .outbound
                    .iter()
                    .filter(|(_, (_, rec))| *rec)
                    .map(|(&id, _)| id)
                    .collect();
                if ids.is_empty() {
                    ids = client.outbound.keys().copied().collect();
                }
                let id = ids[usize::from(pick) % ids.len()];
                self.client_sends(ci, Packet::PubRel(Ack::new(id)));
            }
            Op::Ack { conn, pick, refuse } => {
                let Some(ci) = self.pick_conn(conn) else {
                    return;
                };
                let answers = self.answers(ci, refuse);
                if answers.is_empty() {
                    return;
                }
                let answer = answers[usize::from(pick) % answers.len()].clone();
                self.client_sends(ci, answer);
            }
            Op::AckAll { conn } => {
                let Some(ci) = self.pick_conn(conn) else {
                    return;
                };
                for answer in self.answers(ci, false) {
                    self.client_sends(ci, answer);
                }
            }
            Op::StrayAck { conn, kind, id } => {
                let Some(ci) = self.pick_conn(conn) else {
                    return;
                };
                let id = id.max(1);
                if self.clients[self.conns[ci].client].knows(id) {
                    return;
                }
                let ack = Ack::new(id);
                let packet = match kind % 4 {
                    0 => Packet::PubAck(ack),
                    1 => Packet::PubRec(ack),
                    2 => Packet::PubRel(ack),
                    _ => Packet::PubComp(ack),
                };
                self.client_sends(ci, packet);
            }
            Op::Ping { conn } => {
                let Some(ci) = self.pick_conn(conn) else {
                    return;
                };
                self.client_sends(ci, Packet::PingReq);
            }
            Op::Disconnect {
                conn,
                with_will,
                expiry,
            } => {
                let Some(ci) = self.pick_conn(conn) else {
                    return;
                };
                let mut disconnect = Disconnect::new(if with_will {
                    ReasonCode::DisconnectWithWillMessage
                } else {
                    ReasonCode::NORMAL_DISCONNECTION
                });
                if self.conns[ci].version.is_v5() {
                    disconnect.properties.session_expiry_interval = expiry.map(session_expiry);
                } else {
                    disconnect.reason_code = ReasonCode::NORMAL_DISCONNECTION;
                }
                self.client_sends(ci, Packet::Disconnect(disconnect));
            }
            Op::TransportClosed { conn } => {
                let Some(ci) = self.pick_conn(conn) else {
                    return;
                };
                self.conns[ci].conn.handle_transport_closed(self.now);
            }
            Op::Raw { conn, bytes } => {
                let Some(ci) = self.pick_conn(conn) else {
                    return;
                };
                self.raw(ci, &bytes);
            }
            Op::Advance { amount } => {
                let ms = u64::from(amount) * u64::from(amount) * 2;
                self.now += Duration::from_millis(ms);
                if let Some(store) = &self.store {
                    store.commit();
                }
                for c in &mut self.conns {
                    if c.conn.poll_timeout().is_some_and(|at| at <= self.now) {
                        c.conn.handle_timeout(self.now);
                    }
                }
                if self.broker.poll_timeout().is_some_and(|at| at <= self.now) {
                    self.broker.handle_timeout(self.now);
                }
            }
            Op::Poll { conn, budget } => {
                let Some(ci) = self.pick_conn(conn) else {
                    return;
                };
                let budget = match budget {
                    0 => usize::MAX,
                    n => usize::from(n),
                };
                self.poll(ci, budget);
            }
            Op::PollAll => {
                for ci in 0..self.conns.len() {
                    self.poll(ci, usize::MAX);
                }
            }
            Op::Commit => {
                if let Some(store) = &self.store {
                    store.commit();
                }
            }
            Op::Restart => self.restart(),
        }
    }

    /// The broker crashes and starts again from the durable changes; every connection is lost
    /// without its will or anything else (the process is gone).
    fn restart(&mut self) {
        let Some(store) = self.store.take() else {
            return;
        };
        self.conns.clear();
        let (survivor, recovered, lost_ends) = store.crash();
        let survivor = Arc::new(survivor);
        self.broker = Broker::with_persistence(
            self.config.clone(),
            Hooks::default(),
            Some(survivor.clone() as Arc<dyn Persistence>),
        );
        self.broker.restore(recovered, self.now);
        self.store = Some(survivor);
        for (k, client) in self.clients.iter_mut().enumerate() {
            client.latest = None;
            let client_id = text(&format!("c{k}"));
            // A session whose end the crash lost comes back, but it is an older one than the
            // client holds: a clean start that ended a stored session is acknowledged before
            // its end is durable (reported, not fixed here), so the client's side cannot be
            // compared with it.
            let resurrected = lost_ends.contains(&client_id);
            match self.broker.session(&client_id) {
                Some(session) if client.session.is_some() && !resurrected => {
                    // The session came back: the client keeps its side. A QoS 1 delivery may
                    // have been lost with the broker (its publisher has no PUBACK and sends it
                    // again), so the client forgets those: it would just acknowledge them.
                    // A PUBREC whose new state was not durable yet is lost too: the PUBLISH may
                    // come again, and the client answers it again.
                    client.session = Some(session);
                    client
                        .inbound
                        .retain(|_, inbound| inbound.qos == QoS::ExactlyOnce);
                    for inbound in client.inbound.values_mut() {
                        inbound.rec_sent = false;
                    }
                }
                session => client.reset_session(session),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn connect(
        &mut self,
        client: usize,
        version: u8,
        clean_start: bool,
        expiry: u8,
        receive_maximum: u8,
        keep_alive: u8,
        will: Option<WillSpec>,
    ) {
        if self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let version = match version % 3 {
            0 => ProtocolVersion::V31,
            1 => ProtocolVersion::V311,
            _ => ProtocolVersion::V5,
        };
        let mut properties = Properties::default();
        let mut window = usize::from(self.config.max_inflight);
        if version.is_v5() {
            properties.session_expiry_interval = Some(session_expiry(expiry));
            let maximum = u16::from(receive_maximum % 4);
            if maximum != 0 {
                properties.receive_maximum = Some(maximum);
                window = window.min(usize::from(maximum));
            }
        }
        let will = will.map(|spec| {
            let mut properties = Properties::default();
            let delay = u32::from(spec.delay % 3);
            if version.is_v5() && delay != 0 {
                properties.will_delay_interval = Some(delay);
            }
            Will {
                topic: text(TOPICS[usize::from(spec.topic) % (TOPICS.len() - 1)]),
                payload: self.payload(),
                qos: qos(spec.qos),
                retain: spec.retain,
                properties,
            }
        });
        let connect = Connect {
            protocol: version,
            clean_start,
            keep_alive: [0, 1, 2, 5][usize::from(keep_alive % 4)],
            properties,
            client_id: text(&format!("c{client}")),
            will,
            username: None,
            password: None,
        };
        if clean_start {
            // A client starting clean forgets its side of the session too.
            self.clients[client].reset_session(None);
        }
        let mut conn = Connection::new(self.broker.clone(), Arc::new(Quiet), None, self.now);
        conn.handle_packet(Packet::Connect(Box::new(connect)), self.now);
        if conn.is_connected() {
            for other in self.conns.iter_mut().filter(|c| c.client == client) {
                other.superseded = true;
            }
            self.clients[client].latest = Some(conn.id());
        }
        self.conns.push(Conn {
            conn,
            client,
            version,
            window,
            unacked: HashSet::new(),
            superseded: false,
            aliases: HashMap::new(),
        });
    }

    /// What the client of connection `ci` may answer now, following the protocol.
    fn answers(&self, ci: usize, refuse: bool) -> Vec<Packet> {
        let v5 = self.conns[ci].version.is_v5();
        let client = &self.clients[self.conns[ci].client];
        let mut answers = Vec::new();
        for (&id, inbound) in &client.inbound {
            match inbound.qos {
                QoS::AtLeastOnce => answers.push(Packet::PubAck(Ack::new(id))),
                QoS::ExactlyOnce if !inbound.rec_sent => {
                    let mut ack = Ack::new(id);
                    if refuse && v5 {
                        ack.reason_code = ReasonCode::UnspecifiedError;
                    }
                    answers.push(Packet::PubRec(ack));
                }
                _ => {}
            }
        }
        for &id in &client.pubcomp_due {
            answers.push(Packet::PubComp(Ack::new(id)));
        }
        answers
    }

    /// The client of connection `ci` sends `packet`: its model follows if the broker takes it.
    fn client_sends(&mut self, ci: usize, packet: Packet) {
        if self.processes(ci) {
            let c = &mut self.conns[ci];
            let client = &mut self.clients[c.client];
            match &packet {
                Packet::PubAck(ack) => {
                    if client
                        .inbound
                        .get(&ack.packet_id)
                        .is_some_and(|inbound| inbound.qos == QoS::AtLeastOnce)
                    {
                        client.inbound.remove(&ack.packet_id);
                    }
                    c.unacked.remove(&ack.packet_id);
                }
                Packet::PubRec(ack) => {
                    if let Some(inbound) = client.inbound.get_mut(&ack.packet_id)
                        && inbound.qos == QoS::ExactlyOnce
                    {
                        if ack.reason_code.is_error() {
                            client.inbound.remove(&ack.packet_id);
                            c.unacked.remove(&ack.packet_id);
                        } else {
                            inbound.rec_sent = true;
                        }
                    }
                }
                Packet::PubComp(ack) => {
                    client.pubcomp_due.retain(|&id| id != ack.packet_id);
                    c.unacked.remove(&ack.packet_id);
                }
                Packet::PubRel(ack) => {
                    client.outbound.remove(&ack.packet_id);
                }
                Packet::Publish(publish) if publish.qos == QoS::ExactlyOnce => {
                    let mut first = publish.clone();
                    if first.topic.is_empty() {
                        // Sent with a known alias: keep the topic for resends.
                        if let Some(topic) = first
                            .properties
                            .topic_alias
                            .and_then(|alias| c.aliases.get(&alias))
                        {
                            first.topic = topic.clone();
                        }
                    }
                    first.properties.topic_alias = None;
                    if !first.topic.is_empty() {
                        client
                            .outbound
                            .entry(publish.packet_id)
                            .or_insert((first, false));
                    }
                }
                Packet::Subscribe(subscribe) => {
                    for subscription in &subscribe.subscriptions {
                        if subscription.filter.starts_with("$share/") {
                            client
                                .shared_filters
                                .insert(subscription.filter.as_bytes().to_vec());
                        }
                    }
                }
                _ => {}
            }
        }
        self.conns[ci].conn.handle_packet(packet, self.now);
    }

    /// Arbitrary bytes from the client of connection `ci`, as its read loop would decode them.
    fn raw(&mut self, ci: usize, bytes: &[u8]) {
        let mut buf = BytesMut::from(bytes);
        loop {
            let c = &self.conns[ci];
            let decoded = Packet::decode(
                &mut buf,
                c.conn.protocol_version(),
                c.conn.max_packet_size(),
            );
            match decoded {
                Ok(Some(packet)) => {
                    let client = &self.clients[c.client];
                    let packet = match packet {
                        // A CONNECT could name a client the model follows; only a second one
                        // (a protocol error) is sent.
                        Packet::Connect(_) if !c.conn.is_connected() => continue,
                        // Acknowledgements the model follows are sent by the ops only.
                        Packet::PubAck(ref ack)
                        | Packet::PubRec(ref ack)
                        | Packet::PubRel(ref ack)
                        | Packet::PubComp(ref ack)
                            if client.knows(ack.packet_id) =>
                        {
                            continue;
                        }
                        Packet::Publish(publish) => {
                            if publish.qos == QoS::ExactlyOnce && client.knows(publish.packet_id) {
                                continue;
                            }
                            // A payload of the harness's own, so copies can be counted.
                            let payload = self.payload();
                            Packet::Publish(Publish { payload, ..publish })
                        }
                        other => other,
                    };
                    self.client_sends(ci, packet);
                }
                Ok(None) => return,
                Err(error) => {
                    self.conns[ci].conn.handle_decode_error(&error, self.now);
                    return;
                }
            }
        }
    }

    /// Polls connection `ci` and has its client take what came.
    fn poll(&mut self, ci: usize, budget: usize) {
        let mut buf = BytesMut::new();
        self.conns[ci]
            .conn
            .poll_transmit(&mut buf, budget, self.now);
        let version = self.conns[ci].version;
        loop {
            match Packet::decode(&mut buf, version, u32::MAX) {
                Ok(Some(packet)) => self.receive(ci, packet),
                Ok(None) => break,
                Err(error) => panic!("the broker sent bytes that do not decode: {error}"),
            }
        }
        assert!(buf.is_empty(), "the broker sent a partial packet");
    }

    /// The client of connection `ci` receives `packet`.
    fn receive(&mut self, ci: usize, packet: Packet) {
        let mut answer = None;
        let c = &mut self.conns[ci];
        let client = &mut self.clients[c.client];
        match packet {
            Packet::Publish(publish) => {
                assert!(
                    !c.superseded,
                    "a connection that was taken over sent a PUBLISH [MQTT-3.1.4-2]"
                );
                if publish.qos == QoS::AtMostOnce {
                    return;
                }
                let id = publish.packet_id;
                assert!(
                    c.unacked.insert(id),
                    "PUBLISH {id} sent twice on one connection [MQTT-4.4.0-1]"
                );
                assert!(
                    c.unacked.len() <= c.window,
                    "{} QoS 1/2 PUBLISH unacknowledged on a connection whose window is {} \
                     [MQTT-3.3.4-7]",
                    c.unacked.len(),
                    c.window
                );
                assert!(
                    !client.pubcomp_due.contains(&id),
                    "new PUBLISH under identifier {id} before the PUBCOMP of its QoS 2 message"
                );
                if let Some(inbound) = client.inbound.get(&id) {
                    assert!(
                        inbound.payload == publish.payload && inbound.qos == publish.qos,
                        "new PUBLISH under identifier {id} while the client still holds it"
                    );
                    assert!(
                        !inbound.rec_sent,
                        "QoS 2 PUBLISH {id} resent after its PUBREC [MQTT-4.3.3-4]"
                    );
                    return;
                }
                if publish.qos == QoS::ExactlyOnce
                    && !publish.retain
                    && let Some(number) = message_number(&publish.payload)
                {
                    let copies = client.copies.entry(number).or_default();
                    *copies += 1;
                    let routes = 1 + client.shared_filters.len() as u32;
                    assert!(
                        *copies <= routes,
                        "QoS 2 message {number} reached client {} as new {} times \
                         (routes: {routes})",
                        c.client,
                        *copies
                    );
                }
                client.inbound.insert(
                    id,
                    Inbound {
                        qos: publish.qos,
                        payload: publish.payload,
                        rec_sent: false,
                    },
                );
            }
            Packet::PubRel(ack) => {
                let id = ack.packet_id;
                let held = client.inbound.remove(&id).is_some_and(|inbound| {
                    assert!(
                        inbound.qos == QoS::ExactlyOnce,
                        "PUBREL {id} for a QoS 1 message"
                    );
                    true
                });
                if held {
                    client.pubcomp_due.push(id);
                } else if !client.pubcomp_due.contains(&id) {
                    answer = Some(Packet::PubComp(Ack::new(id)));
                }
            }
            Packet::PubRec(ack) => {
                if let Some((_, rec)) = client.outbound.get_mut(&ack.packet_id) {
                    *rec = true;
                }
            }
            _ => {}
        }
        if let Some(answer) = answer {
            self.client_sends(ci, answer);
        }
    }

    /// Flushes and forgets connections that have ended.
    fn reap(&mut self) {
        let mut ci = 0;
        while ci < self.conns.len() {
            if self.conns[ci].conn.is_closed() {
                self.poll(ci, usize::MAX);
                self.conns.remove(ci);
            } else {
                ci += 1;
            }
        }
    }

    fn check(&mut self) {
        if let Some(store) = &self.store {
            assert_eq!(store.open_groups(), 0, "an atomic group stayed open");
        }
        for k in 0..CLIENTS {
            let session = self.broker.session(&format!("c{k}"));
            let client = &mut self.clients[k];
            let same = match (&client.session, &session) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                client.reset_session(session.clone());
            }
            let latest = client
                .latest
                .and_then(|id| self.conns.iter().find(|c| c.conn.id() == id))
                .filter(|c| !c.conn.is_closed());
            let Some(session) = session else {
                assert!(
                    latest.is_none(),
                    "client c{k} has an open connection but no session"
                );
                continue;
            };
            assert!(
                session.queued_len() <= self.config.max_queued_messages,
                "session c{k} queues {} messages, limit {}",
                session.queued_len(),
                self.config.max_queued_messages
            );
            let ids = session.inflight_packet_ids();
            let unique: HashSet<u16> = ids.iter().copied().collect();
            assert_eq!(
                unique.len(),
                ids.len(),
                "session c{k} has duplicate packet identifiers in flight: {ids:?}"
            );
            assert!(!unique.contains(&0), "packet identifier 0 in flight");
            let owner = session.owner();
            match latest {
                Some(latest) => assert_eq!(
                    owner,
                    Some(latest.conn.id()),
                    "session c{k} is not owned by its client's open connection"
                ),
                None => assert_eq!(
                    owner, None,
                    "session c{k} is owned by a connection that is not open"
                ),
            }
            // QoS 2 messages the client holds unfinished stay in flight under their
            // identifiers [MQTT-4.3.3, MQTT-4.8.2-4].
            for (&id, inbound) in &client.inbound {
                if inbound.qos == QoS::ExactlyOnce {
                    assert!(
                        unique.contains(&id),
                        "QoS 2 message {id} held by client c{k} is no longer in flight in its \
                         session ({ids:?})"
                    );
                }
            }
            for &id in &client.pubcomp_due {
                assert!(
                    unique.contains(&id),
                    "QoS 2 message {id} released to client c{k} left its session before PUBCOMP \
                     ({ids:?})"
                );
            }
        }
    }

    /// Every client answers what it holds, time moves on, and the store catches up.
    fn settle(&mut self) {
        self.run(Op::Advance { amount: 1 });
        for _ in 0..3 {
            self.run(Op::PollAll);
            for ci in 0..self.conns.len() {
                for answer in self.answers(ci, false) {
                    self.client_sends(ci, answer);
                }
            }
            self.reap();
            self.check();
        }
    }
}

/// An MQTT 5 Session Expiry Interval: at disconnect, one second, five seconds, or never.
fn session_expiry(value: u8) -> u32 {
    [0, 1, 5, u32::MAX][usize::from(value % 4)]
}

fuzz_target!(|input: Input| {
    let mut harness = Harness::new(&input.config);
    for op in input.ops.into_iter().take(256) {
        harness.run(op);
        harness.reap();
        harness.check();
    }
    harness.settle();
});
