//! A session: what outlives a network connection. Its subscriptions, the messages waiting for it
//! (bounded), the outbound QoS 1/2 messages in flight by packet identifier, the inbound QoS 2
//! identifiers awaiting PUBREL, its expiry, and a will waiting for its delay.
//!
//! The session is shared: publishers push deliveries into its queue from their own tasks, while
//! at most one connection (its owner) drains the queue and runs the acknowledgement flows. Every
//! operation of the owner checks that it still owns the session, so a connection that has been
//! taken over can do no harm.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tern_codec::{MqttStr, QoS};

use crate::cluster_transfer::PreviousOwner;
use crate::hooks::Principal;
use crate::message::{ClusterMessageId, Delivery, Message};
use crate::persist::{Change, Persistence, RoutedBody};
use crate::retained_stream::RetainedStreams;
use crate::types::{ConnectionId, InflightState, Seq, SessionExpiry, SubscriptionRecord, Wakeup};
use crate::unstored::{AckHold, Durability};

/// Whether a delivery belongs in the store when its session is stored: QoS 1 and 2 messages
/// whose body has a message id. (Where it actually stands is its [`Durability`].)
pub(crate) fn belongs_in_store(delivery: &Delivery) -> bool {
    delivery.qos != QoS::AtMostOnce && delivery.message.id != 0
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
    /// Store sequence number that must be durable before the packet goes out ([`Seq::NONE`]: none).
    pub send_after: Seq,
    /// Whether the entry is in the store, held back from it, or never goes there.
    pub(crate) durability: Durability,
}

/// A delivery waiting in a session's queue, at its position (increasing within the session;
/// the store's key for it).
#[derive(Debug)]
pub struct QueuedDelivery {
    pub position: u64,
    pub delivery: Delivery,
    /// Whether the entry is in the store, held back from it, or never goes there.
    pub(crate) durability: Durability,
}

/// A will whose delay has not run out yet (MQTT 5 Will Delay Interval).
#[derive(Debug, Clone)]
pub struct PendingWill {
    pub message: Arc<Message>,
    pub publish_at: Instant,
    /// Who set it: the will is checked again for them when it is published (`None`: restored
    /// from the store, checked when it was set, before the restart).
    pub principal: Option<Arc<crate::hooks::Principal>>,
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
    /// In sending order. Changed only through `push_inflight`, `remove_inflight` and `clear`,
    /// which keep `inflight_ids` in step.
    pub(crate) inflight: VecDeque<Inflight>,
    /// The packet identifiers of `inflight` as a set, made once the window is large (below,
    /// a pass over the window finds a free identifier as fast) and dropped when it empties.
    inflight_ids: Option<Box<PacketIdSet>>,
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
    /// Cluster: a shell a claim made of the session before its hand-over (see
    /// `Broker::import_shell`), not attached since; only a shell merges with what is handed
    /// over.
    pub(crate) shell: bool,
    /// Cluster: what a moved session knows of the messages planned before its routes
    /// reached every table, while copies of them may still come: the cluster ids of those
    /// queued for it since a claim made its shell (late copies from the previous owner may
    /// follow, see `Broker::publish_late`), and the nodes whose copies of them all reached
    /// the previous owner (see [`SeenIds`]). Boxed: rare.
    pub(crate) seen: Option<Box<SeenIds>>,
    /// Retained sets being sent for new subscriptions (boxed: rare, and an idle session
    /// should cost little).
    pub(crate) retained: Option<Box<RetainedStreams>>,
    /// Who the client of the session is, as its last connection was authenticated: partial
    /// subscriptions are checked against it, and a re-check after a reload uses it. `None`
    /// for a session restored from the store whose client has not connected since.
    pub(crate) principal: Option<Arc<Principal>>,
    /// What the admin API shows of the connection attached (set at CONNECT, cleared when it
    /// goes). Inline, not boxed: 16 bytes more for an offline session, one allocation (32
    /// bytes with malloc's header) less for every connected one (issue 14).
    pub(crate) connection: Option<crate::admin::ConnectionFacts>,
    /// Set by an administrative kick (the owning connection closes with DISCONNECT 0x98 at
    /// its next turn) or a cluster's claim of the client id on another node (0x8E). Cleared
    /// when a connection attaches or detaches.
    pub(crate) kicked: Option<Kick>,
}

/// The most cluster ids a session remembers ([`SeenIds`]): beyond them the oldest is
/// forgotten (a late copy of it would be delivered again). What is remembered is only what
/// was planned before the move's routes reached every table, so this bounds the messages
/// of a move that takes long to route.
const SEEN_MAX: usize = 100_000;

/// What a session moved by the claim `epoch` knows of the messages planned below `window`
/// (the log index from which every table routes the session here; unknown, so every one,
/// until set), which may reach it more than once while the routes change:
/// - the cluster ids of those queued for it since its shell was made, the last
///   [`SEEN_MAX`] of them, while late copies may come (a late copy of one is dropped, and a
///   routed copy of one that came late);
/// - what the previous owner had before it handed the session over ([`PreviousOwner`]): each
///   copy planned below `window`, and from `had.routes_from` on (the previous owner's routes
///   for the session were in every table then), by a node that answered its flush (in the
///   run it answered in), or by one that did not, up to the number of its last message
///   that had reached the previous owner (in that run). It delivered each on the old
///   connection or handed it over, so a routed copy of one here is a second copy (dropped:
///   the old connection may have taken it). A node that restarted since plans in another
///   run (below `window` too, while it applies its log again): those copies the previous
///   owner may not have had;
/// - the late copies taken before the merge (`late_taken`): a copy one node numbered
///   before another but queued after it reaches the previous owner after the export,
///   although its number is below the last one that reached it; it comes as a late copy,
///   which the merge keeps (or the shell's own copy of it, which the late one found
///   there). Past [`SEEN_MAX`] of them, the merge drops the shell's copy of a later one.
#[derive(Debug)]
pub(crate) struct SeenIds {
    pub(crate) epoch: u64,
    pub(crate) window: u64,
    /// Whether late copies may still come (the ids are remembered while they may).
    late: bool,
    had: PreviousOwner,
    ids: HashSet<ClusterMessageId>,
    order: VecDeque<ClusterMessageId>,
    late_taken: HashSet<ClusterMessageId>,
}

/// How a delivery came to a session (see [`SeenIds::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Came {
    /// This node's routes brought it.
    Routed,
    /// A late copy from the session's previous owner (`Broker::publish_late`).
    Late,
    /// A returned queue held it: what another copy of the session held, which the previous
    /// owner may not have had.
    Returned,
}

impl SeenIds {
    pub(crate) fn new(epoch: u64) -> SeenIds {
        SeenIds {
            epoch,
            window: u64::MAX,
            late: true,
            had: PreviousOwner::default(),
            ids: HashSet::new(),
            order: VecDeque::new(),
            late_taken: HashSet::new(),
        }
    }

    /// Whether a late copy may be taken (the ids are remembered).
    pub(crate) fn takes_late(&self) -> bool {
        self.late
    }

    /// No late copy can come any more: the ids are forgotten.
    pub(crate) fn no_late_copies(&mut self) {
        self.late = false;
        self.ids = HashSet::new();
        self.order = VecDeque::new();
        self.late_taken = HashSet::new();
    }

    /// Whether anything is left to know: what the previous owner had, or the ids.
    pub(crate) fn knows_anything(&self) -> bool {
        self.late || !self.had.is_empty()
    }

    /// What the previous owner had (see [`SeenIds`]).
    pub(crate) fn set_previous_owner(&mut self, had: PreviousOwner) {
        self.had = had;
    }

    /// Whether the previous owner had the message `id` before it handed the session over:
    /// planned below the window, with its routes, by a node that answered its flush (in the
    /// run it answered in), or by one that did not, no later than its last message that had
    /// reached the previous owner (and not taken as a late copy here).
    pub(crate) fn previous_owner_had(&self, id: &ClusterMessageId) -> bool {
        if !(self.had.routes_from..self.window).contains(&id.planned_at) {
            return false;
        }
        self.had.flushed.contains(&(id.node, id.run))
            || (self
                .had
                .reached
                .iter()
                .any(|&(node, run, last)| (node, run) == (id.node, id.run) && id.number <= last)
                && !self.late_taken.contains(id))
    }

    /// Whether a copy of `id` that `came` may be queued: false for a second copy. Remembers
    /// `id` if it was planned inside the window while late copies may come.
    pub(crate) fn admit(&mut self, id: ClusterMessageId, came: Came) -> bool {
        if id.planned_at >= self.window {
            return true;
        }
        // Not a late copy: the previous owner did not have it when it exported the session.
        if came == Came::Routed && self.previous_owner_had(&id) {
            return false;
        }
        if !self.late {
            return true;
        }
        let admitted = self.record(id);
        if admitted && came == Came::Late {
            self.taken_late(id);
        }
        admitted
    }

    /// A late copy of `id` reached the session (taken, or found a copy it holds): the
    /// client's copy, which the merge keeps (see `previous_owner_had`).
    pub(crate) fn taken_late(&mut self, id: ClusterMessageId) {
        if self.late_taken.len() < SEEN_MAX {
            self.late_taken.insert(id);
        }
    }

    /// The merge dropped the shell's copy of `id` (the previous owner had it): a late copy
    /// of it, which comes if it had it only after the export, is the client's.
    pub(crate) fn forget(&mut self, id: &ClusterMessageId) {
        self.ids.remove(id);
    }

    /// Remembers `id` whatever its plan, while late copies may come; false when it was
    /// remembered already.
    pub(crate) fn record(&mut self, id: ClusterMessageId) -> bool {
        if !self.late {
            return true;
        }
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_MAX
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        true
    }
}

/// Why the owning connection of a session must close although it still owns the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kick {
    /// An operator kicked it (DISCONNECT 0x98 Administrative action).
    Operator,
    /// Another node of a cluster claimed the client id (DISCONNECT 0x8E Session taken over):
    /// the connection closes as a take-over, but the session stays here, offline, as after
    /// any close, with its will scheduled per its delay (see `Broker::take_over`).
    ClaimedElsewhere,
    /// The node lost its cluster's quorum past its lease (DISCONNECT 0x9C Use another
    /// server): the session stays here, offline, as after any close.
    LeaseLost,
}

/// A session, shared by the registry, the subscription index and its connection.
#[derive(Debug)]
pub struct Session {
    client_id: MqttStr,
    /// Mirror of `SessionState::owner` (0 for none), readable without the lock.
    owner_hint: AtomicU64,
    /// The worker of the owner's connection (`u16::MAX`: none or unknown), readable without
    /// the lock (see `worker_post`).
    worker_hint: AtomicU16,
    /// Per-client debug tracing (the admin API's `set_client_tracing`), read lock-free by its
    /// connection for every packet.
    traced: AtomicBool,
    /// Mirror of `SessionState::kicked`, read lock-free by the connection for every packet
    /// it receives: a kicked connection handles nothing more (review 13 NIT 20).
    kicked_hint: AtomicBool,
    state: Mutex<SessionState>,
}

/// How [`Session::enqueue`] queues a delivery.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Queueing {
    /// The most messages waiting: beyond it the oldest is dropped.
    pub(crate) max_queued: usize,
    /// Whether QoS 0 is queued for an offline session.
    pub(crate) qos0_offline: bool,
    /// Cluster: how the delivery came (see [`SeenIds::admit`]).
    pub(crate) came: Came,
}

/// What pushing a delivery into a session did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pushed {
    pub(crate) outcome: Enqueued,
    /// The sequence number of the last change submitted ([`Seq::NONE`] for none).
    pub(crate) seq: Seq,
    /// Whether the broker must add the session to the sessions it sweeps (its first unstored
    /// delivery).
    pub(crate) sweep: bool,
}

/// What happened to a delivery pushed into a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Queued, and the oldest waiting message was dropped to make room.
    QueuedDroppingOldest,
    /// Not queued: QoS 0 for an offline session, or the session has ended.
    Discarded,
    /// Not queued: a moved session had the message already (it came both ways, see
    /// `Broker::publish_late`).
    Duplicate,
}

impl Session {
    pub(crate) fn new(client_id: MqttStr, expiry: SessionExpiry) -> Session {
        Session {
            client_id,
            owner_hint: AtomicU64::new(0),
            worker_hint: AtomicU16::new(u16::MAX),
            traced: AtomicBool::new(false),
            kicked_hint: AtomicBool::new(false),
            state: Mutex::new(SessionState {
                owner: None,
                wakeup: None,
                subscriptions: HashMap::new(),
                queue: VecDeque::new(),
                next_position: 1,
                inflight: VecDeque::new(),
                inflight_ids: None,
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
                shell: false,
                seen: None,
                retained: None,
                principal: None,
                connection: None,
                kicked: None,
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

    /// Whether per-client debug tracing is on for this session's client.
    pub fn traced(&self) -> bool {
        self.traced.load(Ordering::Relaxed)
    }

    pub(crate) fn set_traced(&self, on: bool) {
        self.traced.store(on, Ordering::Relaxed);
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

    /// Whether an operator kicked the connection that owns the session (lock-free mirror).
    pub(crate) fn kicked_hint(&self) -> bool {
        self.kicked_hint.load(Ordering::Relaxed)
    }

    /// Sets `kicked` and its lock-free mirror; call with the state locked (`state`).
    pub(crate) fn set_kicked(&self, state: &mut SessionState, kicked: Option<Kick>) {
        state.kicked = kicked;
        self.kicked_hint.store(kicked.is_some(), Ordering::Relaxed);
    }

    /// Records the owner in the lock-free mirror, and the worker its connection is on; call
    /// with the state locked.
    pub(crate) fn publish_owner(&self, owner: Option<ConnectionId>, worker: Option<u16>) {
        self.worker_hint
            .store(worker.unwrap_or(u16::MAX), Ordering::Relaxed);
        self.owner_hint
            .store(owner.map_or(0, ConnectionId::get), Ordering::Relaxed);
    }

    /// Whether the owner's connection (if any) got its id before `connections_before` was
    /// the next one (a hint, as the owner).
    pub(crate) fn attached_before(&self, connections_before: u64) -> bool {
        self.owner_hint.load(Ordering::Relaxed) < connections_before
    }

    /// The worker of the owner's connection, if known (a hint: it may change right after).
    pub(crate) fn worker(&self) -> Option<u16> {
        match self.worker_hint.load(Ordering::Relaxed) {
            u16::MAX => None,
            worker => Some(worker),
        }
    }

    /// Pushes a delivery into the queue, dropping the oldest waiting message when the queue
    /// holds `queueing.max_queued` already. QoS 0 for an offline session is discarded unless
    /// `queueing.qos0_offline`. With `persist`, a stored delivery (QoS 1/2 of a persistent session)
    /// is submitted as it is queued, after the message body that `body` holds for it.
    ///
    /// With `hold` (a QoS 1 PUBLISH whose acknowledgement can wait for its subscribers), a
    /// QoS 1 delivery to a stored session whose client is connected is queued unstored
    /// instead (see `unstored`).
    pub(crate) fn enqueue(
        &self,
        delivery: Delivery,
        queueing: Queueing,
        persist: Option<&dyn Persistence>,
        body: &mut RoutedBody<'_>,
        hold: Option<(&mut AckHold<'_>, Instant)>,
    ) -> Pushed {
        let mut state = self.lock();
        if state.ended || queueing.max_queued == 0 {
            return Pushed {
                outcome: Enqueued::Discarded,
                seq: Seq::NONE,
                sweep: false,
            };
        }
        if state.owner.is_none() && delivery.qos == QoS::AtMostOnce && !queueing.qos0_offline {
            return Pushed {
                outcome: Enqueued::Discarded,
                seq: Seq::NONE,
                sweep: false,
            };
        }
        // A moved session's plain subscriptions get a message once, whichever way it came
        // (this node's routes, the previous owner's connection or hand-over, or a late copy
        // from the previous owner).
        if delivery.shared_filter.is_none()
            && let Some(seen) = state.seen.as_deref_mut()
            && let Some(id) = delivery.message.cluster_id.as_deref()
            && !seen.admit(*id, queueing.came)
        {
            return Pushed {
                outcome: Enqueued::Duplicate,
                seq: Seq::NONE,
                sweep: false,
            };
        }
        let persist = persist.filter(|_| state.stored);
        let mut seq = Seq::NONE;
        let mut outcome = Enqueued::Queued;
        if state.queue.len() >= queueing.max_queued
            && let Some(dropped) = state.queue.pop_front()
        {
            state.dropped += 1;
            outcome = Enqueued::QueuedDroppingOldest;
            match (&dropped.durability, persist) {
                (Durability::Unstored(_), _) => {
                    state.unstored = state.unstored.saturating_sub(1);
                }
                (Durability::Stored, Some(persist)) => {
                    seq = persist.submit(Change::Unqueued {
                        client_id: self.client_id.clone(),
                        position: dropped.position,
                    });
                }
                (Durability::Stored | Durability::Volatile, _) => {}
            }
        }
        let position = state.next_position;
        state.next_position += 1;
        let may_wait = state.owner.is_some()
            && delivery.qos == QoS::AtLeastOnce
            && delivery.shared_filter.is_none();
        let mut list = false;
        let durability = match (
            persist.filter(|_| belongs_in_store(&delivery)),
            hold.filter(|_| may_wait),
        ) {
            (None, _) => Durability::Volatile,
            (Some(_), Some((hold, now))) => {
                state.unstored += 1;
                list = !std::mem::replace(&mut state.listed, true);
                Durability::Unstored(hold.unstored(now))
            }
            (Some(persist), None) => {
                body.hold(&delivery.message);
                seq = persist.submit(Change::Queued {
                    client_id: self.client_id.clone(),
                    position,
                    delivery: delivery.stored(),
                });
                Durability::Stored
            }
        };
        let was_empty = state.queue.is_empty();
        state.queue.push_back(QueuedDelivery {
            position,
            delivery,
            durability,
        });
        if was_empty && let Some(wakeup) = &state.wakeup {
            wakeup.wake();
        }
        Pushed {
            outcome,
            seq,
            sweep: list,
        }
    }

    /// Number of waiting messages (for tests and metrics).
    pub fn queued_len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Number of outbound messages awaiting acknowledgement.
    pub fn inflight_len(&self) -> usize {
        self.lock().inflight.len()
    }

    /// Retained messages taken from the index for new subscriptions and not sent yet: at most
    /// a small batch per subscription, whatever the size of the retained set.
    pub fn retained_buffered(&self) -> usize {
        self.lock()
            .retained
            .as_ref()
            .map_or(0, |streams| streams.buffered())
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

/// From this many messages in flight on, a session keeps their packet identifiers in a
/// [`PacketIdSet`].
const LARGE_WINDOW: usize = 32;

/// A set of packet identifiers: a bit each (8 KiB).
struct PacketIdSet([u64; 1024]);

impl Default for PacketIdSet {
    fn default() -> PacketIdSet {
        PacketIdSet([0; 1024])
    }
}

impl PacketIdSet {
    fn insert(&mut self, id: u16) {
        self.0[usize::from(id / 64)] |= 1 << (id % 64);
    }

    fn remove(&mut self, id: u16) {
        self.0[usize::from(id / 64)] &= !(1 << (id % 64));
    }

    fn contains(&self, id: u16) -> bool {
        self.0[usize::from(id / 64)] & (1 << (id % 64)) != 0
    }
}

impl std::fmt::Debug for PacketIdSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count: u32 = self.0.iter().map(|word| word.count_ones()).sum();
        write!(f, "PacketIdSet({count} ids)")
    }
}

impl SessionState {
    /// A packet identifier not used by any outbound message in flight [MQTT-2.2.1-2].
    /// The caller keeps the in-flight count below 65 535, so one is always free.
    pub(crate) fn allocate_packet_id(&mut self) -> u16 {
        if self.inflight_ids.is_none() && self.inflight.len() >= LARGE_WINDOW {
            let mut set = Box::new(PacketIdSet::default());
            for entry in &self.inflight {
                set.insert(entry.packet_id);
            }
            self.inflight_ids = Some(set);
        }
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            let used = match &self.inflight_ids {
                Some(set) => set.contains(id),
                None => self.inflight.iter().any(|entry| entry.packet_id == id),
            };
            if !used {
                return id;
            }
        }
    }

    /// Adds an entry at the end of the in-flight window.
    pub(crate) fn push_inflight(&mut self, entry: Inflight) {
        if let Some(set) = &mut self.inflight_ids {
            set.insert(entry.packet_id);
        }
        self.inflight.push_back(entry);
    }

    pub(crate) fn inflight_position(&self, packet_id: u16) -> Option<usize> {
        self.inflight
            .iter()
            .position(|entry| entry.packet_id == packet_id)
    }

    /// Called when the owner's connection goes away: everything in flight is sent again, in
    /// order, when a connection resumes the session [MQTT-4.4.0-1].
    pub(crate) fn detach(&mut self) {
        // 8 KiB an offline session does not need; rebuilt when its window is large again.
        self.inflight_ids = None;
        self.owner = None;
        self.wakeup = None;
        self.connection = None;
        self.kicked = None;
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
        if self.inflight.is_empty() {
            self.inflight_ids = None;
        } else if let Some(set) = &mut self.inflight_ids {
            set.remove(entry.packet_id);
        }
        if entry.pending {
            self.pending -= 1;
        }
        if entry.durability.is_unstored() {
            self.unstored = self.unstored.saturating_sub(1);
        }
        Some(entry)
    }

    /// Empties the session for a clean start or its end.
    pub(crate) fn clear(&mut self) {
        self.subscriptions.clear();
        self.queue.clear();
        self.inflight.clear();
        self.inflight_ids = None;
        self.pending = 0;
        self.unstored = 0;
        self.inbound_qos2.clear();
        self.retained = None;
    }

    /// The session is no longer in the store: none of its deliveries is either (call after
    /// the unstored ones were released).
    pub(crate) fn forget_stored(&mut self) {
        let entries = self.queue.iter_mut().map(|queued| &mut queued.durability);
        for durability in entries.chain(self.inflight.iter_mut().map(|entry| &mut entry.durability))
        {
            if durability.is_stored() {
                *durability = Durability::Volatile;
            }
        }
    }

    /// Starts sending the retained set of a new subscription (see `retained_stream`).
    pub(crate) fn stream_retained(
        &mut self,
        filter: MqttStr,
        granted: QoS,
        identifier: Option<u32>,
        reader: Option<Arc<Principal>>,
        subscribed_at: u64,
    ) {
        self.retained.get_or_insert_with(Box::default).start(
            filter,
            granted,
            identifier,
            reader,
            subscribed_at,
        );
    }

    /// Stops sending the retained set of `filter`, if it is still being sent.
    pub(crate) fn stop_retained(&mut self, filter: &str) {
        if let Some(streams) = &mut self.retained {
            streams.stop(filter);
            if streams.is_empty() {
                self.retained = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, SubscriptionIds};

    fn entry(packet_id: u16) -> Inflight {
        let message = Message {
            cluster_id: None,
            topic: MqttStr::from_static("t"),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            expires_at: None,
            publisher: None,
            id: 0,
        };
        Inflight {
            packet_id,
            delivery: Delivery {
                message: message.into(),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: SubscriptionIds::None,
                shared_filter: None,
            },
            state: InflightState::AwaitingPubAck,
            pending: false,
            dup: false,
            send_after: Seq::NONE,
            durability: Durability::Volatile,
        }
    }

    /// [MQTT-2.2.1-2]: a new PUBLISH never reuses a packet identifier still in flight, with a
    /// small window (searched) and a large one (kept in a set), across the wrap-around and
    /// after entries left out of order.
    #[test]
    fn allocated_packet_ids_are_never_in_flight() {
        let session = Session::new(MqttStr::from_static("c"), SessionExpiry::AtDisconnect);
        let mut state = session.lock();
        for round in 0..3 {
            for _ in 0..200 {
                let id = state.allocate_packet_id();
                assert!(
                    state.inflight_position(id).is_none(),
                    "round {round}: {id} is in flight"
                );
                state.push_inflight(entry(id));
            }
            // Acknowledged out of order: every third entry leaves.
            let mut index = 0;
            while index < state.inflight.len() {
                if index % 3 == 0 {
                    state.remove_inflight(index);
                } else {
                    index += 1;
                }
            }
        }
        // Around the wrap: the ids still in flight are skipped.
        state.next_packet_id = u16::MAX - 5;
        let held: Vec<u16> = state.inflight.iter().map(|e| e.packet_id).collect();
        for _ in 0..100 {
            let id = state.allocate_packet_id();
            assert_ne!(id, 0);
            assert!(!held.contains(&id) && state.inflight_position(id).is_none());
            state.push_inflight(entry(id));
        }
        while !state.inflight.is_empty() {
            state.remove_inflight(0);
        }
        assert!(state.inflight_ids.is_none(), "the set goes with the window");
    }
}
