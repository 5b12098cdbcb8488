//! The core's [`ClusterHook`]: routes won and lost become proposals, a local publish is
//! planned against the route table and forwarded, a retained change is replicated.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use tern_broker::persist::{Change, Persistence};
use tern_broker::{ClaimDecision, ClaimRequest, ClusterHook, ClusterPlan, RemoteCopy, RouteTicket};
use tern_broker::{ClusterMessageId, Message, Seq, SubscriptionRecord};
use tern_cluster::NodeId;
use tern_cluster::command::SubscriptionOptions;
use tern_cluster::link::DataPlane;
use tern_codec::QoS;
use tokio::sync::Notify;

use super::claim::{Claimer, Released};
use super::payload;
use super::routes::RouteTable;

/// A route of this node: a plain filter (`None`) or a shared group's.
pub type LocalRoute = (Option<String>, String);

/// Changes waiting to be proposed (coalesced: only the latest wish per key counts).
#[derive(Default)]
pub struct Pending {
    /// Routes to add (true) or remove (false).
    pub routes: BTreeMap<LocalRoute, bool>,
    /// Retained messages to set (Some) or clear (None), by topic.
    pub retained: BTreeMap<String, Option<Arc<Message>>>,
    /// Send the node's whole route set first (at start, after rejoining).
    pub resync: bool,
    /// Durable subscriptions of persistent sessions to add (Some: the options byte and
    /// identifier) or remove (None), by (client id, filter).
    pub subscriptions: BTreeMap<(String, String), Option<SubscriptionOptions>>,
    /// Client ids whose session ended here: released if no session of theirs is here when
    /// the proposal is made.
    pub ended: BTreeSet<String>,
}

/// What the hook shares with the tasks that propose and apply.
pub struct Glue {
    pub node_id: NodeId,
    /// The routes of every node, as the replicated state has them.
    pub table: RwLock<RouteTable>,
    /// Whether `table` is empty, read without its lock (a local publish's fast path).
    table_empty: Arc<std::sync::atomic::AtomicBool>,
    /// This node's routes as its core has them now.
    pub local: Mutex<BTreeSet<LocalRoute>>,
    pub pending: Mutex<Pending>,
    /// Wakes the proposing task.
    pub wake: Notify,
    pub plane: OnceLock<Arc<DataPlane>>,
    /// Messages not forwarded because they could not be encoded, or QoS 0 copies dropped for a
    /// congested outbox (the data plane counts the copies a full outbox refused).
    pub not_forwarded: std::sync::atomic::AtomicU64,
    /// Proposes the claims of CONNECTs (set before the hook is plugged in).
    pub claimer: OnceLock<Claimer>,
    /// Hand-overs waiting for a taken-over connection to let go of its session.
    pub released: Arc<Released>,
    /// Where forwarded QoS 1/2 messages are kept until acknowledged (none: in memory only).
    persistence: Option<Arc<dyn Persistence>>,
    /// SUBACKs waiting for this node's new routes.
    pub tickets: super::tickets::RouteTickets,
    /// Client ids whose release is being proposed (see `sync`).
    pub releasing: Mutex<BTreeSet<String>>,
    /// Copies of sessions other nodes own: returned or discarded (see `returns`).
    pub returns: OnceLock<Arc<super::returns::Returns>>,
    /// The number of the next message of this run with a copy for another node (its
    /// cluster id's last part).
    numbers: std::sync::atomic::AtomicU64,
    /// The log index up to which `table` follows the applied state (see `apply`): a node
    /// that waits for a route commit waits for this.
    pub table_index: tokio::sync::watch::Sender<u64>,
    /// Barriers proposed by [`Glue::barrier_index`] waiting to be applied here, by nonce.
    barriers: Mutex<std::collections::HashMap<u64, tokio::sync::oneshot::Sender<u64>>>,
    /// Sessions handed over from here after a flush (see `flush::flush`).
    pub flushes: Flushes,
    /// Forwarding addresses of sessions handed over after a partial flush.
    pub forwards: Arc<super::forwards::Forwards>,
    /// The last message of each other node that reached this node.
    pub reached: Arc<super::reached::Reached>,
    /// The lease was confirmed again after a gap, and this node has not applied a barrier
    /// of its own proposed since: its registry may still name it the owner of a client id
    /// claimed elsewhere meanwhile, so no claim is granted on the fast path (see `lease`).
    pub catching_up: std::sync::atomic::AtomicBool,
    /// How many times the lease was confirmed again after a gap: the catch-up that clears
    /// `catching_up` is the latest gap's (changed with it, under this lock).
    pub lease_gaps: Mutex<u64>,
}

/// The top bit of the nonces of [`Glue::barrier_index`]'s barriers.
const BARRIER_TAG: u64 = 1 << 63;

/// Counts [`Glue::barrier_index`]'s barriers (their nonces differ within a nanosecond).
static BARRIERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How the flushes before hand-overs from this node went.
#[derive(Debug, Default)]
pub struct Flushes {
    /// Every node answered and its outbox was delivered in time.
    pub whole: std::sync::atomic::AtomicU64,
    /// Some node did not (or this node's table was late): handed over anyway.
    pub partial: std::sync::atomic::AtomicU64,
}

impl Glue {
    pub fn new(node_id: NodeId, persistence: Option<Arc<dyn Persistence>>) -> Glue {
        let table = RouteTable::new(node_id);
        Glue {
            node_id,
            table_empty: table.emptiness(),
            table: RwLock::new(table),
            local: Mutex::new(BTreeSet::new()),
            pending: Mutex::new(Pending {
                resync: true,
                ..Pending::default()
            }),
            wake: Notify::new(),
            plane: OnceLock::new(),
            not_forwarded: std::sync::atomic::AtomicU64::new(0),
            claimer: OnceLock::new(),
            released: Arc::new(Released::default()),
            persistence,
            tickets: super::tickets::RouteTickets::default(),
            releasing: Mutex::new(BTreeSet::new()),
            returns: OnceLock::new(),
            numbers: std::sync::atomic::AtomicU64::new(0),
            table_index: tokio::sync::watch::Sender::new(0),
            barriers: Mutex::new(std::collections::HashMap::new()),
            flushes: Flushes::default(),
            forwards: Arc::default(),
            reached: Arc::default(),
            catching_up: std::sync::atomic::AtomicBool::new(false),
            lease_gaps: Mutex::new(0),
        }
    }

    /// Proposes a barrier of this node and waits (until `deadline`) until it is applied
    /// here: the log index it was applied at, above every entry committed before it was
    /// proposed.
    pub async fn barrier_index(
        &self,
        node: &tern_cluster::ClusterNode,
        deadline: tokio::time::Instant,
    ) -> Option<u64> {
        // Unique: the wall clock's nanoseconds and a count (not one of an earlier start
        // replayed from the log), with the top bit set (the returns' barriers, the clock's
        // nanoseconds alone, have it clear until 2262).
        let nonce = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.as_nanos() as u64)
            .wrapping_add(BARRIERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
            | BARRIER_TAG;
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.barriers).insert(nonce, tx);
        let command = tern_cluster::Command::Barrier {
            node: self.node_id,
            nonce,
        };
        let index = match tokio::time::timeout_at(deadline, node.propose(command)).await {
            Ok(Ok(_)) => tokio::time::timeout_at(deadline, rx)
                .await
                .ok()
                .and_then(Result::ok),
            _ => None,
        };
        lock(&self.barriers).remove(&nonce);
        index
    }

    /// A barrier of this node was applied at log index `index`: whether it is one of
    /// [`Glue::barrier_index`]'s (its waiter, if it still waits, told; one that gave up, or
    /// of an earlier start, ignored).
    pub fn barrier_applied(&self, nonce: u64, index: u64) -> bool {
        if let Some(waiter) = lock(&self.barriers).remove(&nonce) {
            let _ = waiter.send(index);
        }
        nonce & BARRIER_TAG != 0
    }

    /// Proposes this node's route of `(group, filter)` again, as if it were new: its add
    /// commits after any change of it proposed before (the proposals of this node go one
    /// round at a time). Its ticket, to wait for; `None` when the core no longer holds the
    /// route (checked under the same lock as its removal, so no route outlives its last
    /// subscriber).
    pub fn want_route(&self, route: &LocalRoute) -> Option<Arc<RouteTicket>> {
        let local = lock(&self.local);
        if !local.contains(route) {
            return None;
        }
        self.tickets.open(route);
        lock(&self.pending).routes.insert(route.clone(), true);
        drop(local);
        self.wake.notify_one();
        self.tickets.get(route)
    }

    /// Waits (up to `deadline`) until `table` follows the applied state up to log index
    /// `index`; whether it does.
    pub async fn table_at(&self, index: u64, deadline: tokio::time::Instant) -> bool {
        let mut at = self.table_index.subscribe();
        tokio::time::timeout_at(deadline, at.wait_for(|applied| *applied >= index))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// Waits until the store has made `seq` durable (at once without a store).
    pub async fn durable(&self, seq: Seq) {
        if let Some(persistence) = &self.persistence
            && seq != Seq::NONE
        {
            let (tx, rx) = tokio::sync::oneshot::channel();
            persistence.wake_when_durable(seq, Arc::new(super::sink::Durable::new(tx)));
            let _ = rx.await;
        }
    }

    /// Whether the release of `client_id`'s registry entry is queued or being proposed.
    pub fn is_releasing(&self, client_id: &str) -> bool {
        lock(&self.pending).ended.contains(client_id) || lock(&self.releasing).contains(client_id)
    }

    fn route_changed(&self, filter: &str, group: Option<&str>, present: bool) {
        let key = (group.map(str::to_owned), filter.to_owned());
        {
            let mut local = lock(&self.local);
            if present {
                local.insert(key.clone());
                self.tickets.open(&key);
            } else {
                local.remove(&key);
                self.tickets.drop_route(&key);
            }
        }
        lock(&self.pending).routes.insert(key, present);
        self.wake.notify_one();
    }

    /// Queues a copy of `message` for `node`. A QoS 1/2 copy is kept in the store until the
    /// peer acknowledges it, in the same group commit as the caller's other changes: the
    /// returned sequence number is what the caller's acknowledgement waits for.
    pub fn send_copy(
        &self,
        plane: &Arc<DataPlane>,
        message: &Message,
        node: NodeId,
        to: &payload::Addressed,
        now: Instant,
    ) -> Seq {
        let store = self
            .persistence
            .as_ref()
            .filter(|_| message.qos != QoS::AtMostOnce);
        // At most once: a QoS 0 copy gives way to QoS 1/2 ones while the outbox is congested
        // (see `OutboxLimits`).
        if message.qos == QoS::AtMostOnce && plane.is_congested(node) {
            self.not_forwarded
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Seq::NONE;
        }
        let mut wait = Seq::NONE;
        let sent = payload::encode(message, to, now).map(|bytes| {
            let kept = bytes.clone();
            plane.send_with(node, bytes, |run, seq| {
                if let Some(store) = store {
                    wait = store.submit(Change::ForwardQueued {
                        peer: node,
                        run,
                        seq,
                        payload: kept,
                    });
                }
            })
        });
        if !matches!(sent, Ok(true)) {
            // A full outbox counted its drop already.
            if sent.is_err() {
                self.not_forwarded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tracing::debug!(node, topic = %message.topic, "message not forwarded");
        }
        wait
    }
}

impl ClusterHook for Glue {
    fn route_added(&self, filter: &str, group: Option<&str>) {
        self.route_changed(filter, group, true);
    }

    fn route_removed(&self, filter: &str, group: Option<&str>) {
        self.route_changed(filter, group, false);
    }

    fn plan(&self, message: &Message) -> Option<ClusterPlan> {
        // Nothing on other nodes and no shared group: traffic that stays here pays one load.
        if self.table_empty.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let table = self
            .table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if table.is_empty() {
            return None;
        }
        // A shared group's turn skips nodes whose outbox is full while others can serve it.
        let plane = self.plane.get();
        let found = table.matching(&message.topic, self.node_id, |node| {
            plane.is_none_or(|plane| !plane.is_congested(node))
        });
        if found.is_empty() {
            return None;
        }
        // Only for a message that leaves this node. Read under the table's lock, and raised
        // only once the table holds an entry's commands: never above what the table shows
        // (a publish planned while an entry is applied carries the one before, which errs
        // towards a late copy, see `forwards`).
        let routes_at = *self.table_index.borrow();
        drop(table);
        let mut copies: BTreeMap<NodeId, RemoteCopy> = BTreeMap::new();
        for node in found.nodes {
            copies
                .entry(node)
                .or_insert_with(|| RemoteCopy {
                    node,
                    ..RemoteCopy::default()
                })
                .regular = true;
        }
        let mut skip_groups = Vec::new();
        for (group, node) in found.groups {
            skip_groups.push(group.clone());
            copies
                .entry(node)
                .or_insert_with(|| RemoteCopy {
                    node,
                    ..RemoteCopy::default()
                })
                .groups
                .push(group);
        }
        if copies.is_empty() && skip_groups.is_empty() {
            return None;
        }
        let id = (!copies.is_empty()).then(|| ClusterMessageId {
            node: self.node_id,
            run: plane.map_or(0, |plane| plane.run()),
            number: self
                .numbers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            planned_at: routes_at,
        });
        Some(ClusterPlan {
            skip_groups,
            remote: copies.into_values().collect(),
            id,
            routes_at,
        })
    }

    fn forward(&self, message: &Arc<Message>, plan: ClusterPlan) -> Seq {
        let Some(plane) = self.plane.get() else {
            return Seq::NONE;
        };
        let now = Instant::now();
        let mut wait = Seq::NONE;
        for copy in plan.remote {
            let to = payload::Addressed {
                regular: copy.regular,
                groups: &copy.groups,
                routes_at: plan.routes_at,
                late_for: None,
            };
            wait = wait.max(self.send_copy(plane, message, copy.node, &to, now));
        }
        wait
    }

    fn refuses(&self, topic: &str) -> bool {
        let Some(plane) = self.plane.get() else {
            return false;
        };
        if !plane.any_congested() {
            return false;
        }
        self.table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .reaches(topic, self.node_id, |node| plane.is_congested(node))
    }

    fn session_subscribed(&self, client_id: &str, filter: &str, record: &SubscriptionRecord) {
        let options = SubscriptionOptions {
            options: options_byte(&record.options),
            identifier: record.identifier,
        };
        let mut pending = lock(&self.pending);
        pending.ended.remove(client_id);
        pending
            .subscriptions
            .insert((client_id.to_owned(), filter.to_owned()), Some(options));
        drop(pending);
        self.wake.notify_one();
    }

    fn session_unsubscribed(&self, client_id: &str, filter: &str) {
        lock(&self.pending)
            .subscriptions
            .insert((client_id.to_owned(), filter.to_owned()), None);
        self.wake.notify_one();
    }

    fn session_ended(&self, client_id: &str) {
        let mut pending = lock(&self.pending);
        pending
            .subscriptions
            .retain(|(client, _), _| client != client_id);
        pending.ended.insert(client_id.to_owned());
        drop(pending);
        self.wake.notify_one();
    }

    fn route_pending(&self, filter: &str, group: Option<&str>) -> Option<Arc<RouteTicket>> {
        self.tickets
            .get(&(group.map(str::to_owned), filter.to_owned()))
    }

    fn retained_changed(&self, topic: &str, message: Option<&Arc<Message>>) {
        lock(&self.pending)
            .retained
            .insert(topic.to_owned(), message.cloned());
        self.wake.notify_one();
    }

    fn claimed_session_released(&self, client_id: &str) {
        self.released.released(client_id);
    }

    fn claim(&self, request: ClaimRequest) -> ClaimDecision {
        match self.claimer.get() {
            Some(claimer) => claimer.claim(request),
            // Not started yet: the cluster cannot decide.
            None => ClaimDecision::Refused(tern_codec::ReasonCode::ServerUnavailable),
        }
    }
}

/// A subscription's options as the MQTT 5 SUBSCRIBE options byte (what the registry keeps).
pub fn options_byte(options: &tern_codec::SubscriptionOptions) -> u8 {
    options.qos.as_u8()
        | (u8::from(options.no_local) << 2)
        | (u8::from(options.retain_as_published) << 3)
        | ((options.retain_handling as u8) << 4)
}

/// The options an [`options_byte`] stands for (`None` for a byte no SUBSCRIBE carries).
pub fn options_from_byte(byte: u8) -> Option<tern_codec::SubscriptionOptions> {
    use tern_codec::RetainHandling;
    Some(tern_codec::SubscriptionOptions {
        qos: QoS::from_u8(byte & 0b11)?,
        no_local: byte & 0b100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling: match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return None,
        },
    })
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
