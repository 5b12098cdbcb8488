//! The cluster's state machine: [`ClusterState`], the replicated metadata every node holds a
//! full copy of, and [`ClusterState::apply`], the one way it changes.
//!
//! `apply` is a pure function of the state and the command: no clock, no I/O, no randomness,
//! no panic on any input, so replicas that applied the same log hold equal states. Every map
//! is ordered (`BTreeMap`/`BTreeSet`): equal states also serialize to equal bytes, which makes
//! a snapshot a deterministic function of its last log id.
//!
//! Invariants `apply` keeps (checked by the property tests in `tests/state_machine.rs`):
//! - every node named by a route, a shared-group membership or a session's owner is registered;
//! - no route or shared group has an empty node set (the key goes with its last node);
//! - the epochs a client id is given only grow, even across a release (see `epoch_floor`);
//! - a session's pending returns name registered nodes other than its owner, and only
//!   persistent sessions have any.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{Command, Outcome, Request, Response, RetainedMessage, SubscriptionOptions};
use crate::types::NodeId;

/// A registered node: where other nodes reach it and where clients may connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub cluster_addr: String,
    pub mqtt_addrs: Vec<String>,
}

/// A client id's entry in the session registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    /// The node holding the session's connection, or `None` once that node was removed from
    /// the cluster (the session waits for a claim elsewhere).
    pub owner: Option<NodeId>,
    /// The fencing token: the current claim's epoch. Owner-side commands carry it and are
    /// refused when it is no longer the current one.
    pub epoch: u64,
    /// Whether the session outlives its connection.
    pub persistent: bool,
    /// Durable subscriptions (persistent sessions only; always empty otherwise).
    pub subscriptions: BTreeMap<String, SubscriptionOptions>,
    /// Nodes that may still hold a queue for this session (they owned it and may not have
    /// handed it over): each returns what it holds to the owner, then `Returned` takes it
    /// off. Persistent sessions only; never the owner. Absent in older serializations.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub pending_returns: BTreeSet<NodeId>,
}

/// The routes and shared-group memberships one node holds: what [`Command::SyncRoutes`]
/// carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRoutes {
    pub filters: Vec<String>,
    /// `(group, filter)` pairs.
    pub shared: Vec<(String, String)>,
}

/// `(group, filter)` → the nodes with a member of `$share/{group}/{filter}`.
type SharedGroups = BTreeMap<(String, String), BTreeSet<NodeId>>;

/// The replicated metadata of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    nodes: BTreeMap<NodeId, NodeInfo>,
    sessions: BTreeMap<String, SessionEntry>,
    /// Filter → nodes with at least one local subscriber for it. Never an empty set.
    routes: BTreeMap<String, BTreeSet<NodeId>>,
    /// `(group, filter)` → nodes with at least one member of `$share/{group}/{filter}`.
    /// Never an empty set. A list in the serialization (JSON keys are strings).
    #[serde(with = "shared_entries")]
    shared: SharedGroups,
    /// Topic → its retained message.
    retained: BTreeMap<String, RetainedMessage>,
    /// The highest epoch a released session held: a client id claimed afresh starts above
    /// it, so a fencing token is never reused for a client id (a late command of a released
    /// session cannot pass for one of its successor).
    epoch_floor: u64,
    /// Nodes removed from the cluster: their ids are never registered again (a removed node
    /// still running would otherwise register itself back from its stale view).
    #[serde(default)]
    removed: BTreeSet<NodeId>,
}

impl ClusterState {
    /// Applies every command of `request` in order and answers one outcome per command.
    pub fn apply_request(&mut self, request: &Request) -> Response {
        Response {
            outcomes: request.commands.iter().map(|c| self.apply(c)).collect(),
        }
    }

    /// Applies one command. Refused commands ([`Outcome::StaleEpoch`],
    /// [`Outcome::UnknownNode`]) change nothing.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        match command {
            Command::RegisterNode {
                node,
                cluster_addr,
                mqtt_addrs,
            } => {
                if self.removed.contains(node) {
                    return Outcome::UnknownNode;
                }
                self.nodes.insert(
                    *node,
                    NodeInfo {
                        cluster_addr: cluster_addr.clone(),
                        mqtt_addrs: mqtt_addrs.clone(),
                    },
                );
                Outcome::Done
            }
            Command::RemoveNode { node } => self.remove_node(*node),
            Command::Claim {
                client_id,
                node,
                persistent,
                clean_start,
            } => self.claim(client_id, *node, *persistent, *clean_start),
            Command::Barrier { .. } => Outcome::Done,
            Command::Returned {
                client_id,
                epoch,
                node,
            } => match self.fenced(client_id, *epoch) {
                Ok(session) => {
                    session.pending_returns.remove(node);
                    Outcome::Done
                }
                Err(refused) => refused,
            },
            Command::Release { client_id, epoch } => match self.fenced(client_id, *epoch) {
                Ok(_) => {
                    self.sessions.remove(client_id);
                    self.epoch_floor = self.epoch_floor.max(*epoch);
                    Outcome::Done
                }
                Err(refused) => refused,
            },
            Command::Subscribe {
                client_id,
                epoch,
                filter,
                options,
            } => match self.fenced(client_id, *epoch) {
                Ok(session) => {
                    if session.persistent {
                        session.subscriptions.insert(filter.clone(), *options);
                    }
                    Outcome::Done
                }
                Err(refused) => refused,
            },
            Command::Unsubscribe {
                client_id,
                epoch,
                filter,
            } => match self.fenced(client_id, *epoch) {
                Ok(session) => {
                    session.subscriptions.remove(filter);
                    Outcome::Done
                }
                Err(refused) => refused,
            },
            Command::AddRoute { filter, node } => {
                if !self.nodes.contains_key(node) {
                    return Outcome::UnknownNode;
                }
                self.routes.entry(filter.clone()).or_default().insert(*node);
                Outcome::Done
            }
            Command::RemoveRoute { filter, node } => {
                remove_member(&mut self.routes, filter, *node);
                Outcome::Done
            }
            Command::AddShared {
                group,
                filter,
                node,
            } => {
                if !self.nodes.contains_key(node) {
                    return Outcome::UnknownNode;
                }
                self.shared
                    .entry((group.clone(), filter.clone()))
                    .or_default()
                    .insert(*node);
                Outcome::Done
            }
            Command::RemoveShared {
                group,
                filter,
                node,
            } => {
                // The key is a pair of owned strings; the lookup needs one too.
                remove_member(&mut self.shared, &(group.clone(), filter.clone()), *node);
                Outcome::Done
            }
            Command::SyncRoutes {
                node,
                filters,
                shared,
            } => {
                if !self.nodes.contains_key(node) {
                    return Outcome::UnknownNode;
                }
                self.drop_routes_of(*node);
                for filter in filters {
                    self.routes.entry(filter.clone()).or_default().insert(*node);
                }
                for key in shared {
                    self.shared.entry(key.clone()).or_default().insert(*node);
                }
                Outcome::Done
            }
            Command::Retain { message } => {
                self.retained.insert(message.topic.clone(), message.clone());
                Outcome::Done
            }
            Command::ClearRetained { topic, .. } => {
                self.retained.remove(topic);
                Outcome::Done
            }
        }
    }

    fn claim(
        &mut self,
        client_id: &str,
        node: NodeId,
        persistent: bool,
        clean_start: bool,
    ) -> Outcome {
        if !self.nodes.contains_key(&node) {
            return Outcome::UnknownNode;
        }
        let floor = self.epoch_floor;
        match self.sessions.get_mut(client_id) {
            Some(session) => {
                let previous = session.owner.map(|owner| (owner, session.epoch));
                // Saturating: 2^64 claims of one client id do not happen; if they did, the
                // epoch would stop growing rather than wrap to a used one.
                session.epoch = session.epoch.saturating_add(1);
                session.owner = Some(node);
                if !persistent || clean_start {
                    session.subscriptions.clear();
                    // A new session: what other nodes hold of the old one is discarded.
                    session.pending_returns.clear();
                } else if session.persistent {
                    // The previous owner may not hand the session over (it may be down):
                    // until `Returned` says otherwise, it may hold a queue for the client.
                    if let Some((previous, _)) = previous {
                        session.pending_returns.insert(previous);
                    }
                }
                // The claimer takes its own copy into account when it takes the session.
                session.pending_returns.remove(&node);
                session.persistent = persistent;
                Outcome::Claimed {
                    epoch: session.epoch,
                    previous,
                }
            }
            None => {
                let epoch = floor.saturating_add(1);
                self.sessions.insert(
                    client_id.to_owned(),
                    SessionEntry {
                        owner: Some(node),
                        epoch,
                        persistent,
                        subscriptions: BTreeMap::new(),
                        pending_returns: BTreeSet::new(),
                    },
                );
                Outcome::Claimed {
                    epoch,
                    previous: None,
                }
            }
        }
    }

    /// The session of `client_id` if `epoch` is its current claim's, else the refusal.
    fn fenced(&mut self, client_id: &str, epoch: u64) -> Result<&mut SessionEntry, Outcome> {
        match self.sessions.get_mut(client_id) {
            Some(session) if session.epoch == epoch => Ok(session),
            Some(session) => Err(Outcome::StaleEpoch {
                current: session.epoch,
            }),
            None => Err(Outcome::StaleEpoch { current: 0 }),
        }
    }

    fn remove_node(&mut self, node: NodeId) -> Outcome {
        if self.nodes.remove(&node).is_none() {
            return Outcome::UnknownNode;
        }
        // For good: its id is not registered again.
        self.removed.insert(node);
        self.drop_routes_of(node);
        for session in self.sessions.values_mut() {
            if session.owner == Some(node) {
                // The epoch stays: the next claim, wherever, bumps it.
                session.owner = None;
            }
            // A removed node returns nothing.
            session.pending_returns.remove(&node);
        }
        Outcome::Done
    }

    /// Removes `node` from every route and shared group (a pass over both tables: this runs
    /// when a node is removed or re-syncs, not per subscription).
    fn drop_routes_of(&mut self, node: NodeId) {
        self.routes.retain(|_, nodes| {
            nodes.remove(&node);
            !nodes.is_empty()
        });
        self.shared.retain(|_, nodes| {
            nodes.remove(&node);
            !nodes.is_empty()
        });
    }

    // ---- Read side ----

    /// The owner (`None` after its node was removed) and epoch of `client_id`'s claim.
    pub fn owner(&self, client_id: &str) -> Option<(Option<NodeId>, u64)> {
        self.sessions
            .get(client_id)
            .map(|session| (session.owner, session.epoch))
    }

    /// The registry entry of `client_id`.
    pub fn session(&self, client_id: &str) -> Option<&SessionEntry> {
        self.sessions.get(client_id)
    }

    /// Every registered session, by client id.
    pub fn sessions(&self) -> impl Iterator<Item = (&str, &SessionEntry)> {
        self.sessions.iter().map(|(id, s)| (id.as_str(), s))
    }

    /// A registered node.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id)
    }

    /// Every registered node, by id.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &NodeInfo)> {
        self.nodes.iter().map(|(id, info)| (*id, info))
    }

    /// The nodes with a local subscriber for exactly `filter`.
    pub fn route(&self, filter: &str) -> Option<&BTreeSet<NodeId>> {
        self.routes.get(filter)
    }

    /// Every route: a filter and the nodes with a local subscriber for it (never empty).
    pub fn routes(&self) -> impl Iterator<Item = (&str, &BTreeSet<NodeId>)> {
        self.routes.iter().map(|(f, n)| (f.as_str(), n))
    }

    /// Every shared group: `(group, filter, nodes with a member)` (nodes never empty).
    pub fn shared(&self) -> impl Iterator<Item = (&str, &str, &BTreeSet<NodeId>)> {
        self.shared
            .iter()
            .map(|((group, filter), nodes)| (group.as_str(), filter.as_str(), nodes))
    }

    /// The retained message of `topic`.
    pub fn retained_message(&self, topic: &str) -> Option<&RetainedMessage> {
        self.retained.get(topic)
    }

    /// Every retained message, by topic.
    pub fn retained(&self) -> impl Iterator<Item = &RetainedMessage> {
        self.retained.values()
    }

    /// The routes and shared-group memberships `node` holds, in the shape of
    /// [`Command::SyncRoutes`] (a pass over both tables).
    pub fn routes_of(&self, node: NodeId) -> NodeRoutes {
        NodeRoutes {
            filters: self
                .routes
                .iter()
                .filter(|(_, nodes)| nodes.contains(&node))
                .map(|(filter, _)| filter.clone())
                .collect(),
            shared: self
                .shared
                .iter()
                .filter(|(_, nodes)| nodes.contains(&node))
                .map(|(key, _)| key.clone())
                .collect(),
        }
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Number of filters with a route.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// Number of `(group, filter)` shared groups with a member somewhere.
    pub fn shared_count(&self) -> usize {
        self.shared.len()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    /// The highest epoch a released session held (claims of new client ids start above it).
    pub fn epoch_floor(&self) -> u64 {
        self.epoch_floor
    }
}

/// Removes `node` from the set under `key`, and the key with its last node.
fn remove_member<K: Ord>(map: &mut BTreeMap<K, BTreeSet<NodeId>>, key: &K, node: NodeId) {
    if let Some(nodes) = map.get_mut(key) {
        nodes.remove(&node);
        if nodes.is_empty() {
            map.remove(key);
        }
    }
}

/// The shared groups as a list of `{group, filter, nodes}` (JSON map keys must be strings).
mod shared_entries {
    use std::collections::BTreeSet;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::SharedGroups;
    use crate::types::NodeId;

    #[derive(Serialize)]
    struct EntryRef<'a> {
        group: &'a str,
        filter: &'a str,
        nodes: &'a BTreeSet<NodeId>,
    }

    #[derive(Deserialize)]
    struct Entry {
        group: String,
        filter: String,
        nodes: BTreeSet<NodeId>,
    }

    pub fn serialize<S: Serializer>(map: &SharedGroups, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter().map(|((group, filter), nodes)| EntryRef {
            group,
            filter,
            nodes,
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<SharedGroups, D::Error> {
        let entries = Vec::<Entry>::deserialize(deserializer)?;
        Ok(entries
            .into_iter()
            .filter(|entry| !entry.nodes.is_empty())
            .map(|entry| ((entry.group, entry.filter), entry.nodes))
            .collect())
    }
}
