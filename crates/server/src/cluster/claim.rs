//! The claim of a client id at CONNECT (issue 16, "Take-over across nodes"): the claimer's
//! side ([`Claimer`], asked by the core through the hook's `claim`) and the previous owner's
//! side ([`HandOver`], asked by the claimer's node once the claim is applied here). See
//! docs/architecture.md ("A cluster: claiming a client id").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tern_broker::{
    Broker, ClaimDecision, ClaimGrant, ClaimRequest, PreviousOwner, SessionExpiry, SessionTransfer,
    SubscriptionRecord,
};
use tern_cluster::rpc::Refusal;
use tern_cluster::{ClusterNode, Command, HandOverHandler, NodeId, Outcome};
use tern_codec::{MqttStr, ReasonCode};
use tokio::sync::oneshot;

use super::flush;
use super::hook::{lock, options_from_byte};
use super::returns::Take;

/// How long a claim waits before proposing again after a refusal that may pass.
const RETRY_AFTER: Duration = Duration::from_millis(50);

/// Proposes claims for the core's CONNECTs and fetches the previous owner's session.
pub struct Claimer {
    pub node: ClusterNode,
    /// Where a granted session nobody took is kept (weak: the broker holds the hook).
    pub broker: Weak<Broker>,
    pub me: NodeId,
    /// Bounds the proposal; the close and the hand-over are waited for one and a half times
    /// as long each, the shell's routes a quarter of it.
    pub timeout: Duration,
    /// The runtime the claims run on (the core asks on a connection's thread).
    pub runtime: tokio::runtime::Handle,
    /// How long a node keeps its clients without its quorum (`cluster.lease_ms`): a claim
    /// whose previous owner did not answer waits this long before it is granted.
    pub lease: Duration,
    /// Client ids granted here only once a silent previous owner's lease has run out.
    pub fences: Arc<Fences>,
    /// Whether a release of the client id is queued or under way here (the registry's entry
    /// is about to go: a reconnection takes the slow path and claims again).
    pub releasing: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// Copies of sessions other nodes own (this node's own copy joins a session it claims).
    pub returns: Arc<super::returns::Returns>,
    /// The hook's shared state (its route table; weak: the glue holds the claimer).
    pub glue: Weak<super::hook::Glue>,
}

/// Client ids whose previous owner did not answer a hand-over: not granted here (not even on
/// the fast path of a reconnection) before that owner's lease has surely run out.
#[derive(Default)]
pub struct Fences {
    until: Mutex<HashMap<String, tokio::time::Instant>>,
    /// Client ids with a claim running here.
    claiming: Mutex<std::collections::HashSet<String>>,
    claimed: tokio::sync::Notify,
}

/// A claim of a client id under way on this node (see [`Fences::begin_claim`]).
pub struct Claiming {
    fences: Arc<Fences>,
    client_id: String,
}

impl Drop for Claiming {
    fn drop(&mut self) {
        lock(&self.fences.claiming).remove(&self.client_id);
        self.fences.claimed.notify_waiters();
    }
}

impl Fences {
    /// Whether a claim of `client_id` runs on this node now.
    pub fn claiming(&self, client_id: &str) -> bool {
        lock(&self.claiming).contains(client_id)
    }

    /// Waits until no other claim of `client_id` runs here, then marks this one as running
    /// until the returned guard is dropped.
    async fn begin_claim(self: &Arc<Self>, client_id: &str) -> Claiming {
        loop {
            let notified = self.claimed.notified();
            if lock(&self.claiming).insert(client_id.to_owned()) {
                return Claiming {
                    fences: self.clone(),
                    client_id: client_id.to_owned(),
                };
            }
            notified.await;
        }
    }

    /// Whether `client_id` waits for a lease to run out.
    fn fenced(&self, client_id: &str) -> bool {
        let mut until = lock(&self.until);
        match until.get(client_id) {
            Some(at) if *at > tokio::time::Instant::now() => true,
            Some(_) => {
                until.remove(client_id);
                false
            }
            None => false,
        }
    }

    /// Waits until `client_id` may be granted, from `now + lease` at the latest.
    async fn wait_out(&self, client_id: &str, lease: Option<Duration>) {
        let at = {
            let mut until = lock(&self.until);
            if let Some(lease) = lease {
                let at = tokio::time::Instant::now() + lease;
                let entry = until.entry(client_id.to_owned()).or_insert(at);
                *entry = (*entry).max(at);
            }
            until.get(client_id).copied()
        };
        if let Some(at) = at {
            tokio::time::sleep_until(at).await;
            let mut until = lock(&self.until);
            if until.get(client_id).is_some_and(|current| *current <= at) {
                until.remove(client_id);
            }
        }
    }
}

impl Claimer {
    /// The core's question: granted at once when the replicated registry says this node owns
    /// the client id already and this node holds its lease (a reconnection here needs no
    /// consensus; a claim made meanwhile elsewhere is ordered by the log and takes it from
    /// here through `apply`; a node without its lease may have lost the id unknowingly),
    /// otherwise pending while a task proposes the claim and fetches the session.
    pub fn claim(&self, request: ClaimRequest) -> ClaimDecision {
        let (owner, listed) = {
            let state = self.node.state();
            let listed = state
                .session(&request.client_id)
                .is_some_and(|entry| !entry.pending_returns.is_empty());
            (state.owner(&request.client_id), listed)
        };
        // A clean start (or a session that ends with its connection) while another node may
        // still return a queue of the old session: the claim goes through the log, whose
        // clean claim takes those nodes off the list, so nothing of the old session joins
        // the new one [MQTT-3.1.2-4].
        let discards_returns = listed && (request.clean_start || !request.persistent);
        if matches!(owner, Some((Some(owner), _)) if owner == self.me)
            && !discards_returns
            // The core's lease (the node's, told at each confirmation) first: whoever sees it
            // extended after a gap sees the catch-up.
            && self
                .broker
                .upgrade()
                .is_some_and(|broker| broker.holds_lease(Instant::now()))
            && self
                .glue
                .upgrade()
                .is_some_and(|glue| !glue.catching_up.load(std::sync::atomic::Ordering::Acquire))
            && !self.fences.fenced(&request.client_id)
            && !self.fences.claiming(&request.client_id)
            && !(self.releasing)(&request.client_id)
        {
            return ClaimDecision::Granted;
        }
        let node = self.node.clone();
        let broker = self.broker.clone();
        let fences = self.fences.clone();
        let returns = self.returns.clone();
        let glue = self.glue.clone();
        let (me, timeout, lease) = (self.me, self.timeout, self.lease);
        self.runtime.spawn(async move {
            let ClaimRequest {
                client_id,
                clean_start,
                persistent,
                expiry,
                completion,
            } = request;
            if !completion.is_wanted() {
                return;
            }
            // One claim of a client id at a time on this node: a reconnection while this
            // one runs waits for it (and then finds the session it brings).
            let _claiming = fences.begin_claim(&client_id).await;
            // Whether this node may hold a queue of the session still (it owned it and did
            // not hand it over): that copy joins what the claim brings.
            let listed = node
                .state()
                .session(&client_id)
                .is_some_and(|entry| entry.pending_returns.contains(&me));
            let context = Context {
                node: &node,
                glue: &glue,
                broker: &broker,
                me,
                timeout,
                listed,
                expiry,
            };
            let (mut result, silent, epoch) =
                claim(&context, &client_id, clean_start, persistent).await;
            if listed
                && !clean_start
                && let Ok(grant) = &mut result
                && let Some(transfer) = &mut grant.transfer
            {
                returns.add_own_copy(transfer).await;
            }
            if result.is_ok() {
                // "Never two live connections": a previous owner that did not answer may
                // still hold connections until its lease runs out; it looks at its lease
                // every `lease::CHECK_EVERY` and closes them then: wait that out, and a
                // margin.
                let wait = lease + super::lease::CHECK_EVERY * 2 + Duration::from_millis(300);
                fences.wait_out(&client_id, silent.then_some(wait)).await;
                // Still this claim's? A later claim (elsewhere) took the id meanwhile. (This
                // node may not have applied its own claim yet: only a later epoch counts.)
                let current = node.state().owner(&client_id);
                if current.is_some_and(|(owner, current)| current > epoch && owner != Some(me)) {
                    tracing::info!(client_id, "claimed again elsewhere meanwhile: CONNACK 0x88");
                    result = Err(ReasonCode::ServerUnavailable);
                }
            }
            // The connection went away meanwhile: the session handed over stays here (this
            // node owns the client id now), offline, for its next connection.
            if let Some(transfer) = completion.complete(result)
                && let Some(broker) = broker.upgrade()
                && let Err(error) = broker.adopt_handed_over(transfer, Instant::now())
            {
                tracing::warn!(%error, "handed-over session not kept");
            }
        });
        ClaimDecision::Pending
    }
}

/// What a claim works with.
struct Context<'a> {
    node: &'a ClusterNode,
    glue: &'a Weak<super::hook::Glue>,
    broker: &'a Weak<Broker>,
    me: NodeId,
    timeout: Duration,
    /// Whether the registry lists this node as holding a copy of the session (it joins what
    /// the claim brings; no shell is made then).
    listed: bool,
    /// The CONNECT's session expiry: the shell's (see [`make_shell`]).
    expiry: SessionExpiry,
}

/// Proposes the claim; on success asks the previous owner (another node) for the session.
/// Also says whether that owner failed to answer (it may still hold the client's connection
/// until its lease runs out).
async fn claim(
    context: &Context<'_>,
    client_id: &str,
    clean_start: bool,
    persistent: bool,
) -> (Result<ClaimGrant, ReasonCode>, bool, u64) {
    let Context {
        node, me, timeout, ..
    } = *context;
    let command = Command::Claim {
        client_id: client_id.to_owned(),
        node: me,
        persistent,
        clean_start,
    };
    // Bounded by the proposal timeout as a whole. A refusal that may pass (no leader known
    // during an election, the leader unreachable for a moment) is tried again until then: a
    // client connecting while the cluster elects a leader waits a little instead of being
    // refused. A claim committed twice this way is harmless: the second names this node as
    // the previous owner, and nothing is handed over.
    let deadline = tokio::time::Instant::now() + timeout;
    let outcome = loop {
        match tokio::time::timeout_at(deadline, node.propose(command.clone())).await {
            // This node is not registered yet (it has just started or joined): its
            // registration is on its way, try again.
            Ok(Ok(Outcome::UnknownNode))
                if tokio::time::Instant::now() + RETRY_AFTER < deadline =>
            {
                tracing::debug!(
                    client_id,
                    "claim before this node's registration: trying again"
                );
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Ok(Ok(outcome)) => break outcome,
            Ok(Err(Refusal::Refused(reason))) => {
                tracing::info!(client_id, reason, "claim refused: CONNACK 0x88");
                return (Err(ReasonCode::ServerUnavailable), false, 0);
            }
            Ok(Err(refusal)) if tokio::time::Instant::now() + RETRY_AFTER < deadline => {
                tracing::debug!(client_id, %refusal, "claim not committed: trying again");
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Ok(Err(refusal)) => {
                tracing::info!(client_id, %refusal, "claim not committed: CONNACK 0x88");
                return (Err(ReasonCode::ServerUnavailable), false, 0);
            }
            Err(_) => {
                tracing::info!(client_id, "claim not committed in time: CONNACK 0x88");
                return (Err(ReasonCode::ServerUnavailable), false, 0);
            }
        }
    };
    let (epoch, previous) = match outcome {
        Outcome::Claimed { epoch, previous } => (epoch, previous),
        other => {
            tracing::warn!(client_id, ?other, "claim refused by the cluster");
            return (Err(ReasonCode::ServerUnavailable), false, 0);
        }
    };
    let Some((previous, _)) = previous.filter(|(previous, _)| *previous != me) else {
        // No previous owner to ask: a new client id, or a session whose node was removed
        // from the cluster (its durable subscriptions wait in the registry).
        let transfer = if previous.is_none() && !clean_start {
            from_registry(node, client_id)
        } else {
            None
        };
        return (Ok(ClaimGrant { transfer }), false, epoch);
    };
    // Asked even for a clean start, whose CONNECT discards what comes [MQTT-3.1.2-4]: the
    // answer comes once the previous owner's connection has closed (never two live
    // connections), and the old session leaves that node instead of lingering there offline
    // with its routes.
    let mut silent = false;
    // The previous owner may take its whole timeout for the connection to let go, then a
    // flush (a quarter of it): waited for a little longer, so that it does not export a
    // session this claim has given up on.
    let wait = timeout * 3 / 2;
    // Closing the move window: the previous owner closes the client's connection first;
    // then a shell of the session here, whose routes bring what is published from then on
    // (so no message reaches both the old connection and the shell); the previous owner
    // then flushes what older routes sent it into the session before handing it over.
    let mut closed = Ok(());
    let shell = if persistent && !clean_start {
        closed = node.request_close(previous, client_id, epoch, wait).await;
        if closed.is_ok() {
            make_shell(context, client_id, epoch).await
        } else {
            Shell::None
        }
    } else {
        Shell::None
    };
    let routes_at = match shell {
        Shell::Routed(index) => Some(index),
        Shell::None | Shell::Unrouted => None,
    };
    let answer = match closed {
        Ok(()) => {
            node.request_hand_over(previous, client_id, epoch, routes_at, wait)
                .await
        }
        // Refused (claimed again since) or silent: as the hand-over would have answered.
        Err(refusal) => Err(refusal),
    };
    // A shell whose session the previous owner did not have, or would not give, goes: the
    // client does not resume a session that is not there [MQTT-3.2.2-3].
    if shell != Shell::None && matches!(answer, Ok(None) | Err(Refusal::Refused(_))) {
        drop_shell(context, client_id);
    }
    let handed = match &answer {
        Ok(Some(bytes)) => flush::read_handed_over(bytes),
        _ => None,
    };
    let decoded = match &answer {
        Ok(Some(_)) => Some(
            handed
                .as_ref()
                .ok_or(tern_broker::TransferError::Invalid(
                    "empty hand-over answer",
                ))
                .and_then(|handed| SessionTransfer::decode(handed.session)),
        ),
        _ => None,
    };
    if shell != Shell::None {
        // What the previous owner had of the copies planned before the shell's routes
        // reached every table: the shell's copies of them, and later ones, are dropped.
        // Not when its session could not be read: the shell's copies are all there is.
        if let (Some(Ok(_)), Some(handed), Shell::Routed(_)) = (&decoded, &handed, shell)
            && !handed.had.is_empty()
            && let Some(broker) = context.broker.upgrade()
        {
            broker.seen_previous_owner(client_id, epoch, handed.had.clone());
        }
        // Late copies may come unless the answer says none: a previous owner that did not
        // answer may have exported the session with a forwarding address all the same.
        let late = match (&answer, shell) {
            (Ok(Some(_)), _) => handed
                .as_ref()
                .map_or(flush::LateCopies::None, |handed| handed.late_copies),
            (Ok(None) | Err(Refusal::Refused(_)), _) => flush::LateCopies::None,
            // Unanswered: the previous owner may have flushed and kept an address all the
            // same, if it was asked to flush.
            (Err(_), Shell::Routed(_)) => flush::LateCopies::Follow,
            (Err(_), _) => flush::LateCopies::None,
        };
        remember_seen(context, client_id, epoch, late);
    }
    if answer.is_ok() {
        // The previous owner handed its session over (or had none): it holds no queue for
        // the client (issue 16, "return the queue").
        node.propose_later(Command::Returned {
            client_id: client_id.to_owned(),
            epoch,
            node: previous,
        });
    }
    let transfer = match answer {
        // `decoded` is read for every answer that holds bytes.
        Ok(Some(_)) => match decoded.unwrap_or(Err(tern_broker::TransferError::Invalid(
            "empty hand-over answer",
        ))) {
            Ok(transfer) => Some(transfer),
            Err(error) => {
                tracing::warn!(client_id, node = previous, %error, "handed-over session unreadable: its subscriptions from the registry");
                from_registry(node, client_id)
            }
        },
        Ok(None) => None,
        // The previous owner answered that this claim is stale (the id was claimed again
        // since) or that it could not let go: it is alive and may hold the connection, so
        // this claim does not connect (0x88, the client retries).
        Err(Refusal::Refused(reason)) => {
            tracing::info!(
                client_id,
                node = previous,
                reason,
                "hand-over refused: CONNACK 0x88"
            );
            return (Err(ReasonCode::ServerUnavailable), false, 0);
        }
        Err(refusal) => {
            // The previous owner is down or slow: the client connects here with the
            // session's durable subscriptions from the registry; its queued and in-flight
            // messages stay on that node, listed in the registry, until it returns them
            // (see `returns` and docs/architecture.md).
            tracing::warn!(client_id, node = previous, %refusal, "no hand-over: the session's subscriptions from the registry, after the owner's lease");
            silent = true;
            from_registry(node, client_id)
        }
    };
    (Ok(ClaimGrant { transfer }), silent, epoch)
}

/// After the hand-over: the shell of the claim `epoch` here (the session, once the client
/// attached) remembers what reached it for as long as the previous owner may send late
/// copies (see `forwards`), or not at all when it sends none; what it knows the previous
/// owner had (`Broker::seen_previous_owner`) it keeps as long (copies routed here may be
/// that slow too).
fn remember_seen(context: &Context<'_>, client_id: &str, epoch: u64, late: flush::LateCopies) {
    let Some(broker) = context.broker.upgrade() else {
        return;
    };
    if late == flush::LateCopies::None {
        broker.forget_seen(client_id, epoch);
    }
    if !broker.knows_of_move(client_id, epoch) {
        return;
    }
    let broker = context.broker.clone();
    let client_id = client_id.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(super::forwards::SEEN_FOR).await;
        if let Some(broker) = broker.upgrade() {
            broker.forget_move(&client_id, epoch);
        }
    });
}

/// What a claimer made of the session before asking for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shell {
    /// No shell: a clean start or a session that ends with its connection, a session of
    /// this client id here already, this node listed as holding a copy of it, no durable
    /// subscriptions in the registry, or the previous owner did not close the connection.
    None,
    /// A shell whose routes were not seen committed in time: no flush asked.
    Unrouted,
    /// A shell whose routes are in the table from this log index on.
    Routed(u64),
}

/// How long a claimer waits for its shell's routes to be committed, as a part of the claim's
/// timeout.
const SHELL_SHARE: u32 = 4;

/// Imports the session of `client_id` from the registry (its durable subscriptions, nothing
/// queued) as an offline shell here (`Broker::import_shell`), and waits (bounded) until its
/// routes are committed: each is proposed again with a ticket (its add then commits after
/// any change of it this node proposed before, a removal still on its way included), then a
/// barrier of this node is applied here. From the barrier's log index on, every node's table
/// sends the shell's filters' messages here. The hand-over merges what the previous owner
/// sends in front of what this shell queued (`Broker::adopt_handed_over`). See
/// docs/architecture.md ("A cluster: closing the move window").
async fn make_shell(context: &Context<'_>, client_id: &str, epoch: u64) -> Shell {
    let (Some(glue), Some(broker)) = (context.glue.upgrade(), context.broker.upgrade()) else {
        return Shell::None;
    };
    if context.listed || broker.session(client_id).is_some() {
        return Shell::None;
    }
    let Some(mut transfer) = from_registry(context.node, client_id) else {
        return Shell::None;
    };
    // The CONNECT's: what the session keeps if this node stops before the client attaches
    // (a restart finds it as any offline session, which expires).
    transfer.expiry = context.expiry;
    let routes: Vec<(Option<String>, String)> = transfer
        .subscriptions
        .iter()
        .map(|(filter, _)| {
            // The key the hook reported the route under.
            let (filter, group) = tern_broker::route_of(filter.as_str());
            (group.map(str::to_owned), filter.to_owned())
        })
        .collect();
    if let Err(error) = broker.import_shell(transfer, epoch, Instant::now()) {
        tracing::debug!(client_id, %error, "no shell of the session");
        return Shell::None;
    }
    let deadline = tokio::time::Instant::now() + context.timeout / SHELL_SHARE;
    // Each route proposed again, with a ticket; a route the shell no longer holds (ended
    // meanwhile) has none, and the shell is not routed then.
    let tickets: Option<Vec<_>> = routes.iter().map(|route| glue.want_route(route)).collect();
    let Some(tickets) = tickets else {
        return Shell::Unrouted;
    };
    let routed = loop {
        match tickets
            .iter()
            .map(|ticket| ticket.decided())
            .try_fold(true, |all, decided| {
                decided.map(|committed| all && committed)
            }) {
            Some(committed) => break committed,
            None if tokio::time::Instant::now() >= deadline => break false,
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let index = if routed {
        glue.barrier_index(context.node, deadline).await
    } else {
        None
    };
    match index {
        Some(index) => {
            // Planned from `index` on, a message came here only: no late copy of it.
            broker.seen_window(client_id, epoch, index);
            Shell::Routed(index)
        }
        None => {
            tracing::info!(
                client_id,
                "the shell's routes were not committed in time: handed over without a flush"
            );
            Shell::Unrouted
        }
    }
}

/// Ends the shell of `client_id` here (what it queued goes with it: the previous owner kept
/// the session, or had none).
fn drop_shell(context: &Context<'_>, client_id: &str) {
    if let Some(broker) = context.broker.upgrade()
        && broker.end_shell(client_id)
    {
        tracing::debug!(client_id, "the session's shell here ended");
    }
}

/// A session rebuilt from the replicated registry: the durable subscriptions of a persistent
/// session (with their options and identifiers), nothing queued or in flight. `None` when
/// the registry has none. The expiry is the CONNECT's once the client attaches.
fn from_registry(node: &ClusterNode, client_id: &str) -> Option<SessionTransfer> {
    let state = node.state();
    let entry = state.session(client_id)?;
    if !entry.persistent || entry.subscriptions.is_empty() {
        return None;
    }
    let subscriptions = entry
        .subscriptions
        .iter()
        .filter_map(|(filter, options)| {
            let filter = MqttStr::try_from(filter.as_str()).ok()?;
            let record = SubscriptionRecord {
                options: options_from_byte(options.options)?,
                identifier: options.identifier,
            };
            Some((filter, record))
        })
        .collect();
    Some(SessionTransfer {
        client_id: MqttStr::try_from(client_id).ok()?,
        expiry: SessionExpiry::Never,
        subscriptions,
        queue: Vec::new(),
        inflight: Vec::new(),
        inbound_qos2: Vec::new(),
    })
}

/// Connections closed by a take-over whose sessions a hand-over waits for, by client id:
/// completed by the hook's `claimed_session_released`.
#[derive(Default)]
pub struct Released {
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
}

impl Released {
    fn wait(&self, client_id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters)
            .entry(client_id.to_owned())
            .or_default()
            .push(tx);
        rx
    }

    /// The connection of `client_id` closed by a take-over has let go of its session.
    pub fn released(&self, client_id: &str) {
        if let Some(waiters) = lock(&self.waiters).remove(client_id) {
            for waiter in waiters {
                let _ = waiter.send(());
            }
        }
    }

    fn forget(&self, client_id: &str) {
        let mut waiters = lock(&self.waiters);
        if let Some(list) = waiters.get_mut(client_id) {
            list.retain(|waiter| !waiter.is_closed());
            if list.is_empty() {
                waiters.remove(client_id);
            }
        }
    }
}

/// The previous owner's side: closes the client's connection here (MQTT 5: DISCONNECT 0x8E),
/// waits (bounded) until it has let go of the session, then exports the session, encoded.
pub struct HandOver {
    /// Weak: the broker holds the hook, which holds the node, which holds this.
    pub broker: Weak<Broker>,
    pub released: Arc<Released>,
    pub timeout: Duration,
    /// Returns of queues under way here (a hand-over waits for them to end).
    pub returns: Arc<super::returns::Returns>,
    /// Weak: the glue holds the claimer, which holds the node, which holds this.
    pub glue: Weak<super::hook::Glue>,
}

impl HandOver {
    /// The client's connection here closes (MQTT 5: DISCONNECT 0x8E) and lets go of its
    /// session, which stays here offline: after any return of the client's copy under way
    /// here has ended, both waits within one timeout (the claimer waits for the hand-over a
    /// half longer: then the flush's quarter). Nothing to do when no connection is attached
    /// (closed by an earlier request, or by the claim's apply).
    fn let_go(
        &self,
        client_id: String,
        epoch: u64,
    ) -> impl std::future::Future<Output = Result<(), Refusal>> + Send + 'static {
        let broker = self.broker.clone();
        let released = self.released.clone();
        let returns = self.returns.clone();
        let timeout = self.timeout;
        async move {
            let Some(broker) = broker.upgrade() else {
                return Err(Refusal::Unavailable("the broker is stopping".into()));
            };
            let waited = tokio::time::Instant::now() + timeout;
            while returns.is_returning(&client_id) && tokio::time::Instant::now() < waited {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Registered before the take-over, so the release cannot come unseen in between.
            let waiter = released.wait(&client_id);
            if broker.take_over(&client_id)
                && tokio::time::timeout_at(waited, waiter).await.is_err()
            {
                released.forget(&client_id);
                tracing::warn!(
                    client_id,
                    epoch,
                    "the taken-over connection did not let go in time"
                );
                return Err(Refusal::Unavailable(
                    "the connection here did not close in time".into(),
                ));
            }
            released.forget(&client_id);
            // Its client connected on the claimer's node: no will here, and no expiry while
            // the hand-over comes (a close, then the claimer's shell, then the hand-over).
            broker.hold_for_hand_over(&client_id);
            Ok(())
        }
    }
}

impl HandOverHandler for HandOver {
    fn hand_over(
        &self,
        client_id: String,
        epoch: u64,
        routes_at: Option<u64>,
    ) -> tern_cluster::node::HandOverFuture {
        let broker = self.broker.clone();
        let glue = self.glue.clone();
        let timeout = self.timeout;
        let let_go = self.let_go(client_id.clone(), epoch);
        Box::pin(async move {
            let_go.await?;
            let Some(broker) = broker.upgrade() else {
                return Err(Refusal::Unavailable("the broker is stopping".into()));
            };
            // A shell a claim of this node made (that claim lost to this later one): it
            // holds only what this node's routes brought meanwhile, which reached the
            // claimer's own copy too; it ends here instead of being handed over.
            if broker.end_shell(&client_id) {
                tracing::info!(
                    client_id,
                    epoch,
                    "claimed elsewhere meanwhile: the shell here ended"
                );
                return Ok(None);
            }
            let mut unflushed = None;
            let mut flushed_nodes = Vec::new();
            if let Some(index) = routes_at
                && let Some(glue) = glue.upgrade()
            {
                let wait = timeout / SHELL_SHARE;
                let flushed = flush::flush(&glue, &broker, index, wait).await;
                let whole = !flushed.table_late && flushed.unanswered.is_empty();
                let counter = if whole {
                    &glue.flushes.whole
                } else {
                    &glue.flushes.partial
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                flushed_nodes = flushed.flushed;
                if !flushed.unanswered.is_empty() {
                    unflushed = Some((glue, index, flushed.unanswered, wait));
                }
            }
            // A session that moved here recently: copies planned before its routes were
            // everywhere may have gone to its owner before this one (see
            // `Broker::seen_previous_owner`).
            let routes_from = broker.moved_in_at(&client_id).unwrap_or(0);
            let exported = match unflushed {
                Some((glue, index, unanswered, wait)) => flush::export_forwarding(
                    &glue, &broker, &client_id, epoch, index, unanswered, wait,
                ),
                None => flush::Exported {
                    transfer: broker.export_session(&client_id, Instant::now()),
                    address: None,
                    reached: Vec::new(),
                },
            };
            let Some(transfer) = exported.transfer else {
                return Ok(None);
            };
            let had = PreviousOwner {
                routes_from,
                flushed: flushed_nodes,
                reached: exported.reached,
            };
            let late = if exported.address.is_some() {
                flush::LateCopies::Follow
            } else {
                flush::LateCopies::None
            };
            match transfer.encode() {
                Ok(bytes) => {
                    tracing::info!(client_id, epoch, bytes = bytes.len(), "session handed over");
                    Ok(Some(flush::handed_over(late, &had, &bytes)))
                }
                Err(error) => {
                    // Kept here rather than lost: the claimer connects without it, and late
                    // copies come here again, not there.
                    tracing::warn!(client_id, %error, "session could not be encoded: kept here");
                    if let (Some(key), Some(glue)) = (exported.address, glue.upgrade()) {
                        glue.forwards.remove(&client_id, key);
                    }
                    let _ = broker.import_session(transfer, Instant::now());
                    Err(Refusal::Unavailable(format!(
                        "session could not be encoded: {error}"
                    )))
                }
            }
        })
    }

    /// Closes the client's connection here ahead of the hand-over (see [`HandOver::let_go`]).
    fn close(&self, client_id: String, epoch: u64) -> tern_cluster::node::CloseFuture {
        Box::pin(self.let_go(client_id, epoch))
    }

    /// A peer's side of a flush (see [`flush`]): once this node's route table is at
    /// `index`, and every local publish planned with an older one has queued its copies,
    /// the last message in the outbox to `from`.
    fn flush(&self, from: NodeId, index: u64) -> tern_cluster::node::FlushFuture {
        let broker = self.broker.clone();
        let glue = self.glue.clone();
        let wait = self.timeout / SHELL_SHARE;
        Box::pin(async move {
            let (Some(broker), Some(glue)) = (broker.upgrade(), glue.upgrade()) else {
                return Err(Refusal::Unavailable("the broker is stopping".into()));
            };
            if !glue
                .table_at(index, tokio::time::Instant::now() + wait)
                .await
            {
                return Err(Refusal::Unavailable(format!(
                    "log index {index} not applied here in time"
                )));
            }
            flush::barrier(&broker).await;
            // Without a data plane (yet), nothing was sent, and what was planned has run 0.
            let plane = glue.plane.get();
            Ok(tern_cluster::rpc::FlushAnswer {
                run: plane.map_or(0, |plane| plane.run()),
                last: plane.and_then(|plane| plane.outbox_tail(from)),
            })
        })
    }

    /// The owner's side of a return: `from` held a copy of the session of `client_id`,
    /// which this node owns with `epoch`. Its messages join the session here, durably, and
    /// `from` goes off the session's pending returns.
    fn take_return(
        &self,
        from: NodeId,
        client_id: String,
        epoch: u64,
        session: Vec<u8>,
    ) -> tern_cluster::node::ReturnFuture {
        let broker = self.broker.clone();
        let glue = self.glue.clone();
        let returns = self.returns.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let (Some(broker), Some(glue)) = (broker.upgrade(), glue.upgrade()) else {
                return Err(Refusal::Unavailable("the broker is stopping".into()));
            };
            let Some(claimer) = glue.claimer.get() else {
                return Err(Refusal::Unavailable("not ready".into()));
            };
            // The session here is a claim's shell, about to be replaced by what the previous
            // owner hands over (or ended, if it has nothing): the sender tries again later.
            if broker.has_shell(&client_id) {
                return Err(Refusal::Unavailable(
                    "the session here waits for its hand-over".into(),
                ));
            }
            let node = claimer.node.clone();
            let (current, listed) = {
                let state = node.state();
                let listed = state
                    .session(&client_id)
                    .is_some_and(|entry| entry.pending_returns.contains(&from));
                (state.owner(&client_id), listed)
            };
            match current {
                Some((Some(owner), current)) if owner == glue.node_id && current == epoch => {}
                // This node has not applied the claim yet: the sender tries again.
                Some((_, current)) if current < epoch => {
                    return Err(Refusal::Unavailable(
                        "the claim is not applied here yet".into(),
                    ));
                }
                _ => return Err(Refusal::Refused("not this session's owner".into())),
            }
            // Merged once: a return sent again (its answer lost, or late) is answered from
            // what was done; one under way makes the sender try again later.
            let key = (client_id.clone(), from, epoch);
            let seq = match returns.begin_take(&key, listed) {
                Take::Merged(seq) => seq,
                Take::Busy => {
                    return Err(Refusal::Unavailable("this return is being taken".into()));
                }
                // Off the list already: taken before (its `Returned` committed).
                Take::NotListed => return Ok(()),
                Take::Start => {
                    let merged = SessionTransfer::decode(&session)
                        .map_err(|error| Refusal::Refused(format!("unreadable session: {error}")))
                        .and_then(|transfer| {
                            let messages = transfer.queue.len() + transfer.inflight.len();
                            let seq = broker
                                .merge_returned(transfer, Instant::now())
                                .map_err(|error| Refusal::Unavailable(error.to_string()))?;
                            tracing::info!(
                                client_id,
                                from,
                                messages,
                                "cluster: queued messages returned here"
                            );
                            Ok(seq)
                        });
                    returns.end_take(&key, merged.as_ref().ok().copied());
                    merged?
                }
            };
            // Answered once the merge is durable (bounded: the sender's request waits
            // `timeout`; a store that does not commit makes it try again).
            if tokio::time::timeout(timeout / 2, glue.durable(seq))
                .await
                .is_err()
            {
                return Err(Refusal::Unavailable(
                    "the returned messages are not durable yet".into(),
                ));
            }
            // Off the pending returns, without waiting: if this is not committed, `from`
            // (holding nothing then) proposes it when it looks again.
            node.propose_later(Command::Returned {
                client_id,
                epoch,
                node: from,
            });
            Ok(())
        })
    }
}
