//! Helpers shared by the core's integration tests, which drive `Connection`s directly.

#![allow(dead_code)]

mod harness;

// Each test binary uses a part of the harness.
#[allow(unused_imports)]
pub use harness::*;

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use tern_broker::persist::{Change, Persistence, Seq};
use tern_broker::{Broker, BrokerConfig, Connection, Hooks, Wakeup};
use tern_codec::{Connect, MqttStr, Packet, Properties, ProtocolVersion, QoS};

/// A wakeup that does nothing: the tests poll their connections themselves.
pub struct Quiet;

impl Wakeup for Quiet {
    fn wake(&self) {}
}

pub fn text(value: &str) -> MqttStr {
    MqttStr::try_from(value).unwrap()
}

/// A 3.1.1 connection that has sent CONNECT (`clean_start` false: a session that never
/// expires); what the broker answered is polled and dropped.
pub fn connect(broker: &Arc<Broker>, id: &str, clean_start: bool, now: Instant) -> Connection {
    let mut conn = Connection::new(broker.clone(), Arc::new(Quiet), None, now);
    conn.handle_packet(
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_start,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: text(id),
            will: None,
            username: None,
            password: None,
        })),
        now,
    );
    let mut out = BytesMut::new();
    conn.poll_transmit(&mut out, usize::MAX, now);
    conn
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Submit(u64, &'static str),
    Begin(u64),
    End(u64),
}

/// Records every submission and group; durable up to what the test sets (everything at first).
pub struct Recorder {
    events: Mutex<Vec<Event>>,
    seq: Mutex<u64>,
    durable: Mutex<u64>,
    /// The packet identifiers of `Inflight` and `Dispatched` changes, in submission order.
    inflight: Mutex<Vec<u16>>,
    /// What `accepts_new_work` and `congested` answer (a full or a slow disk).
    accepting: AtomicBool,
    congested: AtomicBool,
    failing: AtomicBool,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder {
            events: Mutex::default(),
            seq: Mutex::default(),
            durable: Mutex::new(u64::MAX),
            inflight: Mutex::default(),
            accepting: AtomicBool::new(true),
            congested: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        }
    }
}

pub fn kind(change: &Change) -> &'static str {
    match change {
        Change::Message(_) => "Message",
        Change::MessageRouted { .. } => "MessageRouted",
        Change::Session { .. } => "Session",
        Change::SessionEnded { .. } => "SessionEnded",
        Change::Subscribed { .. } => "Subscribed",
        Change::Unsubscribed { .. } => "Unsubscribed",
        Change::Queued { .. } => "Queued",
        Change::Unqueued { .. } => "Unqueued",
        Change::Inflight { .. } => "Inflight",
        Change::Dispatched { .. } => "Dispatched",
        Change::InflightDone { .. } => "InflightDone",
        Change::InboundQos2 { .. } => "InboundQos2",
        Change::InboundQos2Released { .. } => "InboundQos2Released",
        Change::Retained(_) => "Retained",
        Change::RetainedCleared { .. } => "RetainedCleared",
        Change::Will { .. } => "Will",
        Change::WillCleared { .. } => "WillCleared",
        Change::ForwardQueued { .. } => "ForwardQueued",
        Change::ForwardAcked { .. } => "ForwardAcked",
        Change::ForwardReceived { .. } => "ForwardReceived",
    }
}

impl Persistence for Recorder {
    fn submit(&self, change: Change) -> Seq {
        let mut seq = self.seq.lock().unwrap();
        *seq += 1;
        if let Change::Inflight { packet_id, .. } | Change::Dispatched { packet_id, .. } = &change {
            self.inflight.lock().unwrap().push(*packet_id);
        }
        self.events
            .lock()
            .unwrap()
            .push(Event::Submit(*seq, kind(&change)));
        Seq(*seq)
    }

    fn durable(&self) -> Seq {
        Seq(*self.durable.lock().unwrap())
    }

    // The test polls its connections itself.
    fn wake_when_durable(&self, _seq: Seq, _wakeup: Arc<dyn Wakeup>) {}

    fn submitted(&self) -> Seq {
        Seq(*self.seq.lock().unwrap())
    }

    fn begin_group(&self) -> u64 {
        let token = *self.seq.lock().unwrap() + 1;
        self.events.lock().unwrap().push(Event::Begin(token));
        token
    }

    fn end_group(&self, token: u64) {
        self.events.lock().unwrap().push(Event::End(token));
    }

    fn accepts_new_work(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }

    fn congested(&self) -> bool {
        self.congested.load(Ordering::Relaxed)
    }

    fn commits_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}

impl Recorder {
    /// The packet identifiers stored in flight since the last call, in submission order.
    pub fn take_inflight(&self) -> Vec<u16> {
        std::mem::take(&mut *self.inflight.lock().unwrap())
    }

    /// The kinds of the changes submitted since the last `take`.
    pub fn take_kinds(&self) -> Vec<&'static str> {
        self.take()
            .into_iter()
            .filter_map(|event| match event {
                Event::Submit(_, kind) => Some(kind),
                _ => None,
            })
            .collect()
    }

    /// A full disk (`false`) or one with room again.
    pub fn set_accepting(&self, accepting: bool) {
        self.accepting.store(accepting, Ordering::Relaxed);
    }

    /// Commits that fail (the engine met a full disk): also refuses new work.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
        self.set_accepting(!failing);
    }

    /// A slow disk: more changes pending than the store keeps.
    pub fn set_congested(&self, congested: bool) {
        self.congested.store(congested, Ordering::Relaxed);
    }

    pub fn set_durable(&self, seq: Seq) {
        *self.durable.lock().unwrap() = seq.get();
    }

    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

/// Everything the connection has to send now, decoded.
pub fn transmit(conn: &mut Connection, now: Instant) -> Vec<Packet> {
    let mut out = BytesMut::new();
    conn.poll_transmit(&mut out, usize::MAX, now);
    let mut packets = Vec::new();
    while let Some(packet) = Packet::decode(&mut out, ProtocolVersion::V311, u32::MAX).unwrap() {
        packets.push(packet);
    }
    packets
}

/// A broker whose changes `Recorder` records, with a persistent "subscriber" (subscribed to
/// `filter` at `qos`) and a "publisher" (persistent unless `clean_publisher`), both 3.1.1 and
/// connected. Returns the recorder emptied, the broker, publisher, subscriber, and the time.
pub fn recorded_broker(
    filter: &str,
    qos: QoS,
    clean_publisher: bool,
) -> (Arc<Recorder>, Arc<Broker>, Connection, Connection, Instant) {
    let recorder = Arc::new(Recorder::default());
    let broker = Broker::with_persistence(
        BrokerConfig::default(),
        Hooks::default(),
        Some(recorder.clone() as Arc<dyn Persistence>),
    );
    let now = Instant::now();
    let mut subscriber = connect(&broker, "subscriber", false, now);
    subscriber.handle_packet(subscribe_packet(1, &[(filter, qos)]), now);
    transmit(&mut subscriber, now);
    let publisher = connect(&broker, "publisher", clean_publisher, now);
    recorder.take();
    (recorder, broker, publisher, subscriber, now)
}

/// A persistence that, given a retained message to store, first runs the step the test put in
/// `BETWEEN` (once): on the publisher's thread, after the publish stored the message in the
/// retained index and before it routes it. The step runs under the retained index's write
/// lock: it may send packets, but a read of a connection's output (which may read the
/// retained index) would hang.
#[derive(Default)]
pub struct Between {
    seq: AtomicU64,
}

thread_local! {
    pub static BETWEEN: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
}

impl Persistence for Between {
    fn submit(&self, change: Change) -> Seq {
        if matches!(change, Change::Retained(_))
            && let Some(step) = BETWEEN.take()
        {
            step();
        }
        Seq(self.seq.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn durable(&self) -> Seq {
        self.submitted()
    }

    fn wake_when_durable(&self, _seq: Seq, wakeup: Arc<dyn Wakeup>) {
        wakeup.wake();
    }

    fn submitted(&self) -> Seq {
        Seq(self.seq.load(Ordering::SeqCst))
    }

    fn begin_group(&self) -> u64 {
        0
    }

    fn end_group(&self, _token: u64) {}
}
