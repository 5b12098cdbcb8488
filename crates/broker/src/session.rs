//! A session: what outlives a network connection. Its subscriptions, the messages waiting for it
//! (bounded), the outbound QoS 1/2 messages in flight by packet identifier, the inbound QoS 2
//! identifiers awaiting PUBREL, its expiry, and a will waiting for its delay.
//!
//! The session is shared: publishers push deliveries into its queue from their own tasks, while
//! at most one connection (its owner) drains the queue and runs the acknowledgement flows. Every
//! operation of the owner checks that it still owns the session, so a connection that has been
//! taken over can do no harm.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tern_codec::{MqttStr, QoS, SubscriptionOptions};

use crate::message::{Delivery, Message};
use crate::persist::{Change, Persistence};
use crate::unstored::{AckHold, Unstored};

/// Whether a delivery is stored when its session is persistent: QoS 1 and 2 messages with a
/// stored body.
pub(crate) fn is_stored(delivery: &Delivery) -> bool {
    delivery.qos != QoS::AtMostOnce && delivery.message.id != 0
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

/// An outbound message awaiting acknowledgement.
#[derive(Debug)]
pub struct Inflight {
    pub packet_id: u16,
    pub delivery: Delivery,
    pub state: InflightState,
    /// Set while the packet of the current state (PUBLISH or PUBREL) still has to go out: it
    /// waits for durability, or the connection was lost since it was sent.
    pub pending: bool,
    /// Whether the PUBLISH, when it goes out, is a retransmission (DUP set).
    pub dup: bool,
    /// Store sequence number that must be durable before the packet goes out (0: none).
    pub send_after: u64,
    /// Set while the delivery of a stored session is not in the store yet (see `unstored`).
    pub(crate) unstored: Option<Unstored>,
}

/// A delivery waiting in a session's queue, at its position (increasing within the session;
/// the store's key for it).
#[derive(Debug)]
pub struct QueuedDelivery {
    pub position: u64,
    pub delivery: Delivery,
    /// Set while the delivery of a stored session is not in the store yet (see `unstored`).
    pub(crate) unstored: Option<Unstored>,
}

/// A will whose delay has not run out yet (MQTT 5 Will Delay Interval).
#[derive(Debug, Clone)]
pub struct PendingWill {
    pub message: Arc<Message>,
    pub publish_at: Instant,
}

/// The mutable part of a session, behind the session's lock.
#[derive(Debug)]
pub struct SessionState {
    /// The connection attached to the session, if any.
    pub(crate) owner: Option<ConnectionId>,
    pub(crate) wakeup: Option<Arc<dyn Wakeup>>,
    pub(crate) subscriptions: HashMap<MqttStr, SubscriptionRecord>,
    pub(crate) queue: VecDeque<QueuedDelivery>,
    pub(crate) next_position: u64,
    pub(crate) inflight: VecDeque<Inflight>,
    /// How many entries of `inflight` have `pending` set.
    pub(crate) pending: usize,
    /// Inbound QoS 2 packet identifiers whose PUBLISH was routed and whose PUBREL is awaited.
    pub(crate) inbound_qos2: Vec<u16>,
    next_packet_id: u16,
    pub(crate) expiry: SessionExpiry,
    /// When an offline session ends.
    pub(crate) expires_at: Option<Instant>,
    pub(crate) pending_will: Option<Box<PendingWill>>,
    /// Set once the session has ended; it then accepts nothing.
    pub(crate) ended: bool,
    /// Whether the session is in the store (it was persistent when last written).
    pub(crate) stored: bool,
    /// Messages dropped because the queue was full.
    pub(crate) dropped: u64,
    /// How many entries of `queue` and `inflight` are unstored (at least: an entry dropped
    /// without counting down only makes a sweep look further).
    pub(crate) unstored: usize,
    /// Whether the session is on the broker's list of sessions to sweep.
    pub(crate) listed: bool,
}

impl std::fmt::Debug for dyn Wakeup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wakeup")
    }
}

/// A session, shared by the registry, the subscription index and its connection.
#[derive(Debug)]
pub struct Session {
    client_id: MqttStr,
    /// Mirror of `SessionState::owner` (0 for none), readable without the lock.
    owner_hint: AtomicU64,
    state: Mutex<SessionState>,
}

/// What happened to a delivery pushed into a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Queued, and the oldest waiting message was dropped to make room.
    QueuedDroppingOldest,
    /// Not queued: QoS 0 for an offline session, or the session has ended.
    Discarded,
}

impl Session {
    pub(crate) fn new(client_id: MqttStr, expiry: SessionExpiry) -> Session {
        Session {
            client_id,
            owner_hint: AtomicU64::new(0),
            state: Mutex::new(SessionState {
                owner: None,
                wakeup: None,
                subscriptions: HashMap::new(),
                queue: VecDeque::new(),
                next_position: 1,
                inflight: VecDeque::new(),
                pending: 0,
                inbound_qos2: Vec::new(),
                next_packet_id: 1,
                expiry,
                expires_at: None,
                pending_will: None,
                ended: false,
                stored: false,
                dropped: 0,
                unstored: 0,
                listed: false,
            }),
        }
    }

    pub fn client_id(&self) -> &MqttStr {
        &self.client_id
    }

    /// Whether a connection is attached (a hint: it may change right after).
    pub fn is_online(&self) -> bool {
        self.owner_hint.load(Ordering::Relaxed) != 0
    }

    /// Whether `connection` is (as far as a lock-free read can tell) the session's owner.
    pub(crate) fn is_owned_by(&self, connection: ConnectionId) -> bool {
        self.owner_hint.load(Ordering::Relaxed) == connection.get()
    }

    /// Locks the session state. A poisoned lock (a panic elsewhere while holding it) still
    /// yields the state: every update below leaves it consistent at each step.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the owner in the lock-free mirror; call with the state locked.
    pub(crate) fn publish_owner(&self, owner: Option<ConnectionId>) {
        self.owner_hint
            .store(owner.map_or(0, ConnectionId::get), Ordering::Relaxed);
    }

    /// Pushes a delivery into the queue, dropping the oldest waiting message when the queue
    /// holds `max_queued` already. QoS 0 for an offline session is discarded unless
    /// `queue_qos0_offline`. With `persist`, a stored delivery (QoS 1/2 of a persistent session)
    /// is submitted as it is queued, preceded by its message body unless `body_stored` says
    /// that was done; returns the sequence number of the last change (0 for none).
    ///
    /// With `hold` (a QoS 1 PUBLISH whose acknowledgement can wait for its subscribers), a
    /// QoS 1 delivery to a stored session whose client is connected is queued unstored
    /// instead (see `unstored`); the third value is then true if the broker must add the
    /// session to the sessions it sweeps.
    pub(crate) fn enqueue(
        &self,
        delivery: Delivery,
        max_queued: usize,
        queue_qos0_offline: bool,
        persist: Option<&dyn Persistence>,
        body_stored: &mut bool,
        hold: Option<(&mut AckHold<'_>, Instant)>,
    ) -> (Enqueued, u64, bool) {
        let mut state = self.lock();
        if state.ended || max_queued == 0 {
            return (Enqueued::Discarded, 0, false);
        }
        if state.owner.is_none() && delivery.qos == QoS::AtMostOnce && !queue_qos0_offline {
            return (Enqueued::Discarded, 0, false);
        }
        let persist = persist.filter(|_| state.stored);
        let mut seq = 0;
        let mut outcome = Enqueued::Queued;
        if state.queue.len() >= max_queued
            && let Some(dropped) = state.queue.pop_front()
        {
            state.dropped += 1;
            outcome = Enqueued::QueuedDroppingOldest;
            if dropped.unstored.is_some() {
                state.unstored = state.unstored.saturating_sub(1);
            } else if let Some(persist) = persist.filter(|_| is_stored(&dropped.delivery)) {
                seq = persist.submit(Change::Unqueued {
                    client_id: self.client_id.clone(),
                    position: dropped.position,
                });
            }
        }
        let position = state.next_position;
        state.next_position += 1;
        let unstored = hold
            .filter(|_| {
                persist.is_some()
                    && state.owner.is_some()
                    && delivery.qos == QoS::AtLeastOnce
                    && delivery.shared_filter.is_none()
                    && is_stored(&delivery)
            })
            .map(|(hold, now)| hold.unstored(now));
        let mut list = false;
        if unstored.is_some() {
            state.unstored += 1;
            list = !std::mem::replace(&mut state.listed, true);
        } else if let Some(persist) = persist.filter(|_| is_stored(&delivery)) {
            if !*body_stored {
                persist.submit(Change::Message(delivery.message.clone()));
                *body_stored = true;
            }
            seq = persist.submit(Change::Queued {
                client_id: self.client_id.clone(),
                position,
                delivery: delivery.stored(),
            });
        }
        let was_empty = state.queue.is_empty();
        state.queue.push_back(QueuedDelivery {
            position,
            delivery,
            unstored,
        });
        if was_empty && let Some(wakeup) = &state.wakeup {
            wakeup.wake();
        }
        (outcome, seq, list)
    }

    /// Number of waiting messages (for tests and metrics).
    pub fn queued_len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Number of outbound messages awaiting acknowledgement.
    pub fn inflight_len(&self) -> usize {
        self.lock().inflight.len()
    }

    /// Messages dropped so far because the queue was full.
    pub fn dropped_count(&self) -> u64 {
        self.lock().dropped
    }

    /// The packet identifiers of the outbound messages in flight, oldest first (for tests and
    /// the fuzz target, which check that they are unique).
    #[doc(hidden)]
    pub fn inflight_packet_ids(&self) -> Vec<u16> {
        self.lock()
            .inflight
            .iter()
            .map(|entry| entry.packet_id)
            .collect()
    }

    /// The connection attached to the session, read under its lock (for tests and the fuzz
    /// target, which check that only a live connection owns it).
    #[doc(hidden)]
    pub fn owner(&self) -> Option<ConnectionId> {
        self.lock().owner
    }
}

/// One pass of [`SessionState::store_unstored`].
struct Sweep<'a> {
    persist: Option<&'a dyn Persistence>,
    cutoff: Option<Instant>,
    /// Deliveries left unstored, and when the oldest of them was routed.
    kept: usize,
    oldest: Option<Instant>,
}

impl<'a> Sweep<'a> {
    fn new(persist: Option<&'a dyn Persistence>, cutoff: Option<Instant>) -> Sweep<'a> {
        Sweep {
            persist,
            cutoff,
            kept: 0,
            oldest: None,
        }
    }

    /// Whether an unstored delivery is old enough to be stored.
    fn due(&self, unstored: &Unstored) -> bool {
        self.cutoff.is_none_or(|cutoff| unstored.since() <= cutoff)
    }

    /// Stores the delivery of one queue or in-flight entry if it is unstored and `due`
    /// (`change` is its entry's change). Returns whether it was unstored.
    fn entry(
        &mut self,
        slot: &mut Option<Unstored>,
        delivery: &Delivery,
        due: bool,
        change: impl FnOnce() -> Change,
    ) -> bool {
        let Some(unstored) = slot.take() else {
            return false;
        };
        if !due {
            let since = unstored.since();
            *slot = Some(unstored);
            self.kept += 1;
            self.oldest = Some(self.oldest.map_or(since, |oldest| oldest.min(since)));
            return true;
        }
        if let Some(persist) = self.persist {
            // Body, entry and the router's release, as the router itself would have stored it.
            persist.submit(Change::Message(delivery.message.clone()));
            let seq = persist.submit(change());
            persist.submit(Change::MessageRouted {
                id: delivery.message.id,
            });
            unstored.stored(seq);
        }
        true
    }
}

impl SessionState {
    /// A packet identifier not used by any outbound message in flight [MQTT-2.2.1-2].
    /// The caller keeps the in-flight count below 65 535, so one is always free.
    pub(crate) fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|entry| entry.packet_id == id) {
                return id;
            }
        }
    }

    pub(crate) fn inflight_position(&self, packet_id: u16) -> Option<usize> {
        self.inflight
            .iter()
            .position(|entry| entry.packet_id == packet_id)
    }

    /// Called when the owner's connection goes away: everything in flight is sent again, in
    /// order, when a connection resumes the session [MQTT-4.4.0-1].
    pub(crate) fn detach(&mut self) {
        self.owner = None;
        self.wakeup = None;
        self.mark_all_for_resend();
    }

    /// Marks every message in flight to be sent again, PUBLISH with DUP set [MQTT-4.4.0-1].
    pub(crate) fn mark_all_for_resend(&mut self) {
        for entry in &mut self.inflight {
            entry.pending = true;
            entry.dup = true;
        }
        self.pending = self.inflight.len();
    }

    /// Whether the session outlives its connection, and so is stored.
    pub(crate) fn is_persistent(&self) -> bool {
        self.expiry != SessionExpiry::AtDisconnect
    }

    /// Whether changes of this session go to the store.
    pub(crate) fn stores(&self) -> bool {
        self.stored
    }

    /// Whether `connection` owns the session and it has not ended.
    pub(crate) fn owned_by(&self, connection: ConnectionId) -> bool {
        !self.ended && self.owner == Some(connection)
    }

    /// Removes the in-flight entry at `index`.
    pub(crate) fn remove_inflight(&mut self, index: usize) -> Option<Inflight> {
        let entry = self.inflight.remove(index)?;
        if entry.pending {
            self.pending -= 1;
        }
        if entry.unstored.is_some() {
            self.unstored = self.unstored.saturating_sub(1);
        }
        Some(entry)
    }

    /// Empties the session for a clean start or its end.
    pub(crate) fn clear(&mut self) {
        self.subscriptions.clear();
        self.queue.clear();
        self.inflight.clear();
        self.pending = 0;
        self.unstored = 0;
        self.inbound_qos2.clear();
    }

    /// Submits the unstored deliveries routed at or before `cutoff` (all of them with `None`)
    /// to the store, and lets their publishers' acknowledgements wait for that instead. A
    /// session no longer stored keeps nothing: its deliveries just stop holding the
    /// acknowledgements back. Returns when the oldest delivery left unstored was routed.
    pub(crate) fn store_unstored(
        &mut self,
        client_id: &MqttStr,
        persist: Option<&dyn Persistence>,
        cutoff: Option<Instant>,
    ) -> Option<Instant> {
        let mut sweep = Sweep::new(persist.filter(|_| self.stored), cutoff);
        let last_due = self.inflight.iter().rposition(|entry| {
            entry
                .unstored
                .as_ref()
                .is_some_and(|unstored| sweep.due(unstored))
        });
        let mut left = self
            .unstored
            .saturating_sub(self.sweep_inflight(client_id, &mut sweep, last_due));
        // The queue (whose order is in its keys) from the back: unstored deliveries are recent
        // ones, so a long stored backlog is not walked.
        for queued in self.queue.iter_mut().rev() {
            if left == 0 {
                break;
            }
            let change = || Change::Queued {
                client_id: client_id.clone(),
                position: queued.position,
                delivery: queued.delivery.stored(),
            };
            let due = queued
                .unstored
                .as_ref()
                .is_some_and(|unstored| sweep.due(unstored));
            if sweep.entry(&mut queued.unstored, &queued.delivery, due, change) {
                left -= 1;
            }
        }
        self.unstored = sweep.kept;
        sweep.oldest
    }

    /// Stores every unstored delivery in flight: before a stored delivery goes in flight
    /// behind them, so the store keeps the order they were sent in.
    pub(crate) fn store_unstored_inflight(
        &mut self,
        client_id: &MqttStr,
        persist: Option<&dyn Persistence>,
    ) {
        if self.unstored == 0 {
            return;
        }
        let mut sweep = Sweep::new(persist.filter(|_| self.stored), None);
        let seen = self.sweep_inflight(client_id, &mut sweep, Some(usize::MAX));
        self.unstored = self.unstored.saturating_sub(seen);
    }

    /// Stores the unstored in-flight deliveries up to index `through`, oldest first, and keeps
    /// the later ones: the store numbers in-flight entries in the order they reach it and sends
    /// them again in that order after a restart [MQTT-4.6.0-1], so none may overtake an older
    /// one (routing times of two publishers may be out of order by a little). Returns how many
    /// were unstored.
    fn sweep_inflight(
        &mut self,
        client_id: &MqttStr,
        sweep: &mut Sweep<'_>,
        through: Option<usize>,
    ) -> usize {
        let mut seen = 0;
        for (index, entry) in self.inflight.iter_mut().enumerate() {
            let change = || Change::Inflight {
                client_id: client_id.clone(),
                packet_id: entry.packet_id,
                state: entry.state,
                delivery: entry.delivery.stored(),
            };
            let due = through.is_some_and(|last| index <= last);
            if sweep.entry(&mut entry.unstored, &entry.delivery, due, change) {
                seen += 1;
            }
        }
        seen
    }
}
