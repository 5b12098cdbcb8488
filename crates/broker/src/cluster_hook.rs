//! The core's seams for a cluster: what the core tells a cluster ([`ClusterHook`]: routes won
//! and lost, a plan for each local publish, retained changes) and what a cluster asks of the
//! core (the entry points on [`Broker`] below: a message forwarded by another node, a
//! replicated retained message, a claim of a client id made on another node). The core knows
//! nothing of raft, links or a runtime; without a hook (a single node) a publish pays one
//! `OnceLock` load and one branch.

use std::sync::Arc;
use std::time::Instant;

use tern_codec::QoS;
use tern_codec::topic::split_shared;

use crate::broker::{Broker, Subscriber, read, write};
use crate::cluster_claim::{ClaimDecision, ClaimRequest};
use crate::message::{ClusterMessageId, Message, MessageRef};
use crate::persist::Change;
use crate::session::Kick;
use crate::subscriptions::{SharedGroup, SubscriptionIndex};
use crate::types::{Seq, SubscriptionRecord};
use crate::worker_post::Scope;

/// What the core tells the cluster, and asks of it. Set once: [`Broker::set_cluster`].
///
/// Called on the publishing or subscribing connection's thread, sometimes under the core's
/// locks (the route calls under the subscription index's write lock, so they come in the
/// order the index changed; `retained_changed` under the retained index's): implementations
/// must be quick, must not call back into the broker, and must never block (push into a
/// queue).
pub trait ClusterHook: Send + Sync {
    /// The local subscription index gained its first subscription to `filter`: a plain one
    /// (`group` None) or a shared one `$share/{group}/{filter}` (`Some(group)`), from any path
    /// (SUBSCRIBE, a session restored from the store or imported from another node).
    fn route_added(&self, filter: &str, group: Option<&str>);
    /// The local subscription index lost its last subscription to `filter` (of `group`):
    /// UNSUBSCRIBE, a session's end or expiry, a clean start, an access re-check, a session
    /// exported to another node.
    fn route_removed(&self, filter: &str, group: Option<&str>);
    /// Before a message published on this node (by a client, a will, the admin API, a
    /// bridge; not one forwarded by another node, not the broker's own `$SYS` messages) is
    /// routed locally: which shared groups this node must skip (another node was picked for
    /// them) and what goes to other nodes. `None`: nothing remote and no group skipped.
    fn plan(&self, message: &Message) -> Option<ClusterPlan>;
    /// After local routing: forwards the message per `plan`. Returns the store sequence
    /// number the publisher's acknowledgement must wait for ([`Seq::NONE`]: none), so that a
    /// QoS 1/2 message's copy for another node is made durable in the same group commit: a
    /// number of the broker's own [`crate::persist::Persistence`], which the cluster writes
    /// its outboxes through.
    fn forward(&self, message: &Arc<Message>, plan: ClusterPlan) -> Seq;
    /// Before a client's QoS 1/2 PUBLISH to `topic` is taken: whether a copy would go to a
    /// node whose outbox is full (its link down or slow for long). The PUBLISH is then
    /// refused like one the store cannot take (MQTT 5 0x97, 3.x unacknowledged and closed),
    /// so that no acknowledged message loses a copy. Called for every such PUBLISH: it must
    /// be cheap while no outbox is full. The default refuses nothing.
    fn refuses(&self, topic: &str) -> bool {
        let _ = topic;
        false
    }
    /// A local publish (or the admin API) set (`Some`) or cleared (`None`) the retained
    /// message of `topic`.
    fn retained_changed(&self, topic: &str, message: Option<&Arc<Message>>);
    /// The connection of a client that [`Broker::take_over`] closed has let go of its session
    /// (its will handled): the session is offline here now, and [`Broker::export_session`]
    /// takes it (or, for a session that ended with its connection, finds nothing). Called
    /// with no lock of the core held, on the closing connection's thread; like the others,
    /// it should only queue the work.
    fn claimed_session_released(&self, client_id: &str) {
        let _ = client_id;
    }
    /// An authenticated CONNECT (after any enhanced authentication) asks whether this node
    /// may own `request.client_id`, before its session is attached. `Pending` keeps the
    /// connection waiting (no input handled, bounded by the connect timeout: then CONNACK
    /// 0x88) until `request.completion` is completed, from any thread. Called on the
    /// connection's thread with no lock of the core held; it must not block. The default
    /// grants every claim.
    fn claim(&self, request: ClaimRequest) -> ClaimDecision {
        let _ = request;
        ClaimDecision::Granted
    }
    /// After a SUBSCRIBE granted `filter` (of `group`): the cluster's decision on the route it
    /// needs, if one is still to come (this node's first subscriber of the filter, its route
    /// not committed yet). The SUBACK waits for it; a route the cluster could not commit
    /// (no quorum) makes that filter's SUBACK a failure (0x80, retryable) and the
    /// subscription is removed. `None` (the default): nothing to wait for.
    fn route_pending(&self, filter: &str, group: Option<&str>) -> Option<Arc<RouteTicket>> {
        let _ = (filter, group);
        None
    }
    /// A persistent session added or replaced a subscription (the cluster keeps durable
    /// subscriptions in its registry, so they outlive this node). Called under the core's
    /// locks: queue only. The default does nothing.
    fn session_subscribed(&self, client_id: &str, filter: &str, record: &SubscriptionRecord) {
        let _ = (client_id, filter, record);
    }
    /// A persistent session removed a subscription. Queue only.
    fn session_unsubscribed(&self, client_id: &str, filter: &str) {
        let _ = (client_id, filter);
    }
    /// The session of `client_id` ended here (with its connection, by expiry, a clean start,
    /// an operator, or handed over to another node): the cluster may release the client id
    /// if no session of it is here any more. Called under the core's locks: queue only.
    fn session_ended(&self, client_id: &str) {
        let _ = client_id;
    }
}

/// The cluster's decision on a route a SUBACK waits for (see [`ClusterHook::route_pending`]).
#[derive(Default)]
pub struct RouteTicket {
    /// 0 pending, 1 committed, 2 refused.
    state: std::sync::atomic::AtomicU8,
    waiting: std::sync::Mutex<Vec<Arc<dyn crate::Wakeup>>>,
}

impl std::fmt::Debug for RouteTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTicket")
            .field(
                "state",
                &self.state.load(std::sync::atomic::Ordering::Acquire),
            )
            .finish_non_exhaustive()
    }
}

impl RouteTicket {
    pub fn new() -> Arc<RouteTicket> {
        Arc::new(RouteTicket::default())
    }

    /// The cluster decided: `committed` or not. Wakes the connections whose SUBACK waits;
    /// a second answer is ignored.
    pub fn complete(&self, committed: bool) {
        let state = if committed { 1 } else { 2 };
        if self
            .state
            .compare_exchange(
                0,
                state,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            )
            .is_err()
        {
            return;
        }
        let waiting = std::mem::take(
            &mut *self
                .waiting
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for wakeup in waiting {
            wakeup.wake();
        }
    }

    /// `None` while pending, then whether the route was committed.
    pub fn decided(&self) -> Option<bool> {
        match self.state.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            state => Some(state == 1),
        }
    }

    /// Wakes `wakeup` once decided (at once if it is).
    pub(crate) fn watch(&self, wakeup: Arc<dyn crate::Wakeup>) {
        let mut waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.decided().is_some() {
            drop(waiting);
            wakeup.wake();
        } else {
            waiting.push(wakeup);
        }
    }
}

/// A shared subscription's group name and its (plain) filter: `$share/{0}/{1}`.
pub type GroupRoute = (String, String);

/// What a cluster decided for one local publish (see [`ClusterHook::plan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterPlan {
    /// Shared groups matched here that get no local delivery: another node's member was
    /// picked.
    pub skip_groups: Vec<GroupRoute>,
    /// One copy per remote node that gets the message.
    pub remote: Vec<RemoteCopy>,
    /// The message's identity across nodes (set on the message before it is routed here, so
    /// a local session's copy carries it too); `None` when no copy leaves this node.
    pub id: Option<crate::message::ClusterMessageId>,
    /// The cluster's mark of the route table the plan was made with, given back to
    /// [`ClusterHook::forward`] (the core does not read it).
    pub routes_at: u64,
}

/// The copy of a message for one remote node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteCopy {
    pub node: u64,
    /// Routed there to its plain (non-shared) subscriptions.
    pub regular: bool,
    /// Delivered there to one member of each of these shared groups.
    pub groups: Vec<GroupRoute>,
}

/// Which subscriptions of the index a routing reaches: plain ones or not, and which shared
/// groups. [`Selection::ALL`] is a single node's routing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Selection<'a> {
    pub(crate) regular: bool,
    pub(crate) groups: Groups<'a>,
    /// The plain subscriptions of this client id's session only (a late copy, see
    /// [`Broker::publish_late`]).
    pub(crate) session: Option<&'a str>,
    /// The tick of the retained clock at which this publish stored its message as retained
    /// (`u64::MAX`: it stored none): subscriptions made after it are passed over, their
    /// retained stream sends it (see `Broker::retained_clock`).
    pub(crate) retained_at: u64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Groups<'a> {
    All,
    /// Every group but these (a local publish whose plan picked another node for them).
    Except(&'a [GroupRoute]),
    /// Only these (a message forwarded by another node for them).
    Only(&'a [GroupRoute]),
}

impl Selection<'_> {
    pub(crate) const ALL: Selection<'static> = Selection {
        regular: true,
        groups: Groups::All,
        session: None,
        retained_at: u64::MAX,
    };

    /// Whether `group` is routed to.
    pub(crate) fn takes<V>(&self, group: &SharedGroup<V>) -> bool {
        let listed = |list: &[GroupRoute]| {
            let plain = split_shared(&group.filter).map_or("", |(_, filter)| filter);
            list.iter()
                .any(|(name, filter)| **name == *group.name && filter == plain)
        };
        match self.groups {
            Groups::All => true,
            Groups::Except(list) => !listed(list),
            Groups::Only(list) => listed(list),
        }
    }
}

/// Where a message comes from, for [`Broker::publish_with`]: a local one is planned with the
/// cluster, the others never reach the hook.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin<'a> {
    /// A client, a will, the admin API, a bridge.
    Local,
    /// The broker's own `$SYS` messages: each node has its own.
    System,
    /// Forwarded by another node, for these subscriptions.
    Cluster(Selection<'a>),
}

/// The route of a subscription filter: `(filter, group)` (what [`ClusterHook::route_added`]
/// reports for it).
pub fn route_of(filter: &str) -> (&str, Option<&str>) {
    match split_shared(filter) {
        Some((group, plain)) => (plain, Some(group)),
        None => (filter, None),
    }
}

impl Broker {
    /// Plugs a cluster in. Set once: a second call is refused (false). Every route the index
    /// already holds is reported to `hook` (`route_added`) before any later change, under the
    /// index's lock, so the cluster misses none and sees none twice.
    pub fn set_cluster(&self, hook: Arc<dyn ClusterHook>) -> bool {
        let index = write(&self.subscriptions);
        if self.cluster.set(hook.clone()).is_err() {
            return false;
        }
        let (plain, shared) = index.routes();
        for filter in &plain {
            hook.route_added(filter, None);
        }
        for (group, filter) in &shared {
            hook.route_added(filter, Some(group));
        }
        true
    }

    /// The cluster plugged in, if any.
    pub(crate) fn cluster(&self) -> Option<&Arc<dyn ClusterHook>> {
        self.cluster.get()
    }

    /// Whether the cluster would lose a copy of a QoS 1/2 message to `topic` (see
    /// [`ClusterHook::refuses`]); false without a cluster.
    pub(crate) fn cluster_refuses(&self, topic: &str) -> bool {
        self.cluster().is_some_and(|hook| hook.refuses(topic))
    }

    /// The routes of this node: the distinct plain filters subscribed to, and the shared
    /// groups as `(group, filter)` pairs (for a cluster that re-syncs its routes).
    pub fn local_routes(&self) -> (Vec<String>, Vec<GroupRoute>) {
        read(&self.subscriptions).routes()
    }

    /// Adds a subscription to the index (the caller holds its write lock), reporting a new
    /// route to the cluster.
    pub(crate) fn index_insert(
        &self,
        index: &mut SubscriptionIndex<Subscriber>,
        filter: &str,
        subscriber: Subscriber,
    ) {
        let inserted = index.insert_route(filter, subscriber);
        if inserted.first
            && let Some(hook) = self.cluster()
        {
            let (filter, group) = route_of(filter);
            hook.route_added(filter, group);
        }
    }

    /// Removes a subscription from the index (the caller holds its write lock), reporting a
    /// route gone to the cluster.
    pub(crate) fn index_remove(
        &self,
        index: &mut SubscriptionIndex<Subscriber>,
        filter: &str,
        probe: &Subscriber,
    ) {
        let (_, last) = index.remove_route(filter, probe);
        if last && let Some(hook) = self.cluster() {
            let (filter, group) = route_of(filter);
            hook.route_removed(filter, group);
        }
    }

    /// A message forwarded by another node: routed to this node's plain subscriptions when
    /// `regular`, and for each of `groups` to one local member. Never kept as retained (the
    /// retained message travels through [`Broker::apply_cluster_retained`]) and never
    /// planned again (no loops). Returns the number of sessions reached and the store
    /// sequence number the acknowledgement to the other node must wait for (deliveries to
    /// stored sessions made durable).
    pub fn publish_from_cluster(
        &self,
        message: Message,
        regular: bool,
        groups: &[GroupRoute],
        now: Instant,
    ) -> (usize, Seq) {
        let selection = Selection {
            regular,
            groups: Groups::Only(groups),
            session: None,
            retained_at: u64::MAX,
        };
        self.publish_with(message, now, None, false, Origin::Cluster(selection))
    }

    /// A late copy: a message another node received for the session of `client_id` after
    /// handing that session over to this node, which this node may not have got (its origin
    /// planned it before this node's routes reached every table). Routed to that session's
    /// plain subscriptions only, and only while the session remembers what reached it since
    /// its shell was made ([`Broker::import_shell`], until [`Broker::forget_seen`]): the
    /// session drops whichever copy of a message comes second (see `SeenIds`), and one it
    /// still holds. A session without that memory (started clean since, or restarted) takes
    /// no late copy. Never kept as retained, never planned. Returns the sessions reached (0
    /// or 1) and the store sequence number the acknowledgement to the other node waits for.
    pub fn publish_late(
        &self,
        client_id: &str,
        mut message: Message,
        now: Instant,
    ) -> (usize, Seq) {
        if !self.takes_late_copy(client_id, message.cluster_id.as_deref()) {
            return (0, Seq::NONE);
        }
        if message.qos != QoS::AtMostOnce && message.id == 0 {
            message.id = self.new_message_id();
        }
        let selection = Selection {
            regular: true,
            groups: Groups::Only(&[]),
            session: Some(client_id),
            retained_at: u64::MAX,
        };
        // Never through other workers' inboxes: they route to every session they hold.
        let scope = Scope::Publish {
            me: crate::worker_post::current_worker(),
            post: false,
        };
        self.route(MessageRef::Own(message), scope, now, None, selection)
    }

    /// Whether the session of `client_id` here takes a late copy of the message `id`: it
    /// remembers what reached it since its shell was made, and does not hold the message
    /// (in flight or queued: what its memory forgot past its bound, it may still hold). A
    /// copy it holds is the client's then, which the merge keeps (see `SeenIds::late_taken`).
    fn takes_late_copy(&self, client_id: &str, id: Option<&ClusterMessageId>) -> bool {
        self.session(client_id).is_some_and(|session| {
            let mut state = session.lock();
            let state = &mut *state;
            let Some(seen) = state.seen.as_deref_mut().filter(|seen| seen.takes_late()) else {
                return false;
            };
            let Some(id) = id else {
                return true;
            };
            let held = state
                .inflight
                .iter()
                .map(|entry| &entry.delivery)
                .chain(state.queue.iter().map(|queued| &queued.delivery))
                .any(|delivery| delivery.message.cluster_id.as_deref() == Some(id));
            if held {
                seen.taken_late(*id);
                self.metrics()
                    .bump(crate::metrics::Counter::SecondCopiesDropped);
            }
            !held
        })
    }

    /// The cluster's replicated retained message of `topic` changed on another node: set
    /// (`Some`, a non-empty payload) or cleared (`None`, or an empty payload). Updates the
    /// retained index and the store (so it survives a restart), without telling the hook and
    /// without the retained limits (every node must hold the same set). Returns the store
    /// sequence number of the change.
    pub fn apply_cluster_retained(&self, topic: &str, message: Option<Message>) -> Seq {
        let mut retained = write(&self.retained);
        match message.filter(|message| !message.payload.is_empty()) {
            Some(message) => {
                let kept = Arc::new(message.compacted());
                retained.insert(kept.clone());
                self.persist(|| Change::Retained(kept))
            }
            None => {
                let Some(removed) = retained.remove(topic) else {
                    return Seq::NONE;
                };
                self.persist(|| Change::RetainedCleared {
                    topic: removed.topic.clone(),
                })
            }
        }
    }

    /// The node lost its cluster's quorum for longer than its lease: every client connection
    /// closes (MQTT 5: DISCONNECT 0x9C Use another server; 3.x: closed), its will handled as
    /// for any close, its session kept here offline. This node can no longer prove it is the
    /// only owner of those client ids: the majority may have granted them elsewhere. Returns
    /// how many connections were closed.
    pub fn release_for_lost_lease(&self) -> usize {
        let online = self.sessions_where(|session| session.is_online());
        let mut closed = 0;
        for session in online {
            let wakeup = {
                let mut state = session.lock();
                if state.ended || state.owner.is_none() {
                    continue;
                }
                session.set_kicked(&mut state, Some(Kick::LeaseLost));
                state.wakeup.clone()
            };
            closed += 1;
            if let Some(wakeup) = wakeup {
                wakeup.wake();
            }
        }
        if closed > 0 {
            tracing::warn!(
                connections = closed,
                "cluster quorum lost past the lease: client connections closed (0x9C)"
            );
        }
        closed
    }

    /// Another node claimed `client_id`: its connection here closes as a take-over does
    /// (MQTT 5: DISCONNECT 0x8E Session taken over [MQTT-3.1.4-3]; 3.x: closed), its will is
    /// published or scheduled per its delay as for any close, and the session stays here,
    /// offline, for a later hand-over ([`Broker::export_session`]) or its expiry. False when
    /// the client has no connection here.
    pub fn take_over(&self, client_id: &str) -> bool {
        let Some(session) = self.session(client_id) else {
            return false;
        };
        let wakeup = {
            let mut state = session.lock();
            if state.ended || state.owner.is_none() {
                return false;
            }
            session.set_kicked(&mut state, Some(Kick::ClaimedElsewhere));
            state.wakeup.clone()
        };
        tracing::info!(
            client_id,
            event = "take_over",
            "client claimed by another node"
        );
        if let Some(wakeup) = wakeup {
            wakeup.wake();
        }
        true
    }
}
