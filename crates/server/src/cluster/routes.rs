//! The cluster's routes as this node matches them: every node's filters and shared groups
//! from the replicated state, in the core's subscription index (the same matching as local
//! subscriptions), with each node as an entry.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// The route index of one node. Its own plain routes are left out of the index (a local
/// publish finds its local subscribers in the core's index): a node whose traffic stays local
/// finds the index empty and pays nothing for being in a cluster. Shared groups keep every
/// node, this one included, since a group's turn goes round all of them.
#[derive(Default)]
pub struct RouteTable {
    /// The node whose table it is (0: none, every route indexed).
    me: NodeId,
    index: SubscriptionIndex<NodeEntry>,
    /// What the table holds, to apply differences: (group, filter, node).
    entries: BTreeSet<(Option<String>, String, NodeId)>,
    /// How many of `entries` are in the index.
    indexed: usize,
    /// `indexed == 0`, readable without the table's lock (see [`RouteTable::emptiness`]).
    empty: Arc<AtomicBool>,
}

impl RouteTable {
    /// The table of node `me`.
    pub fn new(me: NodeId) -> RouteTable {
        RouteTable {
            me,
            empty: Arc::new(AtomicBool::new(true)),
            ..RouteTable::default()
        }
    }

    /// A flag that follows [`RouteTable::is_empty`], for a publish to read without taking
    /// the table's lock.
    pub fn emptiness(&self) -> Arc<AtomicBool> {
        self.empty.clone()
    }

    /// Whether (group, node) is kept in the index.
    fn indexes(&self, group: Option<&str>, node: NodeId) -> bool {
        group.is_some() || node != self.me
    }

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
        let held = self.entries.clone();
        self.apply_difference(&held, &wanted);
    }

    /// `node` subscribes to `filter` (of `group`).
    pub fn add(&mut self, group: Option<&str>, filter: &str, node: NodeId) {
        self.insert_entry(group, filter, node);
        self.publish_emptiness();
    }

    /// `node` no longer subscribes to `filter` (of `group`).
    pub fn remove(&mut self, group: Option<&str>, filter: &str, node: NodeId) {
        self.remove_entry(group, filter, node);
        self.publish_emptiness();
    }

    /// Makes the table hold exactly the state's routes of `node` (after its re-sync or its
    /// removal), changing only what differs.
    pub fn sync_node(&mut self, state: &ClusterState, node: NodeId) {
        let held: BTreeSet<_> = self
            .entries
            .iter()
            .filter(|(_, _, n)| *n == node)
            .cloned()
            .collect();
        let routes = state.routes_of(node);
        let wanted: BTreeSet<_> = routes
            .filters
            .iter()
            .map(|filter| (None, filter.clone(), node))
            .chain(
                routes
                    .shared
                    .iter()
                    .map(|(group, filter)| (Some(group.clone()), filter.clone(), node)),
            )
            .collect();
        self.apply_difference(&held, &wanted);
    }

    /// Adds what `wanted` has and `held` lacks, then removes the reverse; the emptiness flag
    /// is published once, at the end (a publish reading it without the lock never sees a
    /// table emptied for a moment).
    fn apply_difference(
        &mut self,
        held: &BTreeSet<(Option<String>, String, NodeId)>,
        wanted: &BTreeSet<(Option<String>, String, NodeId)>,
    ) {
        for (group, filter, node) in wanted.difference(held) {
            self.insert_entry(group.as_deref(), filter, *node);
        }
        for (group, filter, node) in held.difference(wanted) {
            self.remove_entry(group.as_deref(), filter, *node);
        }
        self.publish_emptiness();
    }

    fn insert_entry(&mut self, group: Option<&str>, filter: &str, node: NodeId) {
        let key = (group.map(str::to_owned), filter.to_owned(), node);
        if self.entries.insert(key) && self.indexes(group, node) {
            self.index
                .insert(&full_filter(group, filter), NodeEntry(node));
            self.indexed += 1;
        }
    }

    fn remove_entry(&mut self, group: Option<&str>, filter: &str, node: NodeId) {
        let key = (group.map(str::to_owned), filter.to_owned(), node);
        if self.entries.remove(&key) && self.indexes(group, node) {
            self.index
                .remove(&full_filter(group, filter), &NodeEntry(node));
            self.indexed -= 1;
        }
    }

    fn publish_emptiness(&self) {
        self.empty.store(self.indexed == 0, Ordering::Relaxed);
    }

    /// What `topic` matches on nodes other than `me`, and which groups' turn is elsewhere
    /// (a group's turn skips the nodes `usable` rejects, unless all are). Allocates nothing
    /// when everything matched is `me`'s (local traffic).
    pub fn matching(&self, topic: &str, me: NodeId, usable: impl Fn(NodeId) -> bool) -> RouteMatch {
        let mut found = RouteMatch::default();
        self.index.for_each_match(topic, |matched| match matched {
            Matched::Subscriber(NodeEntry(node)) => {
                if *node != me && !found.nodes.contains(node) {
                    found.nodes.push(*node);
                }
            }
            Matched::Group(group) => {
                if let Some(NodeEntry(node)) =
                    group.pick(|NodeEntry(node)| *node == me || usable(*node))
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

    /// Whether a message to `topic` would have to go to a node `blocked` names: one with a
    /// plain subscription to it, or the only kind of member a matching shared group has.
    pub fn reaches(&self, topic: &str, me: NodeId, blocked: impl Fn(NodeId) -> bool) -> bool {
        let mut reaches = false;
        self.index.for_each_match(topic, |matched| {
            if reaches {
                return;
            }
            reaches = match matched {
                Matched::Subscriber(NodeEntry(node)) => *node != me && blocked(*node),
                Matched::Group(group) => group
                    .members
                    .iter()
                    .all(|NodeEntry(node)| *node != me && blocked(*node)),
            };
        });
        reaches
    }

    /// Whether no other node has a route and there is no shared group (the fast path of a
    /// publish).
    pub fn is_empty(&self) -> bool {
        self.indexed == 0
    }
}

fn full_filter(group: Option<&str>, filter: &str) -> String {
    match group {
        Some(group) => format!("$share/{group}/{filter}"),
        None => filter.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16, a congested outbox: a topic reaches a blocked node through a plain route, or
    /// through a shared group none of whose members can take it; a group with another member
    /// (here or on a free node) does not, and its turn skips the blocked node.
    #[test]
    fn reaches_and_group_turns_follow_blocked_nodes() {
        let me = 1;
        let blocked = |node: NodeId| node == 3;
        let mut table = RouteTable::new(me);
        table.add(None, "plain/#", 3);
        table.add(None, "free/#", 2);
        table.add(Some("g"), "shared/#", 3);
        assert!(table.reaches("plain/x", me, blocked));
        assert!(!table.reaches("free/x", me, blocked));
        assert!(
            table.reaches("shared/x", me, blocked),
            "its only member is blocked"
        );
        assert!(!table.reaches("nothing/x", me, blocked));
        table.add(None, "plain/#", me);
        assert!(
            table.reaches("plain/x", me, blocked),
            "this node's route changes nothing"
        );

        table.add(Some("g"), "shared/#", 2);
        assert!(!table.reaches("shared/x", me, blocked));
        for _ in 0..4 {
            let found = table.matching("shared/x", me, |node| !blocked(node));
            assert_eq!(found.groups, vec![(("g".into(), "shared/#".into()), 2)]);
        }
        table.remove(Some("g"), "shared/#", 2);
        table.add(Some("g"), "shared/#", me);
        assert!(!table.reaches("shared/x", me, blocked), "a member here");
        for _ in 0..4 {
            assert!(
                table
                    .matching("shared/x", me, |node| !blocked(node))
                    .is_empty()
            );
        }
    }

    /// A node's own plain routes are not indexed: with no other node's route and no group the
    /// table is empty (a local publish's fast path); every change is still followed.
    #[test]
    fn own_plain_routes_leave_the_table_empty() {
        let mut table = RouteTable::new(1);
        table.add(None, "a/#", 1);
        table.add(None, "b/+", 1);
        let emptiness = table.emptiness();
        assert!(table.is_empty() && emptiness.load(Ordering::Relaxed));
        assert!(table.matching("a/x", 1, |_| true).is_empty());
        table.add(None, "a/#", 2);
        assert!(!table.is_empty() && !emptiness.load(Ordering::Relaxed));
        assert_eq!(table.matching("a/x", 1, |_| true).nodes, vec![2]);
        table.remove(None, "a/#", 2);
        assert!(table.is_empty() && emptiness.load(Ordering::Relaxed));
        table.add(Some("g"), "c/#", 1);
        assert!(!table.is_empty(), "a group goes round every node");
        table.remove(Some("g"), "c/#", 1);
        table.remove(None, "a/#", 1);
        table.remove(None, "b/+", 1);
        assert!(table.is_empty());
        // This node's route again beside another's: counts stay right.
        table.add(None, "a/#", 1);
        table.add(None, "a/#", 3);
        table.remove(None, "a/#", 3);
        assert!(table.is_empty());
    }
}
