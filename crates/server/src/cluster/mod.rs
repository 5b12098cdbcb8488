//! This node's place in a cluster (`[cluster]`): the [`tern_cluster`] node, wired to the
//! core through its cluster hook. See docs/architecture.md ("A cluster").
//!
//! - `config`: the `[cluster]` table.
//! - `hook`: the core's hook (routes, plans, forwarding, retained changes).
//! - `routes`: every node's routes in a subscription index.
//! - `sync`: the task proposing this node's changes.
//! - `apply`: the task following what the cluster applied.
//! - `claim`: the claim of a client id at CONNECT, and the hand-over of its session.
//! - `payload`, `retained`: how messages cross between nodes and into the replicated state.
//! - `sink`: messages from other nodes into the core, acknowledged once durable.
//! - `flush`, `forwards`, `reached`: closing the window of a session's move between nodes.

mod apply;
mod claim;
mod config;
mod flush;
mod forwards;
mod hook;
mod lease;
mod payload;
mod reached;
mod retained;
mod returns;
mod routes;
mod sink;
mod sync;
mod tickets;
pub(crate) mod tls;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tern_broker::Broker;
use tern_broker::persist::{Change, Persistence};
use tern_cluster::link::{DataPlane, OutboxLimits};
use tern_cluster::{ClusterNode, ClusterStatus, NodeConfig, NodeError, NodeId, Timing};
use tokio::sync::watch;

pub use config::{ClusterConfig, ClusterTlsConfig, RelayMap};
pub use tls::ClusterTlsError;
pub(crate) use tls::load as load_tls;

/// A running cluster membership.
#[derive(Clone)]
pub struct Cluster {
    node: ClusterNode,
    glue: Arc<hook::Glue>,
    plane: Arc<DataPlane>,
    /// `[cluster] tls`'s files, read again with the listeners' (see `tls`).
    tls_files: Option<Arc<tls::ClusterTlsFiles>>,
}

impl Cluster {
    /// Starts this node's cluster part and plugs it into `broker`.
    pub(crate) async fn start(
        config: &ClusterConfig,
        data_dir: &Path,
        mqtt_addrs: Vec<String>,
        broker: Arc<Broker>,
        persistence: Option<Arc<dyn Persistence>>,
        (forwards, received): (
            Vec<tern_broker::persist::RecoveredForward>,
            Vec<(u64, u64, u64)>,
        ),
        stop: watch::Receiver<bool>,
    ) -> Result<Cluster, crate::server::ServerError> {
        // The links' transport first: a bad certificate file stops the start here.
        let (transport, tls_files) = tls::transport(config)?;
        // The end of each restored session's queue, before any message from another node
        // can reach it (see `returns`).
        let restored = broker.offline_sessions();
        let timing = Timing {
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            election_min: Duration::from_millis(config.election_timeout_ms),
            election_max: Duration::from_millis(config.election_timeout_ms * 2),
            proposal_timeout: Duration::from_millis(config.proposal_timeout_ms),
            snapshot_every: config
                .snapshot_every
                .unwrap_or(Timing::default().snapshot_every),
            ..Timing::default()
        };
        let bind = config.bind.parse().map_err(|_| {
            NodeError::Raft(format!("cluster.bind {:?} is not ADDR:PORT", config.bind))
        })?;
        let advertise = match &config.advertise {
            Some(advertise) => advertise.clone(),
            // A port 0 is resolved by the node when it binds.
            None if config.bind.ends_with(":0") => String::new(),
            None => config.bind.clone(),
        };
        let mqtt_addrs = if config.mqtt_addrs.is_empty() {
            mqtt_addrs
        } else {
            config.mqtt_addrs.clone()
        };
        let (node, events) = ClusterNode::start(NodeConfig {
            node_id: config.node_id,
            bind,
            advertise,
            seeds: config.seeds.clone(),
            // The Raft log and snapshots (a fjall database of their own); the data plane's
            // run file beside it.
            dir: data_dir.join(tern_store::CLUSTER_DIR).join("raft"),
            mqtt_addrs,
            timing,
            addr_map: config.relay.as_ref().map(|relay| relay.0.clone()),
            transport,
        })
        .await?;
        let glue = Arc::new(hook::Glue::new(config.node_id, persistence.clone()));
        let sink = Arc::new(sink::BrokerSink::new(
            broker.clone(),
            persistence.clone(),
            &glue,
        ));
        // Runs only grow: above the last one this node used (kept in a file beside the
        // Raft log), whatever the clock says after a restart.
        let cluster_dir = data_dir.join(tern_store::CLUSTER_DIR);
        let last_run = forwards
            .iter()
            .map(|forward| forward.run)
            .max()
            .unwrap_or(0)
            .max(read_run(&cluster_dir));
        let plane = DataPlane::start(
            node.clone(),
            sink,
            OutboxLimits {
                max_messages: config.outbox_max_messages,
                max_bytes: config.outbox_max_bytes,
            },
            stop.clone(),
            last_run,
        );
        if let Err(error) = write_run(&cluster_dir, plane.run()) {
            return Err(NodeError::Storage(format!(
                "cannot keep the data plane's run in {}: {error}",
                cluster_dir.display()
            ))
            .into());
        }
        // What this node forwarded before a restart and was not acknowledged goes first; what
        // it delivered from others is not delivered again.
        if !forwards.is_empty() {
            tracing::info!(
                messages = forwards.len(),
                "cluster: forwarding again what was not acknowledged before the restart"
            );
        }
        plane.restore_outbox(
            forwards
                .into_iter()
                .map(|forward| (forward.peer, forward.run, forward.seq, forward.payload))
                .collect(),
        );
        plane.restore_received(received);
        if let Some(persistence) = persistence {
            plane.set_ack_listener(Arc::new(move |peer, run, upto| {
                persistence.submit(Change::ForwardAcked { peer, run, upto });
            }));
        }
        let _ = glue.plane.set(plane.clone());
        let (returns, returns_wake) = returns::Returns::new(
            config.node_id,
            &broker,
            restored,
            cluster_dir.clone(),
            timing.proposal_timeout,
            Duration::from_millis(config.lease_ms),
        );
        let _ = glue.returns.set(returns.clone());
        tokio::spawn(returns::keep_cutoffs(returns.clone(), stop.clone()));
        tokio::spawn(forget_departed(
            returns.caught_up(),
            node.clone(),
            plane.clone(),
        ));
        tokio::spawn(returns::run(
            returns.clone(),
            node.clone(),
            returns_wake,
            stop.clone(),
        ));
        tokio::spawn(apply::run(
            glue.clone(),
            node.clone(),
            broker.clone(),
            events,
        ));
        tokio::spawn(sync::run(
            glue.clone(),
            node.clone(),
            broker.clone(),
            stop.clone(),
        ));
        tokio::spawn(sync::expire_tickets(
            glue.clone(),
            timing.proposal_timeout,
            stop.clone(),
        ));
        lease::attach(
            &node,
            &broker,
            &glue,
            Duration::from_millis(config.lease_ms),
        );
        tokio::spawn(lease::run(
            node.clone(),
            broker.clone(),
            Duration::from_millis(config.lease_ms),
            stop.clone(),
        ));
        let _ = glue.claimer.set(claim::Claimer {
            glue: Arc::downgrade(&glue),
            returns: returns.clone(),
            node: node.clone(),
            broker: Arc::downgrade(&broker),
            me: config.node_id,
            timeout: timing.proposal_timeout,
            runtime: tokio::runtime::Handle::current(),
            lease: Duration::from_millis(config.lease_ms),
            fences: Arc::default(),
            releasing: {
                let glue = Arc::downgrade(&glue);
                Arc::new(move |client_id: &str| {
                    glue.upgrade()
                        .is_some_and(|glue| glue.is_releasing(client_id))
                })
            },
        });
        node.set_hand_over_handler(Arc::new(claim::HandOver {
            broker: Arc::downgrade(&broker),
            released: glue.released.clone(),
            timeout: timing.proposal_timeout,
            returns,
            glue: Arc::downgrade(&glue),
        }));
        // Reports the routes the core already holds (restored sessions) to the hook.
        broker.set_cluster(glue.clone());
        let stopping = node.clone();
        let mut stop = stop;
        tokio::spawn(async move {
            let _ = stop.changed().await;
            stopping.shutdown().await;
        });
        tracing::info!(
            node_id = config.node_id,
            advertise = node.advertise(),
            "cluster node started"
        );
        Ok(Cluster {
            node,
            glue,
            plane,
            tls_files,
        })
    }

    /// `[cluster] tls`'s files and the material read from them, when the links use TLS.
    pub(crate) fn tls_files(&self) -> Option<&Arc<tls::ClusterTlsFiles>> {
        self.tls_files.as_ref()
    }

    pub fn node(&self) -> &ClusterNode {
        &self.node
    }

    /// At stop: writes what is left to write of the return cutoffs (see `returns`).
    pub(crate) fn write_kept(&self) {
        if let Some(returns) = self.glue.returns.get() {
            let _ = returns.write_now();
        }
    }

    /// The data plane (its counters and outboxes: metrics, the admin API).
    pub fn plane(&self) -> &Arc<DataPlane> {
        &self.plane
    }

    /// The node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        self.node.status()
    }

    /// Messages waiting for another node's acknowledgement, over all links.
    pub fn forward_pending(&self) -> usize {
        self.node
            .status()
            .nodes
            .iter()
            .map(|node| self.plane.pending(node.id))
            .sum()
    }

    /// Whether some other node's outbox here is congested (clients' QoS 1/2 messages with a
    /// copy for it are refused).
    pub fn outbox_congested(&self) -> bool {
        self.plane.any_congested()
    }

    /// How many times this node's lease was confirmed again after a gap, and whether it is
    /// still catching up with what was decided meanwhile (claims take the slow path until
    /// then; see `lease`).
    pub fn lease_gaps(&self) -> (u64, bool) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            *hook::lock(&self.glue.lease_gaps),
            self.glue.catching_up.load(Relaxed),
        )
    }

    /// Sessions handed over from this node after a flush: (whole, partial) (see
    /// docs/architecture.md, "A cluster: closing the move window").
    pub fn flushed_hand_overs(&self) -> (u64, u64) {
        let flushes = &self.glue.flushes;
        (
            flushes.whole.load(std::sync::atomic::Ordering::Relaxed),
            flushes.partial.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Late copies of moved sessions' messages this node sent on to their new owners, and
    /// the moved sessions it keeps a forwarding address for now (see docs/architecture.md,
    /// "A cluster: closing the move window").
    pub fn late_copies(&self) -> (u64, usize) {
        let forwards = &self.glue.forwards;
        (
            forwards.sent.load(std::sync::atomic::Ordering::Relaxed),
            forwards.len(),
        )
    }

    /// Messages not forwarded (a full outbox, a message that could not be encoded).
    pub fn not_forwarded(&self) -> u64 {
        self.glue
            .not_forwarded
            .load(std::sync::atomic::Ordering::Relaxed)
            + self
                .plane
                .counters
                .dropped
                .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The file that keeps the data plane's last run (see `tern_cluster::link`).
const RUN_FILE: &str = "data-plane-run";

/// Once this node has caught up after its start: the outboxes restored for nodes that are no
/// longer members go (removed while this node was down, their removal folded into a snapshot
/// this node installed rather than applied here as a command: see `apply`'s `RemoveNode`).
/// Without it, their stored copies would be kept and sent for ever.
async fn forget_departed(
    mut caught_up: watch::Receiver<bool>,
    node: ClusterNode,
    plane: Arc<DataPlane>,
) {
    if caught_up.wait_for(|caught_up| *caught_up).await.is_err() {
        return;
    }
    let departed: Vec<NodeId> = {
        let state = node.state();
        plane
            .peers()
            .into_iter()
            .filter(|peer| *peer != node.id() && state.node(*peer).is_none())
            .collect()
    };
    for peer in departed {
        plane.forget_peer(peer);
    }
}

/// The last run this node's data plane used (0: none).
fn read_run(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(RUN_FILE))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Keeps `run` durably before any message of it is sent: a restart after a clock step back
/// still numbers above it.
fn write_run(dir: &Path, run: u64) -> std::io::Result<()> {
    keep_file(dir, RUN_FILE, format!("{run}\n").as_bytes())
}

/// Replaces file `name` in `dir` with `contents` durably: written aside, synced, renamed into
/// place, the directory synced (a crash leaves the old file or the new one, never a part).
pub(crate) fn keep_file(dir: &Path, name: &str, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}
