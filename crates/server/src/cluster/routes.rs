//! The cluster's routes as this node matches them: every node's filters and shared groups
//! from the replicated state, in the core's subscription index (the same matching as local
//! subscriptions), with each node as an entry.

use std::collections::BTreeSet;

use tern_broker::subscriptions::{IndexEntry, Matched, SubscriptionIndex};
use tern_cluster::{ClusterState, NodeId};

/// A node as an entry of the route index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeEntry(pub NodeId);

impl IndexEntry for NodeEntry {
    fn key(&self) -> usize {
        self.0 as usize
    }
}

/// What a topic matches in the route table, on other nodes than the asking one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteMatch {
    /// Other nodes with a plain subscription matching the topic, each once.
    pub nodes: Vec<NodeId>,
    /// Shared groups matching the topic whose turn (round robin among the nodes with
    /// members) is another node's, with that node.
    pub groups: Vec<((String, String), NodeId)>,
}

impl RouteMatch {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.groups.is_empty()
    }
}

/// The route index.
#[derive(Default)]
pub struct RouteTable {
    index: SubscriptionIndex<NodeEntry>,
    /// What the index holds, to apply differences: (group, filter, node).
    entries: BTreeSet<(Option<String>, String, NodeId)>,
}

impl RouteTable {
    /// Makes the table hold exactly the state's routes (after a snapshot, at start), or only
    /// what changed.
    pub fn sync(&mut self, state: &ClusterState) {
        let mut wanted: BTreeSet<(Option<String>, String, NodeId)> = BTreeSet::new();
        for (filter, nodes) in state.routes() {
            for node in nodes {
                wanted.insert((None, filter.to_owned(), *node));
            }
        }
        for (group, filter, nodes) in state.shared() {
            for node in nodes {
                wanted.insert((Some(group.to_owned()), filter.to_owned(), *node));
            }
        }
        let gone: Vec<_> = self.entries.difference(&wanted).cloned().collect();
        let new: Vec<_> = wanted.difference(&self.entries).cloned().collect();
        for (group, filter, node) in gone {
            let full = full_filter(group.as_deref(), &filter);
            self.index.remove(&full, &NodeEntry(node));
            self.entries.remove(&(group, filter, node));
        }
        for (group, filter, node) in new {
            let full = full_filter(group.as_deref(), &filter);
            self.index.insert(&full, NodeEntry(node));
            self.entries.insert((group, filter, node));
        }
    }

    /// `node` subscribes to `filter` (of `group`).
    pub fn add(&mut self, group: Option<&str>, filter: &str, node: NodeId) {
        let key = (group.map(str::to_owned), filter.to_owned(), node);
        if self.entries.insert(key) {
            self.index
                .insert(&full_filter(group, filter), NodeEntry(node));
        }
    }

    /// `node` no longer subscribes to `filter` (of `group`).
    pub fn remove(&mut self, group: Option<&str>, filter: &str, node: NodeId) {
        let key = (group.map(str::to_owned), filter.to_owned(), node);
        if self.entries.remove(&key) {
            self.index
                .remove(&full_filter(group, filter), &NodeEntry(node));
        }
    }

    /// Makes the table hold exactly the state's routes of `node` (after its re-sync or its
    /// removal).
    pub fn sync_node(&mut self, state: &ClusterState, node: NodeId) {
        let held: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, _, n)| *n == node)
            .cloned()
            .collect();
        for (group, filter, _) in held {
            self.remove(group.as_deref(), &filter, node);
        }
        let routes = state.routes_of(node);
        for filter in &routes.filters {
            self.add(None, filter, node);
        }
        for (group, filter) in &routes.shared {
            self.add(Some(group), filter, node);
        }
    }

    /// What `topic` matches on nodes other than `me`, and which groups' turn is elsewhere.
    /// Allocates nothing when everything matched is `me`'s (local traffic).
    pub fn matching(&self, topic: &str, me: NodeId) -> RouteMatch {
        let mut found = RouteMatch::default();
        self.index.for_each_match(topic, |matched| match matched {
            Matched::Subscriber(NodeEntry(node)) => {
                if *node != me && !found.nodes.contains(node) {
                    found.nodes.push(*node);
                }
            }
            Matched::Group(group) => {
                if let Some(NodeEntry(node)) = group.pick(|_| true)
                    && *node != me
                {
                    let plain = tern_codec::topic::split_shared(&group.filter)
                        .map_or("", |(_, filter)| filter);
                    found
                        .groups
                        .push(((group.name.to_string(), plain.to_owned()), *node));
                }
            }
        });
        found
    }

    /// Whether the table holds no route at all (the fast path of a publish).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn full_filter(group: Option<&str>, filter: &str) -> String {
    match group {
        Some(group) => format!("$share/{group}/{filter}"),
        None => filter.to_owned(),
    }
}
