//! The broker's durable state as the core sees it: the changes it emits while it runs, the trait
//! through which they are made durable, and the state handed back at start-up.
//!
//! The core calls [`Persistence::submit`] for each change, in the order the changes happen (a
//! session's changes are submitted under that session's lock, so they cannot be reordered), and
//! gets a sequence number. An acknowledgement that promises durability (PUBACK, PUBREC, PUBCOMP,
//! SUBACK, UNSUBACK, CONNACK, and PUBREL and QoS 2 PUBLISH towards subscribers) waits until
//! [`Persistence::durable`] has reached the sequence number of the changes it depends on. What
//! "durable" means (written to the OS, or synced) is the implementation's durability level.
//!
//! Only persistent sessions (expiry other than "at disconnect"), QoS 1 and 2 messages and
//! retained messages produce changes; QoS 0 traffic and clean sessions never do.

use std::sync::Arc;
use std::time::Duration;

use tern_codec::{MqttStr, QoS};

use crate::message::{Delivery, Message, SubscriptionIds};
use crate::types::{InflightState, SessionExpiry, SubscriptionRecord, Wakeup};
pub use crate::types::{MessageId, Seq};

/// A delivery as stored: the message by id, and what is particular to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    pub message_id: MessageId,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: SubscriptionIds,
    pub shared_filter: Option<MqttStr>,
}

impl Delivery {
    /// The delivery as the store keeps it.
    pub fn stored(&self) -> StoredDelivery {
        StoredDelivery {
            message_id: self.message.id,
            qos: self.qos,
            retain: self.retain,
            subscription_ids: self.subscription_ids.clone(),
            shared_filter: self.shared_filter.clone(),
        }
    }
}

/// One change of the durable state.
#[derive(Debug, Clone)]
pub enum Change {
    /// A message body, stored once however many deliveries refer to it. Submitted before the
    /// first delivery that refers to it, it also takes a reference for the router, which the
    /// router gives back with [`Change::MessageRouted`] once it has queued the message for every
    /// session; the store forgets the body once nothing refers to it.
    Message(Message),
    /// The router has queued the message everywhere: releases the reference its
    /// [`Change::Message`] took.
    MessageRouted {
        id: MessageId,
    },
    /// A persistent session was created or resumed (`online`), or its connection went away.
    Session {
        client_id: MqttStr,
        expiry: SessionExpiry,
        online: bool,
    },
    /// The session ended: everything stored under it goes.
    SessionEnded {
        client_id: MqttStr,
    },
    Subscribed {
        client_id: MqttStr,
        filter: MqttStr,
        record: SubscriptionRecord,
    },
    Unsubscribed {
        client_id: MqttStr,
        filter: MqttStr,
    },
    /// A delivery waits in the session's queue at `position` (increasing within a session).
    Queued {
        client_id: MqttStr,
        position: u64,
        delivery: StoredDelivery,
    },
    /// The delivery at `position` left the queue (sent, dropped, expired or handed over).
    Unqueued {
        client_id: MqttStr,
        position: u64,
    },
    /// An outbound QoS 1/2 message in flight under `packet_id`, or its new state.
    Inflight {
        client_id: MqttStr,
        packet_id: u16,
        state: InflightState,
        delivery: StoredDelivery,
    },
    /// The queued delivery at `position` went in flight under `packet_id`: [`Change::Inflight`]
    /// and [`Change::Unqueued`] as one change, so no crash can leave the delivery both queued
    /// and in flight (sent twice after a restart).
    Dispatched {
        client_id: MqttStr,
        position: u64,
        packet_id: u16,
        state: InflightState,
        delivery: StoredDelivery,
    },
    /// The outbound flow of `packet_id` is complete.
    InflightDone {
        client_id: MqttStr,
        packet_id: u16,
    },
    /// An inbound QoS 2 message was received under `packet_id`; PUBREL is awaited.
    InboundQos2 {
        client_id: MqttStr,
        packet_id: u16,
    },
    /// PUBREL arrived for `packet_id`.
    InboundQos2Released {
        client_id: MqttStr,
        packet_id: u16,
    },
    /// The retained message of the message's topic.
    Retained(Arc<Message>),
    RetainedCleared {
        topic: MqttStr,
    },
    /// The will of a persistent session, published `delay` after its connection ends, with
    /// a Message Expiry Interval (seconds) counted from its publication.
    Will {
        client_id: MqttStr,
        message: Arc<Message>,
        delay: Duration,
        expiry_interval: Option<u32>,
    },
    WillCleared {
        client_id: MqttStr,
    },
    /// A cluster: a message this node forwards to node `peer`, kept until `peer` acknowledges
    /// it (`payload` is the cluster's encoding; `run` and `seq` its place in the link's
    /// order). Submitted in the same commit as the publisher's other changes, before the
    /// publisher's acknowledgement.
    ForwardQueued {
        peer: u64,
        run: u64,
        seq: u64,
        payload: bytes::Bytes,
    },
    /// `peer` acknowledged the forwarded messages of `run` up to `upto`, and every message of
    /// an earlier run (runs increase: a later one starts after a restart).
    ForwardAcked {
        peer: u64,
        run: u64,
        upto: u64,
    },
    /// A cluster: the messages node `origin` forwarded here are delivered up to `seq` of its
    /// `run` (submitted after the deliveries, so a restart de-duplicates what it sends again).
    ForwardReceived {
        origin: u64,
        run: u64,
        seq: u64,
    },
}

/// A forwarded message read back at start-up (see [`Change::ForwardQueued`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredForward {
    pub peer: u64,
    pub run: u64,
    pub seq: u64,
    pub payload: bytes::Bytes,
}

/// Where changes go to become durable. Implementations group many changes into one commit.
pub trait Persistence: Send + Sync {
    /// Queues a change; returns its sequence number (increasing, the first after
    /// [`Seq::NONE`]).
    fn submit(&self, change: Change) -> Seq;
    /// The highest sequence number whose change, and every change before it, is durable.
    fn durable(&self) -> Seq;
    /// Calls `wakeup` once `seq` is durable (at once if it already is).
    fn wake_when_durable(&self, seq: Seq, wakeup: Arc<dyn Wakeup>);
    /// The sequence number of the last change submitted ([`Seq::NONE`] before the first).
    fn submitted(&self) -> Seq;
    /// Opens an atomic group: no change submitted from now on (by any thread) is made durable
    /// until the group is closed with [`Persistence::end_group`], and then the whole group in
    /// one commit, so a crash keeps all of its changes or none. Returns the group's token.
    /// Groups must be short: they hold back every commit after their start.
    fn begin_group(&self) -> u64;
    /// Closes the group `token` opened.
    fn end_group(&self, token: u64);
    /// Whether the store takes new durable work: message bodies, retained messages and
    /// subscriptions. `false` while its disk is short of space (below the low watermark) or
    /// its commits fail. The core then refuses what would need such a write (a PUBLISH or a
    /// SUBSCRIBE: Quota exceeded in MQTT 5, no acknowledgement and a bounded close in 3.x)
    /// and keeps serving everything else. Changes that advance or remove what is stored
    /// (acknowledgements, deletes, sessions going on- and offline, wills) are still
    /// submitted: the watermark leaves room for them. A cheap check (an atomic load).
    fn accepts_new_work(&self) -> bool {
        true
    }
    /// Whether more changes wait to be made durable than the store keeps in memory (a slow
    /// disk): a connection whose own changes are not durable yet stops reading until they
    /// are, so memory stays bounded and publishers are slowed, not dropped. A cheap check.
    fn congested(&self) -> bool {
        false
    }
    /// Whether commits are failing (the engine hit a full disk or an I/O error and retries):
    /// nothing submitted becomes durable until they succeed again, which may take long. The
    /// core then also refuses what would wait on a commit with no bound: a QoS 2 PUBLISH of a
    /// stored session (its PUBREC waits for the stored packet identifier) and the CONNECT of
    /// a persistent session (its CONNACK waits for the session). Implies
    /// `!accepts_new_work()`. A cheap check.
    fn commits_failing(&self) -> bool {
        false
    }
}

/// The router's reference on a stored message body while it places the message's deliveries
/// (see [`Change::Message`]). The body is submitted with the first stored delivery that refers
/// to it, and the reference is given back ([`Change::MessageRouted`]) when the guard drops, so
/// no path can forget the release and leave the body in the store until the next restart.
pub(crate) struct RoutedBody<'a> {
    persistence: Option<&'a dyn Persistence>,
    /// The body submitted, if a stored delivery needed it.
    held: Option<MessageId>,
}

impl<'a> RoutedBody<'a> {
    /// A guard that holds nothing yet; with no store, it never will.
    pub(crate) fn new(persistence: Option<&'a dyn Persistence>) -> RoutedBody<'a> {
        RoutedBody {
            persistence,
            held: None,
        }
    }

    /// Submits the body of `message` (once) before a stored delivery that refers to it.
    pub(crate) fn hold(&mut self, message: &Message) {
        if self.held.is_none()
            && let Some(persistence) = self.persistence
        {
            persistence.submit(Change::Message(message.clone()));
            self.held = Some(message.id);
        }
    }
}

impl Drop for RoutedBody<'_> {
    fn drop(&mut self) {
        if let (Some(persistence), Some(id)) = (self.persistence, self.held) {
            persistence.submit(Change::MessageRouted { id });
        }
    }
}

/// An open atomic group ([`Persistence::begin_group`]), closed when dropped.
pub(crate) struct Group<'a> {
    persistence: &'a dyn Persistence,
    token: u64,
}

impl<'a> Group<'a> {
    pub(crate) fn open(persistence: &'a dyn Persistence) -> Group<'a> {
        Group {
            persistence,
            token: persistence.begin_group(),
        }
    }
}

impl Drop for Group<'_> {
    fn drop(&mut self) {
        self.persistence.end_group(self.token);
    }
}

/// A session read back at start-up.
#[derive(Debug, Clone)]
pub struct RecoveredSession {
    pub client_id: MqttStr,
    pub expiry: SessionExpiry,
    /// How long ago (wall clock) the session lost its connection; zero if it was connected
    /// when the broker stopped.
    pub offline_for: Duration,
    pub subscriptions: Vec<(MqttStr, SubscriptionRecord)>,
    /// Queued deliveries with their positions, in order.
    pub queue: Vec<(u64, RecoveredDelivery)>,
    /// Outbound messages in flight, in the order they were sent.
    pub inflight: Vec<(u16, InflightState, RecoveredDelivery)>,
    pub inbound_qos2: Vec<u16>,
    pub will: Option<RecoveredWill>,
}

/// A will read back at start-up.
#[derive(Debug, Clone)]
pub struct RecoveredWill {
    /// The will, without an expiry deadline: its expiry counts from its publication.
    pub message: Arc<Message>,
    /// The Will Delay Interval.
    pub delay: Duration,
    /// The will's Message Expiry Interval, in seconds.
    pub expiry_interval: Option<u32>,
}

/// A delivery read back at start-up, with its message.
#[derive(Debug, Clone)]
pub struct RecoveredDelivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: SubscriptionIds,
    pub shared_filter: Option<MqttStr>,
}

/// Everything read back at start-up. Expired sessions, and messages that expired before their
/// delivery started, are already left out (an in-flight message is kept even if it has
/// expired since: its delivery has begun [MQTT-3.3.2-5]); expiry deadlines are converted to
/// this run's clock.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    pub sessions: Vec<RecoveredSession>,
    pub retained: Vec<Arc<Message>>,
    /// The first message id not used by any stored message.
    pub next_message_id: MessageId,
    /// A cluster's forwarded messages not acknowledged yet, by peer, run and sequence.
    pub forwards: Vec<RecoveredForward>,
    /// A cluster's highest message delivered from each origin node: (origin, run, seq).
    pub received: Vec<(u64, u64, u64)>,
}
