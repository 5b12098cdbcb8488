//! The state all connections share: the session registry, the subscription index, the retained
//! messages, the timers of offline sessions, the hooks and the counters.
//!
//! Lock order, everywhere: registry, then subscription index, then a session, then the retained
//! messages (a session streaming its retained set reads them under its lock); the timers are
//! locked last. No code path takes them in another order, so they cannot deadlock.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use tern_codec::{MqttStr, QoS, ReasonCode, RetainHandling};

use crate::cluster_hook::{ClusterHook, Groups, Origin, Selection};
use crate::config::BrokerConfig;
use crate::hooks::{AuthRequestId, Authenticator, Authorizer, FilterAccess, Hooks, Principal};
use crate::message::{Delivery, Message, MessageRef, SubscriptionIds};
use crate::metrics::Metrics;
use crate::persist::{
    Change, Group, MessageId, Persistence, Recovered, RecoveredDelivery, RecoveredSession,
    RoutedBody,
};
use crate::retained::RetainedIndex;
use crate::retained_stream::RetainedSource;
use crate::session::{
    Came, Enqueued, Inflight, PendingWill, QueuedDelivery, Queueing, Session, SessionState,
    belongs_in_store,
};
use crate::subscriptions::{IndexEntry, Matched, SubscriptionIndex};
use crate::types::{ConnectionId, InflightState, Seq, SessionExpiry, SubscriptionRecord, Wakeup};
use crate::unstored::{AckHold, Durability, Sweeper};
use crate::worker_post::{MAX_POSTED_WORKERS, Scope};

/// A subscription a message is routed to, with the shared subscription it came through.
type Target<'a> = (&'a Subscriber, Option<&'a MqttStr>);

thread_local! {
    /// The routing vector of this thread, kept between publishes (always empty between them).
    static TARGETS: std::cell::Cell<Vec<Target<'static>>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Empties `targets` and hands its allocation to a vector of another lifetime. The element
/// types have the same layout, so the standard library collects in place (no allocation);
/// nothing is carried over, so no reference outlives its borrow.
fn reuse<'a, 'b>(mut targets: Vec<Target<'a>>) -> Vec<Target<'b>> {
    targets.clear();
    targets.into_iter().map(|_| unreachable!()).collect()
}

/// The session registry: sessions by client identifier (the key is the session's own, so an
/// entry is one pointer).
pub(crate) type Registry = HashSet<Registered>;

/// A session in the registry, hashed and compared by its client identifier.
pub(crate) struct Registered(pub(crate) Arc<Session>);

impl PartialEq for Registered {
    fn eq(&self, other: &Self) -> bool {
        self.0.client_id() == other.0.client_id()
    }
}

impl Eq for Registered {}

impl std::hash::Hash for Registered {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.client_id().as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for Registered {
    fn borrow(&self) -> &str {
        self.0.client_id().as_str()
    }
}

/// Every connection's wakeup, in slots reused as connections come and go.
#[derive(Default)]
struct ConnectionSlots {
    slots: Vec<Option<Arc<dyn Wakeup>>>,
    free: Vec<u32>,
}

impl ConnectionSlots {
    fn insert(&mut self, wakeup: Arc<dyn Wakeup>) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(wakeup);
                slot
            }
            None => {
                self.slots.push(Some(wakeup));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        }
    }

    fn remove(&mut self, slot: u32) {
        if let Some(entry) = self.slots.get_mut(slot as usize)
            && entry.take().is_some()
        {
            self.free.push(slot);
        }
    }
}

/// Clients the registries have room for before they first grow.
const INITIAL_CLIENTS: usize = 4096;

/// What [`Broker::subscribe`] did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subscribed {
    /// The store sequence number of the change.
    pub(crate) seq: Seq,
    /// When the subscription streams its retained set: the tick of the retained clock it was
    /// made at, for its stream (see `retained_clock`).
    pub(crate) retained_from: Option<u64>,
}

/// A subscription in the index: the session and what it asked for.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    pub(crate) session: Arc<Session>,
    pub(crate) record: SubscriptionRecord,
    /// The authorizer found the filter only partly readable (`FilterAccess::Partial`): each
    /// message routed through it is checked with `may_read` against the session's principal.
    /// (In the record's padding: the index does not grow for it.)
    pub(crate) partial: bool,
    /// The tick of the retained clock at which the subscription was made, when it streams
    /// its retained set (0 otherwise): a message that a publish stored as retained before
    /// that tick reaches it through the stream, not from the publish (see
    /// [`Broker::retained_clock`]).
    pub(crate) retained_from: u64,
}

impl Subscriber {
    /// Whether a message on `topic` may go through this subscription: always for a granted
    /// one (no cost beyond this flag), after a check for a partial one. Fails closed: a
    /// session with no principal gets nothing through a partial subscription.
    fn may_read(&self, broker: &Broker, topic: &str) -> bool {
        if !self.partial {
            return true;
        }
        let principal = self.session.lock().principal.clone();
        principal.is_some_and(|principal| broker.authorizer().may_read(&principal, topic))
    }
}

impl IndexEntry for Subscriber {
    /// The session's address: unique among the sessions in the index, whose entries keep them
    /// alive.
    fn key(&self) -> usize {
        Arc::as_ptr(&self.session) as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKind {
    SessionExpiry,
    WillDelay,
}

/// A deadline of an offline session: when, which session (by address: unique while the timer
/// holds the session) and what for. The key is made from the session's own state (its
/// `expires_at`, its pending will's `publish_at`), so whoever changes that state can find the
/// timer and cancel it: a client that comes back removes its timers, and 10 000 reconnects
/// leave at most one timer of each kind per session, not 10 000.
type TimerKey = (Instant, usize, TimerKind);

fn timer_key(at: Instant, kind: TimerKind, session: &Arc<Session>) -> TimerKey {
    (at, Arc::as_ptr(session) as usize, kind)
}

/// The result of attaching a connection to a session at CONNECT.
pub(crate) struct Attached {
    pub(crate) session: Arc<Session>,
    pub(crate) present: bool,
    /// Store sequence number the CONNACK waits for ([`Seq::NONE`]: none).
    pub(crate) seq: Seq,
}

/// The shared broker state.
pub struct Broker {
    config: BrokerConfig,
    pub(crate) sessions: Mutex<Registry>,
    pub(crate) subscriptions: RwLock<SubscriptionIndex<Subscriber>>,
    /// Cluster: held (read) by a clustered local publish from its plan until its copies are
    /// queued; [`Broker::publish_barrier`] takes it (write) to wait for those under way.
    publish_gate: RwLock<()>,
    pub(crate) retained: RwLock<RetainedIndex>,
    /// The retained clock: one tick per retained message a local publish stores (taken under
    /// the retained lock, with the store) and per subscription that streams its retained set
    /// (taken under the index's write lock, with the insert). It makes a publish that stores a
    /// retained message and a SUBSCRIBE whose stream reads it agree on which of them delivers
    /// it, when they cross: the store comes before the route, the insert before the stream,
    /// so a message stored before the subscription's tick is in the index when the stream
    /// reads it (the publish's route passes over that subscription), and one stored after it
    /// is routed with the subscription in place (the stream passes over it). Without it, a
    /// publish storing its message before a SUBSCRIBE and routing it after got to the new
    /// subscriber twice: live and retained.
    retained_clock: AtomicU64,
    /// How many of the retained messages are the broker's own (`$SYS`), and their payload
    /// bytes: changed under the retained lock; left out of the limits and the figures.
    pub(crate) system_retained: Mutex<(usize, usize)>,
    /// The limits a reload changes while the broker runs (see [`crate::RuntimeLimits`]); they
    /// start as `config`'s and are read from here, not from `config`.
    pub(crate) live_limits: crate::admin::LiveLimits,
    /// Deadlines of offline sessions and delayed wills, earliest first. An entry goes when it
    /// fires, when the session resumes, or when the session ends (see [`TimerKey`]). Locked
    /// alone or last: no other lock is taken while it is held.
    timers: Mutex<BTreeMap<TimerKey, Arc<Session>>>,
    hooks: Hooks,
    /// Where changes go to become durable; `None` keeps everything in memory.
    persistence: Option<Arc<dyn Persistence>>,
    next_message_id: AtomicU64,
    metrics: Metrics,
    next_connection: AtomicU64,
    client_id_seed: u64,
    /// Set when the server shuts down.
    stopping: AtomicBool,
    /// Every connection's wakeup, so a shutdown reaches those without a session too.
    connections: Mutex<ConnectionSlots>,
    /// Sessions holding deliveries not stored yet (see `unstored`).
    sweeper: Sweeper,
    /// Deferred authentications waiting for their answer (see [`AuthCompletion`]), by id.
    deferred_auth: Mutex<HashMap<u64, DeferredAuthSlot>>,
    /// The authorizer in use: `hooks.authorizer` at first, replaced by
    /// [`Broker::set_authorizer`]. A read lock per check, as the subscription index already
    /// takes per publish; written only at a reload.
    authorizer: RwLock<Arc<dyn Authorizer>>,
    next_auth_request: AtomicU64,
    /// Bumped when the access rules change (`set_authorizer`, `recheck_access`).
    access_epoch: AtomicU64,
    /// The inboxes of the server's workers, by worker number (see `worker_post`).
    pub(crate) worker_inboxes: std::sync::OnceLock<Vec<Arc<dyn crate::WorkerInbox>>>,
    /// The cluster this node belongs to, if any (see `cluster_hook`): one load per publish
    /// when there is none.
    pub(crate) cluster: std::sync::OnceLock<Arc<dyn ClusterHook>>,
    /// Claims of client ids waiting for the cluster's answer (see `cluster_claim`).
    pub(crate) claims: crate::cluster_claim::Claims,
    /// Cluster: until when this node serves its clients (see `cluster_lease`).
    pub(crate) lease: crate::cluster_lease::Lease,
}

/// What [`Broker::recheck_access`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecheckSummary {
    /// Sessions looked at.
    pub sessions: usize,
    /// Subscriptions removed, now denied.
    pub removed: usize,
    /// Subscriptions now checked per message.
    pub partial: usize,
}

/// Where the answer to one deferred authentication waits for its connection.
struct DeferredAuthSlot {
    wakeup: Arc<dyn Wakeup>,
    result: Option<Result<Principal, ReasonCode>>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Broker {
    /// A broker that lets every client in and allows everything.
    pub fn new(config: BrokerConfig) -> Arc<Broker> {
        Broker::with_hooks(config, Hooks::default())
    }

    pub fn with_hooks(config: BrokerConfig, hooks: Hooks) -> Arc<Broker> {
        Broker::with_persistence(config, hooks, None)
    }

    /// A broker whose persistent sessions and retained messages are kept by `persistence`.
    pub fn with_persistence(
        config: BrokerConfig,
        hooks: Hooks,
        persistence: Option<Arc<dyn Persistence>>,
    ) -> Arc<Broker> {
        let authorizer = RwLock::new(hooks.authorizer.clone());
        let live_limits = crate::admin::LiveLimits::new(&config);
        Arc::new(Broker {
            sweeper: Sweeper::new(config.unstored_grace),
            config,
            // Sized for a few thousand clients up front: growing a large table rehashes it
            // under the registry lock, which stalls every CONNECT meanwhile.
            sessions: Mutex::new(Registry::with_capacity(INITIAL_CLIENTS)),
            subscriptions: RwLock::new(SubscriptionIndex::default()),
            publish_gate: RwLock::new(()),
            retained: RwLock::new(RetainedIndex::default()),
            system_retained: Mutex::new((0, 0)),
            live_limits,
            timers: Mutex::new(BTreeMap::new()),
            hooks,
            persistence,
            next_message_id: AtomicU64::new(1),
            retained_clock: AtomicU64::new(1),
            metrics: Metrics::default(),
            next_connection: AtomicU64::new(1),
            client_id_seed: RandomState::new().hash_one(0x7465_726e_u64),
            stopping: AtomicBool::new(false),
            connections: Mutex::new(ConnectionSlots::default()),
            deferred_auth: Mutex::new(HashMap::new()),
            authorizer,
            next_auth_request: AtomicU64::new(1),
            access_epoch: AtomicU64::new(0),
            worker_inboxes: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            claims: crate::cluster_claim::Claims::default(),
            lease: crate::cluster_lease::Lease::default(),
        })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn authenticator(&self) -> &dyn Authenticator {
        &*self.hooks.authenticator
    }

    /// Registers a deferred authentication; its answer wakes `wakeup`.
    pub(crate) fn defer_auth(&self, wakeup: Arc<dyn Wakeup>) -> AuthRequestId {
        let id = self.next_auth_request.fetch_add(1, Ordering::Relaxed);
        lock(&self.deferred_auth).insert(
            id,
            DeferredAuthSlot {
                wakeup,
                result: None,
            },
        );
        AuthRequestId(id)
    }

    /// The answer to a deferred authentication, from wherever the server decided it: kept for
    /// its connection, which is woken. An unknown id (the connection gave up) is ignored.
    pub fn complete_auth(&self, id: AuthRequestId, result: Result<Principal, ReasonCode>) {
        let wakeup = {
            let mut pending = lock(&self.deferred_auth);
            let Some(slot) = pending.get_mut(&id.0) else {
                return;
            };
            if slot.result.is_some() {
                return;
            }
            slot.result = Some(result);
            slot.wakeup.clone()
        };
        wakeup.wake();
    }

    /// The answer for `id`, if it came (the request is then forgotten).
    pub(crate) fn take_auth_result(
        &self,
        id: AuthRequestId,
    ) -> Option<Result<Principal, ReasonCode>> {
        let mut pending = lock(&self.deferred_auth);
        let result = pending.get_mut(&id.0)?.result.take()?;
        pending.remove(&id.0);
        Some(result)
    }

    /// Deferred authentications waiting for their answer (for tests and metrics).
    #[doc(hidden)]
    pub fn pending_auth_count(&self) -> usize {
        lock(&self.deferred_auth).len()
    }

    /// Whether the connection of deferred authentication `id` still waits for its answer (it
    /// has not closed, timed out or been answered): a back end skips work nobody waits for.
    pub fn is_auth_wanted(&self, id: AuthRequestId) -> bool {
        lock(&self.deferred_auth)
            .get(&id.0)
            .is_some_and(|slot| slot.result.is_none())
    }

    /// How many times the access rules changed (see [`Broker::recheck_access`]).
    pub(crate) fn access_epoch(&self) -> u64 {
        self.access_epoch.load(Ordering::SeqCst)
    }

    /// Forgets a deferred authentication whose connection no longer waits for it.
    pub(crate) fn forget_auth(&self, id: AuthRequestId) {
        lock(&self.deferred_auth).remove(&id.0);
    }

    /// The authorizer in use (held for the length of a check).
    pub(crate) fn authorizer(&self) -> RwLockReadGuard<'_, Arc<dyn Authorizer>> {
        read(&self.authorizer)
    }

    /// Replaces the authorizer (access rules reloaded): checks from now on ask `authorizer`.
    /// Subscriptions already made keep what they were granted until
    /// [`Broker::recheck_access`].
    pub fn set_authorizer(&self, authorizer: Arc<dyn Authorizer>) {
        *write(&self.authorizer) = authorizer;
        // After the change: a SUBSCRIBE that reads the new epoch judges with the new rules.
        self.access_epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    pub(crate) fn persistence(&self) -> Option<&dyn Persistence> {
        self.persistence.as_deref()
    }

    /// Submits a change to the store, if there is one; returns its sequence number
    /// ([`Seq::NONE`] without a store).
    pub(crate) fn persist(&self, change: impl FnOnce() -> Change) -> Seq {
        match &self.persistence {
            Some(persistence) => persistence.submit(change()),
            None => Seq::NONE,
        }
    }

    /// Opens an atomic group of changes (see [`Persistence::begin_group`]) that closes when the
    /// returned guard drops; `None` without a store.
    pub(crate) fn atomic(&self) -> Option<Group<'_>> {
        self.persistence().map(Group::open)
    }

    /// Whether the store takes new durable work (always, without a store): see
    /// [`Persistence::accepts_new_work`].
    pub fn accepts_new_work(&self) -> bool {
        self.persistence
            .as_ref()
            .is_none_or(|p| p.accepts_new_work())
    }

    /// Whether the store's commits fail (never, without a store): see
    /// [`Persistence::commits_failing`].
    pub(crate) fn commits_failing(&self) -> bool {
        self.persistence
            .as_ref()
            .is_some_and(|p| p.commits_failing())
    }

    /// Whether the store holds more pending changes than it keeps in memory (never, without
    /// a store): see [`Persistence::congested`].
    pub(crate) fn store_congested(&self) -> bool {
        self.persistence.as_ref().is_some_and(|p| p.congested())
    }

    /// The sequence number of the last change submitted ([`Seq::NONE`] without a store).
    pub(crate) fn submitted(&self) -> Seq {
        self.persistence
            .as_ref()
            .map_or(Seq::NONE, |p| p.submitted())
    }

    /// The highest durable sequence number (everything, without a store).
    pub(crate) fn durable(&self) -> Seq {
        self.persistence.as_ref().map_or(Seq::ALL, |p| p.durable())
    }

    /// A message id for a body that will be stored; 0 without a store.
    pub(crate) fn new_message_id(&self) -> MessageId {
        if self.persistence.is_some() {
            self.next_message_id.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        }
    }

    /// A new connection: its id, and the slot of its wakeup (registered for a shutdown).
    /// The first connection id not given out yet.
    pub(crate) fn connections_issued(&self) -> u64 {
        self.next_connection.load(Ordering::Relaxed)
    }

    pub(crate) fn register_connection(&self, wakeup: Arc<dyn Wakeup>) -> (ConnectionId, u32) {
        // Starts at 1 and would need 2^64 connections to wrap.
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let id = std::num::NonZeroU64::new(id).unwrap_or(std::num::NonZeroU64::MIN);
        let slot = lock(&self.connections).insert(wakeup);
        (ConnectionId(id), slot)
    }

    pub(crate) fn deregister_connection(&self, slot: u32) {
        lock(&self.connections).remove(slot);
    }

    /// The server is shutting down: every connection is woken to close (MQTT 5 clients get
    /// DISCONNECT 0x8B), and new CONNECTs are refused.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        let wakeups: Vec<Arc<dyn Wakeup>> = lock(&self.connections)
            .slots
            .iter()
            .flatten()
            .cloned()
            .collect();
        for wakeup in wakeups {
            wakeup.wake();
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// A client identifier for a client that sent an empty one [MQTT-3.1.3-6]: unique within
    /// this process, and unlikely to meet one of an earlier run.
    pub(crate) fn assign_client_id(&self, connection: ConnectionId) -> MqttStr {
        let text = format!("tern-{:016x}-{:x}", self.client_id_seed, connection.get());
        MqttStr::try_from(text).unwrap_or_default()
    }

    /// Rebuilds the state read back from the store at start-up: sessions (offline, with their
    /// subscriptions, queued and in-flight messages, inbound QoS 2 identifiers and wills),
    /// retained messages, and the message id counter. Call before accepting connections.
    pub fn restore(&self, recovered: Recovered, now: Instant) {
        self.next_message_id
            .fetch_max(recovered.next_message_id.max(1), Ordering::Relaxed);
        {
            let mut retained = write(&self.retained);
            for message in recovered.retained {
                retained.insert(message);
            }
        }
        for recovered in recovered.sessions {
            self.restore_session(recovered, now);
        }
    }

    fn restore_session(&self, recovered: RecoveredSession, now: Instant) {
        let RecoveredSession {
            client_id,
            expiry,
            offline_for,
            subscriptions,
            queue,
            inflight,
            inbound_qos2,
            will,
        } = recovered;
        let session = Arc::new(Session::new(client_id.clone(), expiry));
        let delivery = |d: RecoveredDelivery| Delivery {
            message: d.message.into(),
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.subscription_ids,
            shared_filter: d.shared_filter,
        };
        let (expires_at, will_at) = {
            let mut state = session.lock();
            state.stored = true;
            for (filter, record) in &subscriptions {
                state.subscriptions.insert(filter.clone(), *record);
            }
            for (position, queued) in queue {
                state.next_position = state.next_position.max(position + 1);
                state.queue.push_back(QueuedDelivery {
                    position,
                    delivery: delivery(queued),
                    durability: Durability::Stored,
                });
            }
            for (packet_id, flow, sent) in inflight {
                // Everything in flight goes out again when the client returns [MQTT-4.4.0-1].
                state.push_inflight(Inflight {
                    packet_id,
                    delivery: delivery(sent),
                    state: flow,
                    pending: true,
                    dup: true,
                    send_after: Seq::NONE,
                    durability: Durability::Stored,
                });
            }
            state.pending = state.inflight.len();
            state.inbound_qos2 = inbound_qos2;
            let expires_at = match expiry {
                SessionExpiry::After(duration) => Some(now + duration.saturating_sub(offline_for)),
                SessionExpiry::Never | SessionExpiry::AtDisconnect => None,
            };
            state.expires_at = expires_at;
            let will_at = will.map(|will| {
                let at = now + will.delay.saturating_sub(offline_for);
                let mut message = Arc::unwrap_or_clone(will.message);
                message.expires_at = will
                    .expiry_interval
                    .map(|seconds| at + std::time::Duration::from_secs(u64::from(seconds)));
                state.pending_will = Some(Box::new(PendingWill {
                    message: Arc::new(message),
                    publish_at: at,
                    principal: None,
                }));
                at
            });
            (expires_at, will_at)
        };
        {
            let mut index = write(&self.subscriptions);
            for (filter, record) in subscriptions {
                self.index_insert(
                    &mut index,
                    &filter,
                    Subscriber {
                        session: session.clone(),
                        record,
                        partial: false,
                        retained_from: 0,
                    },
                );
            }
        }
        lock(&self.sessions).insert(Registered(session.clone()));
        if let Some(at) = expires_at {
            self.add_timer(at, TimerKind::SessionExpiry, &session);
        }
        if let Some(at) = will_at {
            self.add_timer(at, TimerKind::WillDelay, &session);
        }
    }

    /// Every session, online and offline, in no order (the registry is locked only to copy
    /// the pointers out).
    pub(crate) fn all_sessions(&self) -> Vec<Arc<Session>> {
        lock(&self.sessions)
            .iter()
            .map(|registered| registered.0.clone())
            .collect()
    }

    /// The sessions `keep` selects, in no order: the registry is locked for the walk, and
    /// only the selected pointers are copied out.
    pub(crate) fn sessions_where(&self, keep: impl Fn(&Session) -> bool) -> Vec<Arc<Session>> {
        lock(&self.sessions)
            .iter()
            .filter(|registered| keep(&registered.0))
            .map(|registered| registered.0.clone())
            .collect()
    }

    /// Adds a session to the registry as it is (tests of the queries).
    #[cfg(test)]
    pub(crate) fn register_for_test(&self, session: Arc<Session>) {
        lock(&self.sessions).insert(Registered(session));
    }

    /// Number of sessions, online and offline.
    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// The session of `client_id`, if there is one.
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        lock(&self.sessions)
            .get(client_id)
            .map(|entry| entry.0.clone())
    }

    pub fn subscription_count(&self) -> usize {
        read(&self.subscriptions).len()
    }

    pub fn retained_count(&self) -> usize {
        read(&self.retained).len()
    }

    /// Publishes a message: updates the retained message of its topic when RETAIN is set, then
    /// routes it to every matching session. Returns the number of sessions it reached.
    pub fn publish(&self, message: Message, now: Instant) -> usize {
        self.publish_tracked(message, now, None, true).0
    }

    /// [`Broker::publish`], also returning the store sequence number its acknowledgement must
    /// wait for ([`Seq::NONE`]: none). With `hold`, QoS 1 deliveries to connected persistent sessions may
    /// stay unstored, holding back the acknowledgement (see `unstored`). Without `retain`, a
    /// message with RETAIN set is forwarded as such but does not replace the topic's retained
    /// message.
    pub(crate) fn publish_tracked(
        &self,
        message: Message,
        now: Instant,
        hold: Option<&mut AckHold<'_>>,
        retain: bool,
    ) -> (usize, Seq) {
        self.publish_with(message, now, hold, retain, Origin::Local)
    }

    /// [`Broker::publish_tracked`] for a message from `origin`: a local one is planned with
    /// the cluster, if there is one (see `cluster_hook`), routed here, then forwarded.
    pub(crate) fn publish_with(
        &self,
        mut message: Message,
        now: Instant,
        hold: Option<&mut AckHold<'_>>,
        retain: bool,
        origin: Origin<'_>,
    ) -> (usize, Seq) {
        if message.qos != QoS::AtMostOnce && message.id == 0 {
            message.id = self.new_message_id();
        }
        // Cluster: the one check a single node pays.
        let hook = match origin {
            Origin::Local => self.cluster(),
            Origin::System | Origin::Cluster(_) => None,
        };
        let (mut seq, mut retained_at) = (Seq::NONE, u64::MAX);
        if message.retain && retain {
            (seq, retained_at) = self.retain(&message, hook);
        }
        let scope = self.publish_scope(&message);
        let Some(hook) = hook else {
            let selection = match origin {
                Origin::Cluster(selection) => selection,
                Origin::Local | Origin::System => Selection {
                    retained_at,
                    ..Selection::ALL
                },
            };
            let (reached, route_seq) =
                self.route(MessageRef::Own(message), scope, now, hold, selection);
            return (reached, seq.max(route_seq));
        };
        // Cluster: the publish gate stays read-locked from the plan until the copies are
        // queued for the other nodes, so that once `publish_barrier` returns, every publish
        // planned before has placed all its copies (closing the move window of a session).
        let gate = read(&self.publish_gate);
        let Some(mut plan) = hook.plan(&message) else {
            let selection = Selection {
                retained_at,
                ..Selection::ALL
            };
            let (reached, route_seq) =
                self.route(MessageRef::Own(message), scope, now, hold, selection);
            return (reached, seq.max(route_seq));
        };
        // Routed here but for the groups another node serves, then handed to the cluster
        // (shared, so the remote copies cost no copy of the message).
        message.cluster_id = plan.id.take().map(Box::new);
        let message = Arc::new(message);
        let selection = Selection {
            regular: true,
            groups: Groups::Except(&plan.skip_groups),
            session: None,
            retained_at,
        };
        let (reached, route_seq) = self.route(
            MessageRef::Shared(message.clone()),
            scope,
            now,
            hold,
            selection,
        );
        let remote = plan.remote.len();
        let forward_seq = hook.forward(&message, plan);
        drop(gate);
        (reached + remote, seq.max(route_seq).max(forward_seq))
    }

    /// Cluster: returns once every local publish that was planned before the call has
    /// placed its copies, here and in the outboxes to other nodes (see `publish_with`): a
    /// publish planned after it sees whatever route table was current when it was called.
    pub fn publish_barrier(&self) {
        drop(write(&self.publish_gate));
    }

    /// Stores or clears the retained message of the message's topic [MQTT-3.3.1-5, -6, -7].
    /// The change is submitted under the retained lock, so the store sees them in order.
    /// A cluster is told (under the same lock, so it sees the changes in order). Returns the
    /// store sequence number of the change and the tick of the retained clock at which the
    /// message was stored (`u64::MAX` for a clear, which no stream sends).
    fn retain(&self, message: &Message, cluster: Option<&Arc<dyn ClusterHook>>) -> (Seq, u64) {
        let mut retained = write(&self.retained);
        if message.payload.is_empty() {
            retained.remove(&message.topic);
            if let Some(cluster) = cluster {
                cluster.retained_changed(&message.topic, None);
            }
            let seq = self.persist(|| Change::RetainedCleared {
                topic: message.topic.clone(),
            });
            (seq, u64::MAX)
        } else {
            let kept = Arc::new(message.compacted());
            // Ticked under the lock (see `retained_clock`).
            let at = self.retained_clock.fetch_add(1, Ordering::SeqCst);
            retained.insert_at(kept.clone(), at);
            if let Some(cluster) = cluster {
                cluster.retained_changed(&message.topic, Some(&kept));
            }
            (self.persist(|| Change::Retained(kept)), at)
        }
    }

    /// Whether publishing a message of `qos` (with `retain`, a non-empty payload when
    /// `sets_retained`) from `publisher` to `topic` would need new durable work: a retained
    /// message to store, or a QoS 1/2 delivery to a stored session (queued, or in flight
    /// where it may have to be stored if its acknowledgement is late). Conservative for a
    /// shared group: any stored member counts, whichever would be picked. Only asked while
    /// the store refuses new work, so the extra match costs nothing in normal operation.
    pub(crate) fn needs_new_storage(
        &self,
        topic: &str,
        qos: QoS,
        sets_retained: bool,
        publisher: Option<&MqttStr>,
    ) -> bool {
        if self.persistence.is_none() || qos == QoS::AtMostOnce {
            return false;
        }
        if sets_retained {
            return true;
        }
        let stored = |subscriber: &Subscriber| {
            subscriber.record.options.qos != QoS::AtMostOnce && subscriber.session.lock().stores()
        };
        let index = read(&self.subscriptions);
        let mut needed = false;
        index.for_each_match(topic, |matched| {
            if needed {
                return;
            }
            needed = match matched {
                Matched::Subscriber(subscriber) => {
                    let own = subscriber.record.options.no_local
                        && publisher == Some(subscriber.session.client_id());
                    !own && stored(subscriber)
                }
                Matched::Group(group) => group.members.iter().any(stored),
            };
        });
        needed
    }

    /// Matches the message once and gives each matching session one delivery. A session with
    /// several matching subscriptions gets one copy at the highest granted QoS, with the
    /// identifiers of all of them [MQTT-3.3.4-2, MQTT-3.3.4-3]; a shared group gives one copy to
    /// one member.
    ///
    /// `scope` says which sessions: all, or (see `worker_post`) those of one worker, the
    /// others getting the message through their workers' inboxes. `selection` says which
    /// subscriptions: all on a single node; in a cluster, not the shared groups another node
    /// serves, or (a message from another node) only what that node sent it for.
    pub(crate) fn route(
        &self,
        message: MessageRef,
        scope: Scope,
        now: Instant,
        mut hold: Option<&mut AckHold<'_>>,
        selection: Selection<'_>,
    ) -> (usize, Seq) {
        // A late copy (for one session) or a copy routed here.
        let came = if selection.session.is_some() {
            Came::Late
        } else {
            Came::Routed
        };
        let index = read(&self.subscriptions);
        // Each target with the shared subscription it came through, if any. The vector is the
        // thread's, reused from publish to publish: routing allocates nothing once warm.
        let mut targets: Vec<Target<'_>> = reuse(TARGETS.take());
        // Workers (a bit each) whose sessions get the message through their inboxes.
        let mut posted: u128 = 0;
        let mut reached = 0;
        index.for_each_match(&message.topic, |matched| match matched {
            Matched::Subscriber(subscriber) => {
                let own = subscriber.record.options.no_local
                    && message.publisher.as_ref() == Some(subscriber.session.client_id());
                // A subscription made after this publish stored its retained message gets it
                // from its retained stream (see `retained_clock`): reached all the same (a
                // publisher is not told there was no subscriber).
                if subscriber.retained_from > selection.retained_at {
                    reached += 1;
                    return;
                }
                // No Local: not to the publisher's own connection [MQTT-3.8.3-3]. Cluster:
                // not at all when another node sent the message for shared groups only.
                if own
                    || !selection.regular
                    || selection.session.is_some_and(|client_id| {
                        subscriber.session.client_id().as_str() != client_id
                    })
                {
                    return;
                }
                let session = &subscriber.session;
                match scope {
                    Scope::Posted(worker, connections_before) => {
                        if !session.is_online()
                            || session.worker() != Some(worker)
                            || !session.attached_before(connections_before)
                        {
                            return;
                        }
                    }
                    Scope::Publish { me, post: true } => {
                        if let Some(worker) = session.worker()
                            && Some(worker) != me
                            && worker < MAX_POSTED_WORKERS
                            && session.is_online()
                        {
                            // That worker checks access and merges subscriptions itself.
                            posted |= 1 << worker;
                            reached += 1;
                            return;
                        }
                    }
                    Scope::Publish { post: false, .. } => {}
                }
                if subscriber.may_read(self, &message.topic) {
                    targets.push((subscriber, None));
                }
            }
            Matched::Group(group) => {
                // The member was picked by the publisher's thread, among all workers'.
                if let Scope::Posted(..) = scope {
                    return;
                }
                // Cluster: a group another node serves for this message.
                if !selection.takes(group) {
                    return;
                }
                if let Some(member) = group.pick(|member| {
                    member.session.is_online() && member.may_read(self, &message.topic)
                }) {
                    targets.push((member, Some(&group.filter)));
                }
            }
        });
        if posted != 0 {
            let refused = self.post_to_workers(&message, posted, selection.retained_at);
            for _ in 0..refused {
                self.metrics
                    .bump(crate::metrics::Counter::MessagesDroppedQueueFull);
            }
        }
        if targets.len() > 1 {
            targets.sort_unstable_by_key(|(subscriber, shared)| {
                (Arc::as_ptr(&subscriber.session) as usize, *shared)
            });
        }
        let mut seq = Seq::NONE;
        let mut body = RoutedBody::new(self.persistence());
        // The message goes as it is to one online subscriber. Deliveries to several share one
        // copy: each takes one count on it, not one on each of its buffers (the read buffer's
        // counter, which every message read with it shares, and which the subscribers' threads
        // would give back while the publisher's thread takes). A message for an offline session,
        // where it may wait long, is compacted, so it does not pin the read buffer.
        let online = targets.iter().all(|(target, _)| target.session.is_online());
        let mut own = None;
        let mut copy = None;
        match (message, targets.as_slice()) {
            (_, []) => {}
            (MessageRef::Shared(shared), _) if online => copy = Some(shared),
            (MessageRef::Own(message), [_]) if online => own = Some(message),
            (MessageRef::Own(message), _) if online => copy = Some(Arc::new(message)),
            (message, _) => copy = Some(Arc::new(message.compacted())),
        }
        let mut start = 0;
        while start < targets.len() {
            let (first, shared) = targets[start];
            // Non-shared subscriptions of one session (adjacent after the sort) merge into one
            // delivery; a shared subscription always stands alone.
            let mut end = start + 1;
            if shared.is_none() {
                while end < targets.len()
                    && targets[end].1.is_none()
                    && Arc::ptr_eq(&targets[end].0.session, &first.session)
                {
                    end += 1;
                }
            }
            let message = match (own.take(), &copy) {
                (Some(message), _) => MessageRef::Own(message),
                (None, Some(copy)) => MessageRef::Shared(copy.clone()),
                (None, None) => break,
            };
            let delivery = Self::delivery_for(message, &targets[start..end]);
            start = end;
            reached += 1;
            let pushed = first.session.enqueue(
                delivery,
                self.queueing(came),
                self.persistence(),
                &mut body,
                hold.as_deref_mut().map(|hold| (hold, now)),
            );
            if pushed.sweep {
                self.sweeper.list(&first.session, now);
            }
            seq = seq.max(pushed.seq);
            match pushed.outcome {
                Enqueued::Queued => self.metrics.bump(crate::metrics::Counter::MessagesQueued),
                Enqueued::QueuedDroppingOldest => {
                    self.metrics.bump(crate::metrics::Counter::MessagesQueued);
                    self.metrics
                        .bump(crate::metrics::Counter::MessagesDroppedQueueFull);
                }
                // The session had it (a moved session's message that came both ways).
                Enqueued::Duplicate => {
                    reached -= 1;
                    self.metrics
                        .bump(crate::metrics::Counter::SecondCopiesDropped);
                }
                Enqueued::Discarded => self
                    .metrics
                    .bump(crate::metrics::Counter::MessagesDroppedOfflineQos0),
            }
        }
        // The body's router reference goes once every delivery is placed.
        drop(body);
        TARGETS.set(reuse(targets));
        (reached, seq)
    }

    /// How a delivery is queued now (see [`Session::enqueue`]); `came`: how it came (see
    /// `SeenIds::admit`).
    pub(crate) fn queueing(&self, came: Came) -> Queueing {
        Queueing {
            max_queued: self.live_limits.max_queued_messages(),
            qos0_offline: self.config.queue_qos0_offline,
            came,
        }
    }

    /// The delivery of `message` for the subscriptions `group` of one session.
    fn delivery_for(message: MessageRef, group: &[(&Subscriber, Option<&MqttStr>)]) -> Delivery {
        let mut granted = QoS::AtMostOnce;
        let mut retain_as_published = false;
        let mut ids = SubscriptionIds::None;
        for (subscriber, _) in group {
            granted = granted.max(subscriber.record.options.qos);
            retain_as_published |= subscriber.record.options.retain_as_published;
            if let Some(id) = subscriber.record.identifier {
                ids.push(id);
            }
        }
        Delivery {
            qos: message.qos.min(granted),
            // RETAIN is cleared on forwarded messages unless Retain As Published [MQTT-3.3.1-12].
            retain: message.retain && retain_as_published,
            message,
            subscription_ids: ids,
            shared_filter: group.first().and_then(|(_, filter)| filter.cloned()),
        }
    }

    /// Whether a retained message of `payload_len` bytes for `topic` fits the limits on the
    /// number of retained topics (a topic that already has one always does) and on the bytes
    /// of all retained payloads (counting the replaced one out).
    pub(crate) fn retained_quota_allows(&self, topic: &str, payload_len: usize) -> bool {
        let (count_limit, bytes_limit) = self.live_limits.retained();
        if count_limit == 0 && bytes_limit == 0 {
            return true;
        }
        let retained = read(&self.retained);
        let (system_count, system_bytes) = *lock(&self.system_retained);
        let existing = retained.get(topic);
        let count = retained.len().saturating_sub(system_count);
        let count_ok = count_limit == 0 || count < count_limit || existing.is_some();
        let replaced = existing.map_or(0, |message| message.payload.len());
        let bytes = retained.payload_bytes().saturating_sub(system_bytes);
        let bytes_ok =
            bytes_limit == 0 || bytes.saturating_sub(replaced) + payload_len <= bytes_limit;
        count_ok && bytes_ok
    }

    /// Whether `session` may add a subscription to `filter` within its limit (replacing one
    /// always may).
    pub(crate) fn subscription_quota_allows(&self, session: &Session, filter: &str) -> bool {
        let limit = self.live_limits.max_subscriptions_per_session();
        if limit == 0 {
            return true;
        }
        let state = session.lock();
        state.subscriptions.len() < limit || state.subscriptions.contains_key(filter)
    }

    /// Gives the messages `session` holds for shared subscriptions, and that its client has not
    /// received yet (queued, or sent at QoS 1 and unacknowledged), to another member of the same
    /// group (MQTT 5 section 4.8.2). Messages whose group has no other member stay, and so do
    /// QoS 2 messages already sent.
    pub(crate) fn hand_over_shared(&self, session: &Arc<Session>) {
        let index = read(&self.subscriptions);
        let other_member = |filter: &MqttStr| -> Option<&Subscriber> {
            let group = index.find_group(filter)?;
            let others = || {
                group
                    .members
                    .iter()
                    .filter(|m| !Arc::ptr_eq(&m.session, session))
            };
            others()
                .find(|m| m.session.is_online())
                .or_else(|| others().next())
        };
        let mut moved = Vec::new();
        {
            let mut state = session.lock();
            let client_id = session.client_id();
            // A session that outlives its connection keeps the messages whose PUBLISH may have
            // reached its client, and sends them again when the client returns (MQTT 5 section
            // 4.8.2 lets the broker wait): given to another member, the message's packet
            // identifier would be free while the client still holds it unacknowledged, and the
            // next message under it would look like a resend [MQTT-2.2.1-4]. A session that ends
            // now gives them all away, QoS 1 at least once, but never a QoS 2 one already sent,
            // which would reach two clients [MQTT-4.8.2-4, MQTT-4.8.2-5]. (`dup` is set once the
            // PUBLISH has gone out.)
            let keeps_sent = state.is_persistent();
            let mut position = 0;
            while position < state.inflight.len() {
                let entry = &state.inflight[position];
                let movable = match entry.state {
                    InflightState::AwaitingPubAck => !(keeps_sent && entry.dup),
                    InflightState::AwaitingPubRec => !entry.dup,
                    InflightState::AwaitingPubComp => false,
                };
                let target = movable
                    .then(|| entry.delivery.shared_filter.as_ref().and_then(other_member))
                    .flatten();
                match target.and_then(|target| Some((target, state.remove_inflight(position)?))) {
                    Some((target, entry)) => {
                        // The body gets its router reference before the old delivery lets go
                        // of it, so it is never without one.
                        let body = self.hold_body(&entry.durability, &entry.delivery);
                        if entry.durability.is_stored() {
                            self.persist(|| Change::InflightDone {
                                client_id: client_id.clone(),
                                packet_id: entry.packet_id,
                            });
                        }
                        moved.push((target, entry.delivery, body));
                    }
                    None => position += 1,
                }
            }
            let queue = std::mem::take(&mut state.queue);
            for queued in queue {
                match queued
                    .delivery
                    .shared_filter
                    .as_ref()
                    .and_then(other_member)
                {
                    Some(target) => {
                        let body = self.hold_body(&queued.durability, &queued.delivery);
                        if queued.durability.is_stored() {
                            self.persist(|| Change::Unqueued {
                                client_id: client_id.clone(),
                                position: queued.position,
                            });
                        }
                        moved.push((target, queued.delivery, body));
                    }
                    None => state.queue.push_back(queued),
                }
            }
        }
        for (target, delivery, mut body) in moved {
            let handed = Delivery {
                qos: delivery.message.qos.min(target.record.options.qos),
                retain: false,
                subscription_ids: target
                    .record
                    .identifier
                    .map_or(SubscriptionIds::None, SubscriptionIds::One),
                message: delivery.message,
                shared_filter: delivery.shared_filter,
            };
            target.session.enqueue(
                handed,
                self.queueing(Came::Routed),
                self.persistence(),
                &mut body,
                None,
            );
        }
    }

    /// Takes a router reference on the body of `delivery` if it is stored (see
    /// [`Change::Message`]), given back when the guard drops.
    fn hold_body(&self, durability: &Durability, delivery: &Delivery) -> RoutedBody<'_> {
        let mut body = RoutedBody::new(self.persistence());
        if durability.is_stored() {
            body.hold(&delivery.message);
        }
        body
    }

    /// Adds or replaces a subscription of `session`, or `None` when the session has ended
    /// meanwhile.
    pub(crate) fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &MqttStr,
        record: SubscriptionRecord,
        partial: bool,
    ) -> Option<Subscribed> {
        let mut index = write(&self.subscriptions);
        let mut state = session.lock();
        if state.ended {
            return None;
        }
        let existed = state.subscriptions.insert(filter.clone(), record).is_some();
        // Retained messages for the new subscription [MQTT-3.3.1-6, MQTT-3.8.4-3], as Retain
        // Handling says; never for a shared subscription. Ticked under the index's lock (see
        // `retained_clock`).
        let streams = match record.options.retain_handling {
            RetainHandling::SendAtSubscribe => true,
            RetainHandling::SendAtSubscribeIfNew => !existed,
            RetainHandling::DoNotSend => false,
        } && tern_codec::topic::split_shared(filter).is_none();
        let retained_from = if streams {
            self.retained_clock.fetch_add(1, Ordering::SeqCst)
        } else if existed {
            // A replacement that sends no retained set leaves the replaced one's stream
            // running: its tick stays with the entry.
            let probe = Subscriber {
                session: session.clone(),
                record,
                partial,
                retained_from: 0,
            };
            index
                .get(filter, &probe)
                .map_or(0, |kept| kept.retained_from)
        } else {
            0
        };
        let seq = if state.is_persistent() {
            if let Some(hook) = self.cluster() {
                hook.session_subscribed(session.client_id(), filter, &record);
            }
            self.persist(|| Change::Subscribed {
                client_id: session.client_id().clone(),
                filter: filter.clone(),
                record,
            })
        } else {
            Seq::NONE
        };
        drop(state);
        self.index_insert(
            &mut index,
            filter,
            Subscriber {
                session: session.clone(),
                record,
                partial,
                retained_from,
            },
        );
        Some(Subscribed {
            seq,
            retained_from: streams.then_some(retained_from),
        })
    }

    /// Re-evaluates every session's subscriptions against the authorizer in use (after
    /// [`Broker::set_authorizer`], or when the rules behind it were reloaded): a subscription
    /// now denied is removed, as an UNSUBSCRIBE would (the store is told; the client is not,
    /// MQTT has no way to); one now partial is checked per message from now on, one granted
    /// again is not. Sessions are judged by the principal of their last connection; a session
    /// restored from the store whose client has not connected since is left as it is (it is
    /// re-checked when its client connects).
    pub fn recheck_access(&self) -> RecheckSummary {
        // Before any session is looked at: a SUBSCRIBE judged under the old rules that lands
        // after its session was looked at sees the change and judges its session again.
        self.access_epoch.fetch_add(1, Ordering::SeqCst);
        let sessions: Vec<Arc<Session>> = lock(&self.sessions)
            .iter()
            .map(|registered| registered.0.clone())
            .collect();
        let mut summary = RecheckSummary::default();
        for session in &sessions {
            let (removed, partial) = self.recheck_session(session);
            summary.sessions += 1;
            summary.removed += removed;
            summary.partial += partial;
        }
        summary
    }

    /// [`Broker::recheck_access`] for one session: subscriptions removed and partial.
    pub(crate) fn recheck_session(&self, session: &Arc<Session>) -> (usize, usize) {
        let (principal, subscriptions) = {
            let state = session.lock();
            if state.ended {
                return (0, 0);
            }
            let subscriptions: Vec<(MqttStr, SubscriptionRecord)> = state
                .subscriptions
                .iter()
                .map(|(filter, record)| (filter.clone(), *record))
                .collect();
            (state.principal.clone(), subscriptions)
        };
        let Some(principal) = principal else {
            return (0, 0);
        };
        // A clone, not the guard: the index is locked below, and checks on the publish path
        // take the authorizer's lock under the index's.
        let authorizer = self.authorizer().clone();
        let (mut removed, mut partial) = (0, 0);
        for (filter, record) in subscriptions {
            let plain =
                tern_codec::topic::split_shared(&filter).map_or(filter.as_str(), |(_, f)| f);
            let access = authorizer.classify(&principal, plain);
            if access == FilterAccess::Denied {
                if self.unsubscribe(session, &filter).0 {
                    removed += 1;
                }
                continue;
            }
            let is_partial = access == FilterAccess::Partial;
            let mut index = write(&self.subscriptions);
            let state = session.lock();
            if state.ended || state.subscriptions.get(&filter) != Some(&record) {
                // Changed meanwhile by the client itself: its own SUBSCRIBE was judged.
                continue;
            }
            drop(state);
            let subscriber = Subscriber {
                session: session.clone(),
                record,
                partial: is_partial,
                retained_from: 0,
            };
            // The tick stays: its retained stream may still be under way.
            let retained_from = index
                .get(&filter, &subscriber)
                .map_or(0, |kept| kept.retained_from);
            self.index_insert(
                &mut index,
                &filter,
                Subscriber {
                    retained_from,
                    ..subscriber
                },
            );
            partial += usize::from(is_partial);
        }
        (removed, partial)
    }

    /// Removes a subscription of `session`; returns whether it existed and the store sequence
    /// number of the change.
    pub(crate) fn unsubscribe(&self, session: &Arc<Session>, filter: &MqttStr) -> (bool, Seq) {
        let mut index = write(&self.subscriptions);
        let mut state = session.lock();
        let existed = state.subscriptions.remove(filter).is_some();
        // No more of its retained set either [MQTT-3.10.4-2].
        state.stop_retained(filter);
        let seq = if existed && state.is_persistent() {
            if let Some(hook) = self.cluster() {
                hook.session_unsubscribed(session.client_id(), filter);
            }
            self.persist(|| Change::Unsubscribed {
                client_id: session.client_id().clone(),
                filter: filter.clone(),
            })
        } else {
            Seq::NONE
        };
        drop(state);
        if existed {
            let probe = Subscriber {
                session: session.clone(),
                record: SubscriptionRecord {
                    options: Default::default(),
                    identifier: None,
                },
                partial: false,
                retained_from: 0,
            };
            self.index_remove(&mut index, filter, &probe);
        }
        (existed, seq)
    }

    /// Attaches connection `owner` to the session of `client_id` at CONNECT: resumes the
    /// existing session unless `clean_start`, ends it otherwise, and takes it over from a
    /// connection still attached [MQTT-3.1.4-2] (which its wakeup tells). The registry stays
    /// locked throughout, so the store sees the end of an old session before the new one.
    pub(crate) fn attach(
        &self,
        client_id: &MqttStr,
        clean_start: bool,
        expiry: SessionExpiry,
        owner: ConnectionId,
        wakeup: Arc<dyn Wakeup>,
        now: Instant,
    ) -> Attached {
        let mut sessions = lock(&self.sessions);
        let existing = sessions
            .get(client_id.as_str())
            .map(|entry| entry.0.clone());
        if !clean_start && let Some(session) = existing.clone() {
            let mut state = session.lock();
            if !state.ended {
                if let Some(previous) = state.wakeup.take() {
                    previous.wake();
                }
                state.owner = Some(owner);
                state.shell = false;
                session.publish_owner(state.owner, wakeup.worker());
                state.wakeup = Some(wakeup);
                state.expiry = expiry;
                // Back in time: the session does not expire, and a will whose delay has not run
                // out is not sent [MQTT-3.1.3-9]; their timers go with them.
                self.cancel_timers(&session, &mut state);
                state.mark_all_for_resend();
                let seq = self.store_session(&session, &mut state, true);
                drop(state);
                return Attached {
                    session,
                    present: true,
                    seq,
                };
            }
        }
        let old_stored = existing.as_ref().is_some_and(|old| old.lock().stores());
        let will = existing.and_then(|old| self.end_session_in(&mut sessions, &old, |_| {}));
        // The CONNACK says a stored old session is gone [MQTT-3.1.2-4]: it waits until that end
        // is durable, or a crash would bring the old session back to a client told otherwise.
        // (What was submitted up to now includes the end; a little more costs nothing but the
        // same commit.)
        let ended = if old_stored {
            self.submitted()
        } else {
            Seq::NONE
        };
        let session = Arc::new(Session::new(client_id.clone(), expiry));
        let seq = {
            let mut state = session.lock();
            state.owner = Some(owner);
            session.publish_owner(state.owner, wakeup.worker());
            state.wakeup = Some(wakeup);
            self.store_session(&session, &mut state, true).max(ended)
        };
        sessions.insert(Registered(session.clone()));
        drop(sessions);
        if let Some((will, _group)) = will {
            self.publish_pending_will(*will, now);
        }
        Attached {
            session,
            present: false,
            seq,
        }
    }

    /// Writes the session record after a change of connection or expiry: a session that
    /// became persistent is written whole, one that stopped being persistent is removed.
    /// Returns the sequence number of the last change ([`Seq::NONE`]: none).
    fn store_session(&self, session: &Session, state: &mut SessionState, online: bool) -> Seq {
        let Some(persistence) = self.persistence() else {
            return Seq::NONE;
        };
        let client_id = session.client_id();
        if !state.is_persistent() {
            if state.stored {
                state.stored = false;
                // Nothing of the session is kept now: its unstored deliveries stop holding
                // their publishers' acknowledgements back, and none of its deliveries is in
                // the store any more.
                state.store_unstored(client_id, None, None);
                state.forget_stored();
                return persistence.submit(Change::SessionEnded {
                    client_id: client_id.clone(),
                });
            }
            return Seq::NONE;
        }
        let mut seq = persistence.submit(Change::Session {
            client_id: client_id.clone(),
            expiry: state.expiry,
            online,
        });
        if !state.stored {
            state.stored = true;
            seq = self.store_contents(persistence, client_id, state).max(seq);
        }
        seq
    }

    /// Writes everything a session holds: for a session that has just become persistent.
    fn store_contents(
        &self,
        persistence: &dyn Persistence,
        client_id: &MqttStr,
        state: &mut SessionState,
    ) -> Seq {
        let mut seq = Seq::NONE;
        for (filter, record) in &state.subscriptions {
            seq = persistence.submit(Change::Subscribed {
                client_id: client_id.clone(),
                filter: filter.clone(),
                record: *record,
            });
        }
        for queued in state
            .queue
            .iter_mut()
            .filter(|queued| belongs_in_store(&queued.delivery) && !queued.durability.is_unstored())
        {
            queued.durability = Durability::Stored;
            let mut body = RoutedBody::new(Some(persistence));
            body.hold(&queued.delivery.message);
            seq = persistence.submit(Change::Queued {
                client_id: client_id.clone(),
                position: queued.position,
                delivery: queued.delivery.stored(),
            });
        }
        for entry in state
            .inflight
            .iter_mut()
            .filter(|entry| belongs_in_store(&entry.delivery) && !entry.durability.is_unstored())
        {
            entry.durability = Durability::Stored;
            let mut body = RoutedBody::new(Some(persistence));
            body.hold(&entry.delivery.message);
            seq = persistence.submit(Change::Inflight {
                client_id: client_id.clone(),
                packet_id: entry.packet_id,
                state: entry.state,
                delivery: entry.delivery.stored(),
            });
        }
        for &packet_id in &state.inbound_qos2 {
            seq = persistence.submit(Change::InboundQos2 {
                client_id: client_id.clone(),
                packet_id,
            });
        }
        seq
    }

    /// Called when connection `owner` leaves the session: ends it if its expiry is "at
    /// disconnect", otherwise keeps it offline until it expires. Does nothing if another
    /// connection has taken the session over.
    pub(crate) fn detach(&self, session: &Arc<Session>, owner: ConnectionId, now: Instant) {
        if session.is_owned_by(owner) {
            self.hand_over_shared(session);
        }
        let mut state = session.lock();
        if state.owner != Some(owner) || state.ended {
            return;
        }
        // Without a connection nothing acknowledges the unstored deliveries soon. A session
        // that ends with its connection keeps nothing, so nothing is stored for it.
        let persistence = self.persistence().filter(|_| state.is_persistent());
        state.store_unstored(session.client_id(), persistence, None);
        // Cluster: the connection of a client claimed on another node has let go of its
        // session; the cluster is told below, with no lock held, so it may export it.
        let claimed = state.kicked == Some(crate::session::Kick::ClaimedElsewhere);
        state.detach();
        session.set_kicked(&mut state, None);
        session.publish_owner(None, None);
        match state.expiry {
            SessionExpiry::AtDisconnect => {
                drop(state);
                self.end_session(session, now);
            }
            SessionExpiry::After(duration) => {
                let at = now + duration;
                // (The will's timer, set just before, stays.)
                if let Some(earlier) = state.expires_at.replace(at) {
                    self.remove_timer(earlier, TimerKind::SessionExpiry, session);
                }
                self.store_session(session, &mut state, false);
                drop(state);
                self.add_timer(at, TimerKind::SessionExpiry, session);
            }
            SessionExpiry::Never => {
                self.store_session(session, &mut state, false);
                drop(state);
            }
        }
        if claimed && let Some(cluster) = self.cluster() {
            cluster.claimed_session_released(session.client_id());
        }
    }

    /// Schedules the will of a session whose connection has gone, for when its delay runs out.
    pub(crate) fn defer_will(
        &self,
        session: &Arc<Session>,
        will: Arc<Message>,
        at: Instant,
        principal: Arc<Principal>,
    ) {
        let replaced = session
            .lock()
            .pending_will
            .replace(Box::new(crate::session::PendingWill {
                message: will,
                publish_at: at,
                principal: Some(principal),
            }));
        if let Some(replaced) = replaced {
            self.remove_timer(replaced.publish_at, TimerKind::WillDelay, session);
        }
        self.add_timer(at, TimerKind::WillDelay, session);
    }

    fn add_timer(&self, at: Instant, kind: TimerKind, session: &Arc<Session>) {
        lock(&self.timers).insert(timer_key(at, kind, session), session.clone());
    }

    pub(crate) fn remove_timer(&self, at: Instant, kind: TimerKind, session: &Arc<Session>) {
        lock(&self.timers).remove(&timer_key(at, kind, session));
    }

    /// Clears the session's expiry deadline and pending will, and removes their timers.
    fn cancel_timers(&self, session: &Arc<Session>, state: &mut SessionState) {
        if let Some(at) = state.expires_at.take() {
            self.remove_timer(at, TimerKind::SessionExpiry, session);
        }
        if let Some(will) = &state.pending_will {
            self.remove_timer(will.publish_at, TimerKind::WillDelay, session);
        }
    }

    /// Timers waiting to fire: session expiries and delayed wills of offline sessions.
    pub fn pending_timers(&self) -> usize {
        lock(&self.timers).len()
    }

    /// Ends a session: removes it from the registry and its subscriptions from the index,
    /// forgets its messages, and publishes a will still waiting for its delay [MQTT-3.1.3-9].
    pub(crate) fn end_session(&self, session: &Arc<Session>, now: Instant) {
        let will = {
            let mut sessions = lock(&self.sessions);
            self.end_session_in(&mut sessions, session, |_| {})
        };
        if let Some((will, _group)) = will {
            self.publish_pending_will(*will, now);
        }
    }

    /// [`Broker::end_session`] with the registry locked by the caller; returns the will to
    /// publish once the registry is unlocked. A stored session's end (which forgets its stored
    /// will) and the will's publication must become durable together: the atomic group opened
    /// for them comes with the will, to be dropped once it is published.
    // The registry hashes a session by its client identifier, which never changes.
    #[allow(clippy::mutable_key_type)]
    ///
    /// `take` sees the session's state under its lock just before it is emptied (a session
    /// handed over to another node of a cluster is taken out so, with nothing lost between).
    pub(crate) fn end_session_in(
        &self,
        sessions: &mut Registry,
        session: &Arc<Session>,
        take: impl FnOnce(&mut SessionState),
    ) -> Option<(Box<PendingWill>, Option<Group<'_>>)> {
        let mut index = write(&self.subscriptions);
        self.end_session_indexed(sessions, &mut index, session, take)
    }

    /// [`Broker::end_session_in`] with the subscription index locked by the caller too.
    #[allow(clippy::mutable_key_type)]
    pub(crate) fn end_session_indexed(
        &self,
        sessions: &mut Registry,
        index: &mut SubscriptionIndex<Subscriber>,
        session: &Arc<Session>,
        take: impl FnOnce(&mut SessionState),
    ) -> Option<(Box<PendingWill>, Option<Group<'_>>)> {
        if sessions
            .get(session.client_id().as_str())
            .is_some_and(|current| Arc::ptr_eq(&current.0, session))
        {
            sessions.remove(session.client_id().as_str());
        }
        let mut state = session.lock();
        if state.ended {
            return None;
        }
        state.ended = true;
        if let Some(hook) = self.cluster() {
            hook.session_ended(session.client_id());
        }
        if let Some(at) = state.expires_at.take() {
            self.remove_timer(at, TimerKind::SessionExpiry, session);
        }
        if let Some(will) = &state.pending_will {
            self.remove_timer(will.publish_at, TimerKind::WillDelay, session);
        }
        let group = if state.stored && state.pending_will.is_some() {
            self.atomic()
        } else {
            None
        };
        if state.stored {
            state.stored = false;
            self.persist(|| Change::SessionEnded {
                client_id: session.client_id().clone(),
            });
        }
        let filters: Vec<MqttStr> = state.subscriptions.keys().cloned().collect();
        take(&mut state);
        state.clear();
        let will = state.pending_will.take();
        if let Some(previous) = state.wakeup.take() {
            previous.wake();
        }
        state.owner = None;
        session.publish_owner(None, None);
        drop(state);
        let probe = Subscriber {
            session: session.clone(),
            record: SubscriptionRecord {
                options: Default::default(),
                identifier: None,
            },
            partial: false,
            retained_from: 0,
        };
        for filter in &filters {
            self.index_remove(index, filter, &probe);
        }
        will.map(|will| (will, group))
    }

    /// Cluster hand-over: ends the offline session of `client_id` here without its will (its
    /// client resumed it on another node [MQTT-3.1.3-9]), handing its state to `take` under
    /// its lock first. False (and `take` not called) when there is no such session or a
    /// connection is attached to it. The registry stays locked, so no CONNECT slips in.
    pub(crate) fn end_offline_session(
        &self,
        client_id: &str,
        take: impl FnOnce(&mut SessionState),
    ) -> bool {
        let mut sessions = lock(&self.sessions);
        let Some(session) = sessions.get(client_id).map(|entry| entry.0.clone()) else {
            return false;
        };
        {
            let state = session.lock();
            if state.ended || state.owner.is_some() {
                return false;
            }
        }
        // The will and its atomic group are dropped unpublished.
        drop(self.end_session_in(&mut sessions, &session, take));
        true
    }

    /// Cluster hand-over: installs `session` (offline, its state filled, not yet shared) in
    /// place of an offline session of the same client id (ended without its will), writes it
    /// to the store whole, indexes its subscriptions and starts its expiry. Returns the store
    /// sequence number of its last change, or `None` (nothing done) when a connection is
    /// attached to a session of that client id here.
    pub(crate) fn install_session(&self, session: Arc<Session>, now: Instant) -> Option<Seq> {
        let mut sessions = lock(&self.sessions);
        let old = sessions
            .get(session.client_id().as_str())
            .map(|entry| entry.0.clone());
        if old
            .as_ref()
            .is_some_and(|old| old.is_online() || old.lock().owner.is_some())
        {
            return None;
        }
        let mut index = write(&self.subscriptions);
        Some(self.replace_session(&mut sessions, &mut index, old.as_ref(), session, now))
    }

    /// [`Broker::install_session`] with the registry and the index locked by the caller, in
    /// place of `old` (offline, checked by the caller). The new session's subscriptions are
    /// indexed before the old one's go: a filter both have never has no subscriber, so no
    /// route of it is reported gone and back, and no message routed meanwhile finds neither.
    #[allow(clippy::mutable_key_type)]
    pub(crate) fn replace_session(
        &self,
        sessions: &mut Registry,
        index: &mut SubscriptionIndex<Subscriber>,
        old: Option<&Arc<Session>>,
        session: Arc<Session>,
        now: Instant,
    ) -> Seq {
        let subscriptions: Vec<(MqttStr, SubscriptionRecord)> = session
            .lock()
            .subscriptions
            .iter()
            .map(|(filter, record)| (filter.clone(), *record))
            .collect();
        for (filter, record) in subscriptions {
            self.index_insert(
                index,
                &filter,
                Subscriber {
                    session: session.clone(),
                    record,
                    partial: false,
                    retained_from: 0,
                },
            );
        }
        if let Some(old) = old {
            drop(self.end_session_indexed(sessions, index, old, |_| {}));
        }
        let mut state = session.lock();
        let expires_at = match state.expiry {
            SessionExpiry::After(duration) => Some(now + duration),
            SessionExpiry::Never | SessionExpiry::AtDisconnect => None,
        };
        state.expires_at = expires_at;
        let seq = self.store_session(&session, &mut state, false);
        drop(state);
        sessions.insert(Registered(session.clone()));
        if let Some(at) = expires_at {
            self.add_timer(at, TimerKind::SessionExpiry, &session);
        }
        seq
    }

    /// Publishes a will whose delay ran out (or whose session ended first), if the client
    /// that set it may still publish on its topic: the rules may have changed since (a reload).
    fn publish_pending_will(&self, will: PendingWill, now: Instant) {
        let PendingWill {
            message, principal, ..
        } = will;
        if let Some(principal) = principal
            && !self.authorizer().may_publish(&principal, &message.topic)
        {
            tracing::debug!(client_id = %principal.client_id, "will not published: not authorized");
            self.metrics.bump(crate::metrics::Counter::MessagesRefused);
            return;
        }
        self.publish_will(message, now);
    }

    /// Publishes a will (authorisation checked by the caller).
    pub(crate) fn publish_will(&self, will: Arc<Message>, now: Instant) {
        self.metrics.bump(crate::metrics::Counter::WillsPublished);
        let message = Arc::unwrap_or_clone(will);
        self.publish(message, now);
    }

    /// The earliest deadline of an offline session or delayed will, or of the next sweep of
    /// unstored deliveries.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = lock(&self.timers)
            .first_key_value()
            .map(|(&(at, ..), _)| at);
        match (timer, self.sweeper.due()) {
            (Some(timer), Some(sweep)) => Some(timer.min(sweep)),
            (timer, sweep) => timer.or(sweep),
        }
    }

    /// Called when [`Broker::poll_timeout`] may move earlier than the caller last asked: the
    /// first delivery left unstored needs a sweep within milliseconds.
    pub fn set_timer_wakeup(&self, wakeup: Arc<dyn Wakeup>) {
        self.sweeper.set_wakeup(wakeup);
    }

    /// Ends sessions whose expiry has run out, publishes wills whose delay has, and stores
    /// deliveries left unstored for too long.
    pub fn handle_timeout(&self, now: Instant) {
        // The storage alarm follows the store (the server calls this at least every second).
        let alarm = u64::from(!self.accepts_new_work());
        self.metrics.storage_alarm.store(alarm, Ordering::Relaxed);
        self.sweeper.sweep(self.persistence(), now);
        loop {
            let timer = {
                let mut timers = lock(&self.timers);
                match timers.first_key_value() {
                    Some((&(at, ..), _)) if at <= now => timers.pop_first(),
                    _ => None,
                }
            };
            let Some(((at, _, kind), session)) = timer else {
                return;
            };
            match kind {
                TimerKind::SessionExpiry => {
                    let due = {
                        let state = session.lock();
                        !state.ended && state.owner.is_none() && state.expires_at == Some(at)
                    };
                    if due {
                        self.metrics.bump(crate::metrics::Counter::SessionsExpired);
                        self.end_session(&session, now);
                    }
                }
                TimerKind::WillDelay => {
                    let will = {
                        let mut state = session.lock();
                        match &state.pending_will {
                            Some(will) if will.publish_at == at && state.owner.is_none() => {
                                state.pending_will.take()
                            }
                            _ => None,
                        }
                    };
                    if let Some(will) = will {
                        let session = &session;
                        // A stored will is published and forgotten in one commit: never lost,
                        // never twice.
                        let stored = session.lock().stored;
                        let _group = if stored { self.atomic() } else { None };
                        self.publish_pending_will(*will, now);
                        let state = session.lock();
                        if state.stored {
                            self.persist(|| Change::WillCleared {
                                client_id: session.client_id().clone(),
                            });
                        }
                    }
                }
            }
        }
    }
}

impl RetainedSource for Broker {
    fn retained_batch(
        &self,
        filter: &str,
        after: Option<&MqttStr>,
        limit: usize,
        out: &mut Vec<Arc<Message>>,
        before: u64,
    ) -> bool {
        let after = after.map(MqttStr::as_str);
        read(&self.retained).matching_stored_before(filter, after, limit, out, before)
    }

    fn may_read(&self, reader: &Principal, topic: &str) -> bool {
        self.authorizer().may_read(reader, topic)
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("config", &self.config)
            .field("sessions", &self.session_count())
            .finish_non_exhaustive()
    }
}
