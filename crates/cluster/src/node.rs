//! A running cluster node: its Raft, its links, how it forms or joins a cluster, and the
//! proposals of the server (batched).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLockReadGuard};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::command::{Command, Outcome, Request, Response};
use crate::network::{Network, Peers};
use crate::peer::{AddrMap, FrameHandler};
use crate::rpc::{ProbeAnswer, Refusal, RpcRequest, RpcResponse};
use crate::serve::{self, Answer, Handler};
use crate::state::ClusterState;
use crate::state_store::Applied;
use crate::transport::Transport;
use crate::types::{NodeId, TypeConfig};
use crate::wire::Frame;

/// How many commands one log entry carries at most.
const MAX_BATCH: usize = 1024;

/// What a node needs to run.
#[derive(Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Where other nodes' links are accepted.
    pub bind: SocketAddr,
    /// The address other nodes dial (default: `bind`).
    pub advertise: String,
    /// Cluster addresses of nodes to form a cluster with, or to join through.
    pub seeds: Vec<String>,
    /// Where the raft log and snapshots are kept (`<data-dir>/cluster`).
    pub dir: PathBuf,
    /// The MQTT addresses this node serves, as clients should dial them.
    pub mqtt_addrs: Vec<String>,
    pub timing: Timing,
    /// Maps a peer's advertised address to the one dialled (tests put relays between nodes).
    pub addr_map: Option<AddrMap>,
    /// Plain TCP or mutual TLS, for the links this node dials and those it accepts.
    pub transport: Transport,
}

/// The Raft timers and the proposal timeout.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// How long a proposal may wait for its commit before it is answered "unavailable".
    pub proposal_timeout: Duration,
    /// How often a node that is not a member yet probes its seeds.
    pub probe_interval: Duration,
    /// A snapshot every this many log entries; a fifth of it is kept behind the snapshot for
    /// followers that lag a little.
    pub snapshot_every: u64,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            heartbeat: Duration::from_millis(200),
            election_min: Duration::from_millis(1000),
            election_max: Duration::from_millis(2000),
            proposal_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_millis(500),
            snapshot_every: 5_000,
        }
    }
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cluster storage: {0}")]
    Storage(String),
    #[error("cannot listen for cluster links on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
}

/// Where the server takes the data plane's frames.
pub trait DataHandler: Send + Sync + 'static {
    /// A data frame from node `from`, on the link it dialled; `reply` sends frames back.
    fn data(&self, from: NodeId, frame: Frame, reply: &mpsc::Sender<Frame>);
    /// A frame on the link this node dialled to `from` (the peer's acknowledgements).
    fn answer(&self, from: NodeId, frame: Frame);
}

/// The answer of a hand-over: the session, encoded (none: no session there).
pub type HandOverFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<Vec<u8>>, Refusal>> + Send>>;

/// Where the server hands a session over to the node that claimed its client id.
pub trait HandOverHandler: Send + Sync + 'static {
    /// `client_id` was claimed by another node with `epoch` (applied here): close its
    /// connection and return the session, encoded (none: no session here).
    /// `routes_at`: see [`RpcRequest::HandOver`].
    fn hand_over(&self, client_id: String, epoch: u64, routes_at: Option<u64>) -> HandOverFuture;

    /// `client_id` was claimed by another node with `epoch` (applied here): close its
    /// connection, keeping the session here for the hand-over (see [`RpcRequest::Close`]).
    /// The default closes nothing: the hand-over that follows does it.
    fn close(&self, client_id: String, epoch: u64) -> CloseFuture {
        let _ = (client_id, epoch);
        Box::pin(async { Ok(()) })
    }

    /// Node `from` asks for a flush up to log index `index` (see [`RpcRequest::Flush`]).
    fn flush(&self, from: NodeId, index: u64) -> FlushFuture {
        let _ = (from, index);
        Box::pin(async { Err(Refusal::Refused("no flush here".into())) })
    }

    /// Node `from` returns what it held of the session of `client_id`, which this node owns
    /// with `epoch` (see [`RpcRequest::Return`]): merge it, make it durable, answer.
    fn take_return(
        &self,
        from: NodeId,
        client_id: String,
        epoch: u64,
        session: Vec<u8>,
    ) -> ReturnFuture {
        let _ = (from, client_id, epoch, session);
        Box::pin(async { Err(Refusal::Refused("returns are not taken here".into())) })
    }
}

/// The answer of a close: the connection closed (or none was attached).
pub type CloseFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Refusal>> + Send>>;

/// The answer of a flush: the node's run and the last message of its outbox to the asker.
pub type FlushFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<crate::rpc::FlushAnswer, Refusal>> + Send>,
>;

/// The answer of a return: merged and durable, or refused (the sender keeps its copy).
pub type ReturnFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Refusal>> + Send>>;

/// A node's view of the cluster, for `tern ctl cluster status`, metrics and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    pub role: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Every registered node with its addresses and whether this node's link to it is up.
    pub nodes: Vec<NodeStatus>,
    /// Milliseconds since the leader last heard from a quorum (on the leader only).
    pub millis_since_quorum_ack: Option<u64>,
    pub sessions: usize,
    pub routes: usize,
    pub retained: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub cluster_addr: String,
    pub mqtt_addrs: Vec<String>,
    pub voter: bool,
    pub linked: bool,
}

type Proposal = (Command, oneshot::Sender<Result<Outcome, Refusal>>);

struct Inner {
    config: NodeConfig,
    raft: Raft<TypeConfig>,
    peers: Arc<Peers>,
    state: crate::StateHandle,
    proposals: mpsc::Sender<Proposal>,
    data: Arc<OnceLock<Arc<dyn DataHandler>>>,
    hand_over: OnceLock<Arc<dyn HandOverHandler>>,
    /// When a leader last confirmed, after this node asked, that it still leads a quorum
    /// (the time of the asking; see [`ClusterNode::confirm_lease`]).
    confirmed: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// See [`ClusterNode::set_lease_listener`].
    lease_listener: OnceLock<Arc<dyn Fn(tokio::time::Instant) + Send + Sync>>,
    stop: watch::Sender<bool>,
}

/// A running cluster node (cheap to clone).
#[derive(Clone)]
pub struct ClusterNode {
    inner: Arc<Inner>,
}

impl ClusterNode {
    /// Opens the node's raft storage, listens on `bind` and starts forming or joining the
    /// cluster in the background. The receiver gets every applied batch of commands (and
    /// snapshot installs), in log order.
    pub async fn start(
        mut config: NodeConfig,
    ) -> Result<(ClusterNode, mpsc::UnboundedReceiver<Applied>), NodeError> {
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|error| NodeError::Bind {
                addr: config.bind,
                error,
            })?;
        // An advertised address left empty is the bound one (a port 0 resolved).
        if config.advertise.is_empty() {
            if let Ok(bound) = listener.local_addr() {
                config.bind = bound;
            }
            config.advertise = config.bind.to_string();
        }
        let (events_tx, events) = mpsc::unbounded_channel();
        let (log_store, state_store) = crate::open_storage(&config.dir, events_tx)
            .map_err(|error| NodeError::Storage(error.to_string()))?;
        let state = state_store.state();
        let data: Arc<OnceLock<Arc<dyn DataHandler>>> = Arc::new(OnceLock::new());
        let answers = data.clone();
        let on_frame: FrameHandler = Arc::new(move |from, frame| {
            if let Some(handler) = answers.get() {
                handler.answer(from, frame);
            }
        });
        let peers = Arc::new(Peers::new(
            config.node_id,
            Some(on_frame),
            config.addr_map.clone(),
            config.transport.clone(),
        ));
        let raft_config = openraft::Config {
            cluster_name: "tern".into(),
            heartbeat_interval: config.timing.heartbeat.as_millis() as u64,
            election_timeout_min: config.timing.election_min.as_millis() as u64,
            election_timeout_max: config.timing.election_max.as_millis() as u64,
            // Keep the log short: a snapshot every 5 000 entries (by default), 1 000 kept
            // behind it for followers that lag a little.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.timing.snapshot_every),
            max_in_snapshot_log_to_keep: config.timing.snapshot_every / 5,
            ..Default::default()
        }
        .validate()
        .map_err(|error| NodeError::Raft(error.to_string()))?;
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            Network {
                peers: peers.clone(),
            },
            log_store,
            state_store,
        )
        .await
        .map_err(|error| NodeError::Raft(error.to_string()))?;
        let (proposals, queue) = mpsc::channel(64 * MAX_BATCH);
        let (stop, stopped) = watch::channel(false);
        let node = ClusterNode {
            inner: Arc::new(Inner {
                config,
                raft,
                peers,
                state,
                proposals,
                data,
                hand_over: OnceLock::new(),
                confirmed: std::sync::Mutex::new(None),
                lease_listener: OnceLock::new(),
                stop,
            }),
        };
        let handler: Arc<dyn Handler> = Arc::new(node.clone());
        let transport = node.inner.config.transport.clone();
        tokio::spawn(serve::serve(listener, transport, handler, stopped.clone()));
        tokio::spawn(node.clone().propose_loop(queue, stopped.clone()));
        tokio::spawn(node.clone().membership_loop(stopped));
        Ok((node, events))
    }

    pub fn id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// The address links are accepted on (the bound one: a port 0 resolved).
    pub fn advertise(&self) -> &str {
        &self.inner.config.advertise
    }

    /// Sets where data frames go (once).
    pub fn set_data_handler(&self, handler: Arc<dyn DataHandler>) {
        let _ = self.inner.data.set(handler);
    }

    /// Sets who hands sessions over (once).
    pub fn set_hand_over_handler(&self, handler: Arc<dyn HandOverHandler>) {
        let _ = self.inner.hand_over.set(handler);
    }

    /// Asks `node`, the previous owner of `client_id`, to close its connection and hand its
    /// session over, now that this node claimed it with `epoch`.
    pub async fn request_hand_over(
        &self,
        node: NodeId,
        client_id: &str,
        epoch: u64,
        routes_at: Option<u64>,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let request = RpcRequest::HandOver {
            client_id: client_id.to_owned(),
            epoch,
            routes_at,
        };
        match self.call_node(node, &request, timeout).await? {
            RpcResponse::HandedOver(result) => result,
            _ => Err(Refusal::Unavailable("unexpected answer".into())),
        }
    }

    /// Asks `node`, the previous owner of `client_id`, to close the client's connection now
    /// that this node claimed it with `epoch` (see [`RpcRequest::Close`]).
    pub async fn request_close(
        &self,
        node: NodeId,
        client_id: &str,
        epoch: u64,
        timeout: Duration,
    ) -> Result<(), Refusal> {
        let request = RpcRequest::Close {
            client_id: client_id.to_owned(),
            epoch,
        };
        match self.call_node(node, &request, timeout).await? {
            RpcResponse::Closed(result) => result,
            _ => Err(Refusal::Unavailable("unexpected answer".into())),
        }
    }

    /// Asks `node` to flush its outbox to this node up to log index `index` (see
    /// [`RpcRequest::Flush`]).
    pub async fn request_flush(
        &self,
        node: NodeId,
        index: u64,
        timeout: Duration,
    ) -> Result<crate::rpc::FlushAnswer, Refusal> {
        match self
            .call_node(node, &RpcRequest::Flush { index }, timeout)
            .await?
        {
            RpcResponse::Flushed(result) => result,
            _ => Err(Refusal::Unavailable("unexpected answer".into())),
        }
    }

    /// "Return the queue": sends `node`, the owner of `client_id` with `epoch`, what this
    /// node held of the session, encoded.
    pub async fn request_return(
        &self,
        node: NodeId,
        client_id: &str,
        epoch: u64,
        session: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), Refusal> {
        let request = RpcRequest::Return {
            client_id: client_id.to_owned(),
            epoch,
            session,
        };
        match self.call_node(node, &request, timeout).await? {
            RpcResponse::Returned(result) => result,
            _ => Err(Refusal::Unavailable("unexpected answer".into())),
        }
    }

    /// One request to registered node `node` over its link, answered within `timeout`.
    async fn call_node(
        &self,
        node: NodeId,
        request: &RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, Refusal> {
        let Some(addr) = self.node_addr(node) else {
            return Err(Refusal::Unavailable(format!("node {node} unknown")));
        };
        self.inner
            .peers
            .get(node, &addr)
            .call(request, timeout)
            .await
            .map_err(|error| Refusal::Unavailable(error.to_string()))
    }

    /// The replicated state as this node applied it.
    pub fn state(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.inner.state.read()
    }

    /// The raft instance (tests, metrics).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    /// Proposes one command; batched with others waiting. `Err` when the cluster did not
    /// commit it in time (no leader, no quorum): retryable.
    pub async fn propose(&self, command: Command) -> Result<Outcome, Refusal> {
        let (tx, rx) = oneshot::channel();
        if self.inner.proposals.send((command, tx)).await.is_err() {
            return Err(Refusal::Unavailable("node stopping".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(Refusal::Unavailable("node stopping".into())))
    }

    /// Queues a command without waiting for it (routes): `false` if the queue is full.
    pub fn propose_later(&self, command: Command) -> bool {
        let (tx, _rx) = oneshot::channel();
        self.inner.proposals.try_send((command, tx)).is_ok()
    }

    /// The generation of this node's link to `node`, dialling it if needed (see
    /// [`crate::peer::Peer::generation`]); `None` if it cannot be reached.
    pub async fn link_generation(&self, node: NodeId) -> Option<u64> {
        // The link made before, without looking the address up again (once per message).
        if let Some(peer) = self.inner.peers.existing(node) {
            return peer.generation().await;
        }
        let addr = self.node_addr(node)?;
        self.inner.peers.get(node, &addr).generation().await
    }

    /// Sends a data frame to `node` on the link's connection `generation`; `false` if that
    /// connection is gone or its queue is full.
    pub async fn send_data(&self, node: NodeId, generation: u64, frame: Frame) -> bool {
        match self.inner.peers.existing(node) {
            Some(peer) => peer.send_on(generation, frame).await,
            None => false,
        }
    }

    /// Drops this node's connection `generation` to `node` (it went silent); the next use of
    /// the link dials again.
    pub async fn drop_link(&self, node: NodeId, generation: u64) {
        if let Some(peer) = self.inner.peers.existing(node) {
            peer.disconnect_generation(generation).await;
        }
    }

    /// Whether this node's link to `node` is up.
    pub fn linked(&self, node: NodeId) -> bool {
        self.inner
            .peers
            .existing(node)
            .is_some_and(|peer| peer.is_connected())
    }

    /// The cluster address of a member or registered node.
    pub fn node_addr(&self, node: NodeId) -> Option<String> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        if let Some(member) = metrics.membership_config.membership().get_node(&node) {
            return Some(member.addr.clone());
        }
        self.state()
            .node(node)
            .map(|info| info.cluster_addr.clone())
    }

    /// The node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let state = self.state();
        let mut nodes: BTreeMap<NodeId, NodeStatus> = BTreeMap::new();
        for (id, member) in membership.nodes() {
            nodes.insert(
                *id,
                NodeStatus {
                    id: *id,
                    cluster_addr: member.addr.clone(),
                    mqtt_addrs: Vec::new(),
                    voter: voters.contains(id),
                    linked: *id == self.id() || self.linked(*id),
                },
            );
        }
        for (id, info) in state.nodes() {
            let entry = nodes.entry(id).or_insert_with(|| NodeStatus {
                id,
                cluster_addr: info.cluster_addr.clone(),
                mqtt_addrs: Vec::new(),
                voter: false,
                linked: false,
            });
            entry.mqtt_addrs = info.mqtt_addrs.clone();
        }
        ClusterStatus {
            node_id: self.id(),
            role: role.into(),
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            last_applied: metrics.last_applied.map(|id| id.index),
            voters: voters.into_iter().collect(),
            learners,
            nodes: nodes.into_values().collect(),
            millis_since_quorum_ack: metrics.millis_since_quorum_ack,
            sessions: state.session_count(),
            routes: state.route_count(),
            retained: state.retained_count(),
        }
    }

    /// Asks the leader (this node, or the one it knows) to confirm it still leads a quorum
    /// (a round of heartbeats, openraft's linearizable read); on success the lease counts from
    /// the moment of the asking. A leader cut off from its quorum cannot confirm, so neither
    /// it nor the followers still in touch with it keep a lease.
    pub async fn confirm_lease(&self, timeout: Duration) -> bool {
        let asked = tokio::time::Instant::now();
        let confirmed = tokio::time::timeout(timeout, async {
            match self.leader() {
                Some((leader, _)) if leader == self.id() => {
                    self.inner.raft.ensure_linearizable().await.is_ok()
                }
                Some(_) => matches!(
                    self.to_leader(RpcRequest::LeaseCheck).await,
                    Ok(RpcResponse::LeaseConfirmed(true))
                ),
                None => false,
            }
        })
        .await
        .unwrap_or(false);
        if confirmed {
            self.lease_confirmed_at(asked);
        }
        confirmed
    }

    /// A leader had its quorum after `asked` (keeps the latest, and tells the listener).
    fn lease_confirmed_at(&self, asked: tokio::time::Instant) {
        let mut confirmed = self
            .inner
            .confirmed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if confirmed.is_some_and(|at| at >= asked) {
            return;
        }
        *confirmed = Some(asked);
        drop(confirmed);
        if let Some(listener) = self.inner.lease_listener.get() {
            listener(asked);
        }
    }

    /// Calls `listener` with the time of the asking each time a leader confirms its quorum
    /// to this node later than before (see [`ClusterNode::confirm_lease`]; a commit of this
    /// node's proposals counts), before the confirmation's waiter goes on: a client
    /// connection made on the strength of it finds the lease extended. Set once.
    pub fn set_lease_listener(&self, listener: Arc<dyn Fn(tokio::time::Instant) + Send + Sync>) {
        let _ = self.inner.lease_listener.set(listener);
    }

    /// Whether a leader confirmed its quorum (see [`ClusterNode::confirm_lease`]) less than
    /// `lease` ago. A node without it cannot tell whether another node took its clients' ids
    /// meanwhile.
    pub fn holds_lease(&self, lease: Duration) -> bool {
        self.lease_until(lease)
            .is_some_and(|until| tokio::time::Instant::now() < until)
    }

    /// Until when this node holds its lease of length `lease` (see
    /// [`ClusterNode::holds_lease`]): none before a leader first confirmed its quorum.
    pub fn lease_until(&self, lease: Duration) -> Option<tokio::time::Instant> {
        let confirmed = *self
            .inner
            .confirmed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        confirmed.map(|at| at + lease)
    }

    /// Whether this node is a member (voter or learner) of an initialized cluster.
    pub fn is_member(&self) -> bool {
        let metrics = self.inner.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .get_node(&self.id())
            .is_some()
    }

    /// Asks the cluster to remove `node` (this one or another): carried out by the leader.
    pub async fn remove_node(&self, node: NodeId) -> Result<(), Refusal> {
        let request = RpcRequest::Leave { node };
        match self.to_leader(request).await? {
            RpcResponse::Left(result) => result,
            _ => Err(Refusal::Unavailable("unexpected answer".into())),
        }
    }

    /// Joins the cluster a node at `addr` belongs to (this node must not be a member yet).
    pub async fn join_via(&self, addr: &str) -> Result<(), Refusal> {
        if self.is_member() {
            return Err(Refusal::Refused("already a member of a cluster".into()));
        }
        self.join_at(addr).await
    }

    /// Stops the node's raft and links.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let _ = self.inner.raft.shutdown().await;
    }

    // ---- internals ----

    fn mqtt_addrs(&self) -> Vec<String> {
        self.inner.config.mqtt_addrs.clone()
    }

    fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .clone();
        Some((leader, addr))
    }

    /// Sends a request to the leader (handling it here if this node leads).
    async fn to_leader(&self, request: RpcRequest) -> Result<RpcResponse, Refusal> {
        let timeout = self.inner.config.timing.proposal_timeout;
        let Some((leader, addr)) = self.leader() else {
            return Err(Refusal::Unavailable("no leader known".into()));
        };
        if leader == self.id() {
            return Ok(self.answer(self.id(), request).await);
        }
        self.inner
            .peers
            .get(leader, &addr)
            .call(&request, timeout)
            .await
            .map_err(|error| Refusal::Unavailable(error.to_string()))
    }

    async fn join_at(&self, addr: &str) -> Result<(), Refusal> {
        let timeout = self.inner.config.timing.proposal_timeout * 4;
        let request = RpcRequest::Join {
            node: self.id(),
            cluster_addr: self.inner.config.advertise.clone(),
            mqtt_addrs: self.mqtt_addrs(),
        };
        let mut target = addr.to_owned();
        // Follow "not the leader" answers a few times.
        for _ in 0..4 {
            let link = self.inner.peers.probe_link(&target);
            let answer = link
                .call(&request, timeout)
                .await
                .map_err(|error| Refusal::Unavailable(error.to_string()));
            link.disconnect().await;
            match answer? {
                RpcResponse::Joined(Ok(())) => return Ok(()),
                RpcResponse::Joined(Err(Refusal::NotLeader(Some((_, leader_addr))))) => {
                    target = leader_addr;
                }
                RpcResponse::Joined(Err(refusal)) => return Err(refusal),
                _ => return Err(Refusal::Unavailable("unexpected answer".into())),
            }
        }
        Err(Refusal::Unavailable("no leader found".into()))
    }

    /// Takes proposals from the queue and commits them in batches: whatever waits while one
    /// batch is in flight goes in the next.
    async fn propose_loop(
        self,
        mut queue: mpsc::Receiver<Proposal>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let first = tokio::select! {
                first = queue.recv() => first,
                _ = stop.changed() => return,
            };
            let Some(first) = first else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let (commands, waiters): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
            let request = Request { commands };
            let asked = tokio::time::Instant::now();
            let result = tokio::time::timeout(
                self.inner.config.timing.proposal_timeout,
                self.commit(request),
            )
            .await
            .unwrap_or_else(|_| Err(Refusal::Unavailable("not committed in time".into())));
            match result {
                Ok(response) => {
                    // Committed: a leader had its quorum after `asked`, as a lease
                    // confirmation proves.
                    self.lease_confirmed_at(asked);
                    let mut outcomes = response.outcomes.into_iter();
                    for waiter in waiters {
                        let outcome = outcomes
                            .next()
                            .ok_or_else(|| Refusal::Unavailable("no outcome".into()));
                        let _ = waiter.send(outcome);
                    }
                }
                Err(refusal) => {
                    tracing::debug!(%refusal, "cluster proposal not committed");
                    for waiter in waiters {
                        let _ = waiter.send(Err(refusal.clone()));
                    }
                }
            }
        }
    }

    /// Commits one request: here if this node leads, else through the leader.
    async fn commit(&self, request: Request) -> Result<Response, Refusal> {
        match self.inner.raft.client_write(request.clone()).await {
            Ok(written) => Ok(written.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                let Some(leader) = forward.leader_id else {
                    return Err(Refusal::Unavailable("no leader known".into()));
                };
                let addr = match forward.leader_node {
                    Some(node) => node.addr,
                    None => self
                        .node_addr(leader)
                        .ok_or_else(|| Refusal::Unavailable("leader address unknown".into()))?,
                };
                let answer = self
                    .inner
                    .peers
                    .get(leader, &addr)
                    .call(
                        &RpcRequest::Propose(request),
                        self.inner.config.timing.proposal_timeout,
                    )
                    .await
                    .map_err(|error| Refusal::Unavailable(error.to_string()))?;
                match answer {
                    RpcResponse::Proposed(result) => result,
                    _ => Err(Refusal::Unavailable("unexpected answer".into())),
                }
            }
            Err(error) => Err(Refusal::Unavailable(error.to_string())),
        }
    }

    /// Until this node is a member: probe the seeds; join a cluster one of them belongs to,
    /// or form one with them (see docs/architecture.md, "Forming and joining"). Then, on the
    /// leader, keep the number of voters at the target as nodes come and go; on every node,
    /// make sure its own registration and routes are in the state.
    async fn membership_loop(self, mut stop: watch::Receiver<bool>) {
        let interval = self.inner.config.timing.probe_interval;
        loop {
            if *stop.borrow() {
                return;
            }
            if !self.is_member()
                && let Err(error) = self.form_or_join().await
            {
                tracing::debug!(%error, "cluster: not a member yet");
            }
            if self.is_member() {
                self.register_self().await;
            }
            if self.leader().is_some_and(|(leader, _)| leader == self.id()) {
                self.balance_voters().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn form_or_join(&self) -> Result<(), Refusal> {
        let seeds: Vec<String> = self
            .inner
            .config
            .seeds
            .iter()
            .filter(|seed| **seed != self.inner.config.advertise)
            .cloned()
            .collect();
        if seeds.is_empty() {
            // Alone: a cluster of one, which others join later.
            return self.initialize(BTreeMap::new()).await;
        }
        let timeout = self
            .inner
            .config
            .timing
            .probe_interval
            .max(Duration::from_millis(500));
        let mut answers = Vec::new();
        for seed in &seeds {
            let link = self.inner.peers.probe_link(seed);
            let answer = link.call(&RpcRequest::Probe, timeout).await;
            link.disconnect().await;
            if let Ok(RpcResponse::Probe(answer)) = answer {
                answers.push((seed.clone(), answer));
            }
        }
        // A seed in a cluster: join it.
        if let Some((seed, answer)) = answers.iter().find(|(_, answer)| answer.initialized) {
            let target = answer
                .leader
                .as_ref()
                .map(|(_, addr)| addr.clone())
                .unwrap_or_else(|| seed.clone());
            return self.join_at(&target).await;
        }
        // None is: the lowest id forms the cluster once it has heard from every seed.
        if answers.len() < seeds.len() {
            return Err(Refusal::Unavailable(format!(
                "{} of {} seeds answered",
                answers.len(),
                seeds.len()
            )));
        }
        if answers.iter().any(|(_, answer)| answer.node < self.id()) {
            return Err(Refusal::Unavailable(
                "waiting for the lowest node id to form the cluster".into(),
            ));
        }
        let members = answers
            .into_iter()
            .map(|(seed, answer)| (answer.node, seed))
            .collect();
        self.initialize(members).await
    }

    /// Forms a cluster of this node and `others` (id -> cluster address): the first voters
    /// (up to the target) by id, the rest join as learners by themselves.
    async fn initialize(&self, others: BTreeMap<NodeId, String>) -> Result<(), Refusal> {
        let mut members: BTreeMap<NodeId, BasicNode> = others
            .into_iter()
            .map(|(id, addr)| (id, BasicNode { addr }))
            .collect();
        members.insert(
            self.id(),
            BasicNode {
                addr: self.inner.config.advertise.clone(),
            },
        );
        let target = voter_target(members.len());
        let voters: BTreeMap<NodeId, BasicNode> = members.into_iter().take(target).collect();
        tracing::info!(voters = ?voters.keys().collect::<Vec<_>>(), "cluster: forming");
        self.inner
            .raft
            .initialize(voters)
            .await
            .map_err(|error| Refusal::Unavailable(error.to_string()))
    }

    /// Proposes this node's registration if the state lacks it or holds other addresses.
    async fn register_self(&self) {
        let wanted = (self.inner.config.advertise.clone(), self.mqtt_addrs());
        let registered = self
            .state()
            .node(self.id())
            .map(|info| (info.cluster_addr.clone(), info.mqtt_addrs.clone()));
        if registered.as_ref() == Some(&wanted) {
            return;
        }
        let command = Command::RegisterNode {
            node: self.id(),
            cluster_addr: wanted.0,
            mqtt_addrs: wanted.1,
        };
        if let Err(refusal) = self.propose(command).await {
            tracing::debug!(%refusal, "cluster: registration not committed yet");
        }
    }

    /// On the leader: promotes learners while there are fewer voters than the target.
    async fn balance_voters(&self) {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let target = voter_target(voters.len() + learners.len());
        if voters.len() >= target || learners.is_empty() {
            return;
        }
        let promote: BTreeSet<NodeId> = learners
            .into_iter()
            .filter(|id| self.linked(*id))
            .take(target - voters.len())
            .collect();
        if promote.is_empty() {
            return;
        }
        tracing::info!(?promote, "cluster: promoting learners to voters");
        if let Err(error) = self
            .inner
            .raft
            .change_membership(ChangeMembers::AddVoterIds(promote), true)
            .await
        {
            tracing::warn!(%error, "cluster: promotion failed");
        }
    }

    /// Answers a request (from another node, or this one for itself).
    async fn answer(&self, from: NodeId, request: RpcRequest) -> RpcResponse {
        let raft = &self.inner.raft;
        match request {
            RpcRequest::AppendEntries(rpc) => {
                RpcResponse::AppendEntries(raft.append_entries(rpc).await)
            }
            RpcRequest::Vote(rpc) => RpcResponse::Vote(raft.vote(rpc).await),
            RpcRequest::InstallSnapshot(rpc) => {
                RpcResponse::InstallSnapshot(raft.install_snapshot(rpc).await)
            }
            RpcRequest::Propose(request) => {
                let result = match raft.client_write(request).await {
                    Ok(written) => Ok(written.data),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                        Err(Refusal::NotLeader(
                            forward
                                .leader_id
                                .zip(forward.leader_node.map(|node| node.addr)),
                        ))
                    }
                    Err(error) => Err(Refusal::Unavailable(error.to_string())),
                };
                RpcResponse::Proposed(result)
            }
            RpcRequest::Probe => RpcResponse::Probe(ProbeAnswer {
                node: self.id(),
                initialized: self.is_member(),
                leader: self.leader(),
            }),
            RpcRequest::Join {
                node,
                cluster_addr,
                mqtt_addrs,
            } => RpcResponse::Joined(self.admit(from, node, cluster_addr, mqtt_addrs).await),
            RpcRequest::Leave { node } => RpcResponse::Left(self.dismiss(node).await),
            RpcRequest::LeaseCheck => {
                RpcResponse::LeaseConfirmed(raft.ensure_linearizable().await.is_ok())
            }
            RpcRequest::HandOver {
                client_id,
                epoch,
                routes_at,
            } => RpcResponse::HandedOver(self.hand_over(from, client_id, epoch, routes_at).await),
            RpcRequest::Close { client_id, epoch } => {
                RpcResponse::Closed(self.close(from, client_id, epoch).await)
            }
            RpcRequest::Flush { index } => RpcResponse::Flushed(match self.inner.hand_over.get() {
                Some(handler) => handler.flush(from, index).await,
                None => Err(Refusal::Unavailable("not ready".into())),
            }),
            RpcRequest::Return {
                client_id,
                epoch,
                session,
            } => RpcResponse::Returned(match self.inner.hand_over.get() {
                Some(handler) => handler.take_return(from, client_id, epoch, session).await,
                None => Err(Refusal::Unavailable("not ready".into())),
            }),
        }
    }

    /// The previous owner's side of a take-over: once this node has applied the claim (it
    /// may lag the claimer a little), the server closes the connection and exports the
    /// session. A claim this node cannot see applied in time is refused (the claimer asks
    /// again or goes on without the session).
    async fn hand_over(
        &self,
        from: NodeId,
        client_id: String,
        epoch: u64,
        routes_at: Option<u64>,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        self.claim_applied(from, &client_id, epoch).await?;
        match self.inner.hand_over.get() {
            Some(handler) => handler.hand_over(client_id, epoch, routes_at).await,
            None => Ok(None),
        }
    }

    /// The previous owner's side of [`RpcRequest::Close`], once the claim is applied here.
    async fn close(&self, from: NodeId, client_id: String, epoch: u64) -> Result<(), Refusal> {
        self.claim_applied(from, &client_id, epoch).await?;
        match self.inner.hand_over.get() {
            Some(handler) => handler.close(client_id, epoch).await,
            None => Ok(()),
        }
    }

    /// Waits (up to the proposal timeout) until this node has applied the claim of
    /// `client_id` by `from` with `epoch`; refused if the id was claimed again since.
    async fn claim_applied(
        &self,
        from: NodeId,
        client_id: &str,
        epoch: u64,
    ) -> Result<(), Refusal> {
        let deadline = tokio::time::Instant::now() + self.inner.config.timing.proposal_timeout;
        loop {
            let current = self.state().owner(client_id);
            match current {
                Some((owner, current_epoch)) if current_epoch >= epoch => {
                    if owner != Some(from) || current_epoch != epoch {
                        return Err(Refusal::Refused(
                            "stale: the client id was claimed again since".into(),
                        ));
                    }
                    break;
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Refusal::Unavailable(
                    "the claim is not applied here yet".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// On the leader: adds a node as a learner (it catches up), registers it; promotion to
    /// voter follows in `balance_voters`.
    async fn admit(
        &self,
        _from: NodeId,
        node: NodeId,
        cluster_addr: String,
        mqtt_addrs: Vec<String>,
    ) -> Result<(), Refusal> {
        match self.leader() {
            Some((leader, _)) if leader == self.id() => {}
            other => return Err(Refusal::NotLeader(other)),
        }
        if node == 0 {
            return Err(Refusal::Refused("node id 0 is not allowed".into()));
        }
        tracing::info!(node, %cluster_addr, "cluster: admitting a node");
        self.inner
            .raft
            .add_learner(
                node,
                BasicNode {
                    addr: cluster_addr.clone(),
                },
                true,
            )
            .await
            .map_err(|error| Refusal::Unavailable(error.to_string()))?;
        self.propose(Command::RegisterNode {
            node,
            cluster_addr,
            mqtt_addrs,
        })
        .await?;
        Ok(())
    }

    /// On the leader: takes a node out of the membership (a learner is promoted first if the
    /// voters would fall below the target) and out of the state.
    async fn dismiss(&self, node: NodeId) -> Result<(), Refusal> {
        match self.leader() {
            Some((leader, _)) if leader == self.id() => {}
            other => return Err(Refusal::NotLeader(other)),
        }
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if membership.get_node(&node).is_none() && self.state().node(node).is_none() {
            return Err(Refusal::Refused(format!("node {node} is not a member")));
        }
        if voters.contains(&node) {
            if voters.len() == 1 {
                return Err(Refusal::Refused(
                    "the only voter cannot leave: add another node first".into(),
                ));
            }
            let spare: Option<NodeId> = membership
                .learner_ids()
                .find(|id| *id != node && self.linked(*id));
            if let Some(spare) = spare {
                self.inner
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([spare])), true)
                    .await
                    .map_err(|error| Refusal::Unavailable(error.to_string()))?;
            }
            self.inner
                .raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node])), false)
                .await
                .map_err(|error| Refusal::Unavailable(error.to_string()))?;
        }
        let still_learner = self
            .inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&node)
            .is_some();
        if still_learner {
            self.inner
                .raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node])), false)
                .await
                .map_err(|error| Refusal::Unavailable(error.to_string()))?;
        }
        self.propose(Command::RemoveNode { node }).await?;
        self.inner.peers.remove(node);
        Ok(())
    }
}

/// How many voters a cluster of `nodes` keeps: 1 for one or two nodes (a second voter would
/// make either node's failure stop the cluster), 3 from three, 5 from five.
pub fn voter_target(nodes: usize) -> usize {
    match nodes {
        0..=2 => 1,
        3 | 4 => 3,
        _ => 5,
    }
}

impl Handler for ClusterNode {
    fn rpc(&self, from: NodeId, request: RpcRequest) -> Answer {
        let node = self.clone();
        Box::pin(async move { node.answer(from, request).await })
    }

    fn data(&self, from: NodeId, frame: Frame, reply: &mpsc::Sender<Frame>) {
        if let Some(handler) = self.inner.data.get() {
            handler.data(from, frame, reply);
        }
    }
}
