//! The plain types the core's modules share: identifiers, store sequence numbers, how long a
//! session lives, what a subscription asked for, where an outbound message stands, and how the
//! core wakes a connection. A leaf: it uses nothing else of the crate, so the modules that
//! share these (sessions, messages, persistence, unstored deliveries) need not import each
//! other in a circle.

use std::time::Duration;

use tern_codec::SubscriptionOptions;

/// Identifies a stored message body; queued and in-flight deliveries refer to it.
pub type MessageId = u64;

/// A store sequence number: the position of a change in the order the store makes changes
/// durable. [`Seq::NONE`] stands before every change, so "wait for `Seq::NONE`" waits for
/// nothing (a change that needs no store, or a broker without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// Before every change: nothing to wait for.
    pub const NONE: Seq = Seq(0);
    /// After every change: what a broker without a store reports as durable.
    pub const ALL: Seq = Seq(u64::MAX);

    pub fn get(self) -> u64 {
        self.0
    }

    /// The sequence number after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

/// Identifies one network connection for the life of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub std::num::NonZeroU64);

impl ConnectionId {
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

/// How the broker reaches a connection task when something is waiting for it (a delivery, or a
/// take-over). The server implements it over its runtime's notification primitive.
pub trait Wakeup: Send + Sync {
    fn wake(&self);

    /// The worker (event-loop thread) the connection runs on, when the server has several
    /// and takes QoS 0 messages for each in its inbox (see `Broker::set_worker_inboxes`).
    fn worker(&self) -> Option<u16> {
        None
    }
}

/// How long a session outlives its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionExpiry {
    /// Ends with the connection (expiry 0, or clean session in 3.x).
    AtDisconnect,
    After(Duration),
    Never,
}

impl SessionExpiry {
    /// The MQTT 5 Session Expiry Interval in seconds.
    pub fn from_interval(seconds: u32) -> SessionExpiry {
        match seconds {
            0 => SessionExpiry::AtDisconnect,
            u32::MAX => SessionExpiry::Never,
            seconds => SessionExpiry::After(Duration::from_secs(u64::from(seconds))),
        }
    }
}

/// A subscription as the session remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// Where an outbound QoS 1 or 2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // the spec's packet names read best here
pub enum InflightState {
    /// QoS 1 PUBLISH sent.
    AwaitingPubAck,
    /// QoS 2 PUBLISH sent.
    AwaitingPubRec,
    /// PUBREC received, PUBREL sent.
    AwaitingPubComp,
}

impl std::fmt::Debug for dyn Wakeup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wakeup")
    }
}
