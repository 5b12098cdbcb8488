//! The last message of each other node that reached this node (closing the move window, see
//! docs/architecture.md "A cluster: closing the move window", step 6). A node's copies for
//! this one cross one link, in order: one planned before the last that reached this node
//! reached it before that one, unless it was planned first but sent after it by another of
//! its publishers (it comes after, and follows a moved session as a late copy then), or
//! its node dropped it (a full outbox, or a QoS 0 copy for a congested link).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use tern_broker::ClusterMessageId;
use tern_cluster::NodeId;

use super::hook::lock;

/// Per node: its latest run seen here and the highest message number of that run.
#[derive(Default)]
pub struct Reached(Mutex<HashMap<NodeId, (u64, u64)>>);

impl Reached {
    /// A copy of the message `id` reached this node from its origin (a copy sent on by
    /// another node does not count: it did not cross the origin's link).
    pub fn note(&self, id: &ClusterMessageId) {
        let mut last = lock(&self.0);
        let entry = last.entry(id.node).or_insert((id.run, id.number));
        if id.run > entry.0 {
            *entry = (id.run, id.number);
        } else if id.run == entry.0 && id.number > entry.1 {
            entry.1 = id.number;
        }
    }

    /// Node `node` left the cluster: its entry goes (a hand-over no longer waits for it, and
    /// without an entry its copies are only ever delivered, never dropped as the previous
    /// owner's).
    pub fn forget(&self, node: NodeId) {
        lock(&self.0).remove(&node);
    }

    /// For each of `nodes` a message of which reached this node: (node, run, last number).
    pub fn last_of(&self, nodes: &BTreeSet<NodeId>) -> Vec<(NodeId, u64, u64)> {
        let last = lock(&self.0);
        nodes
            .iter()
            .filter_map(|node| last.get(node).map(|&(run, number)| (*node, run, number)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(node: u64, run: u64, number: u64) -> ClusterMessageId {
        ClusterMessageId {
            node,
            run,
            number,
            planned_at: 0,
        }
    }

    /// Issue 16: the highest number of a node's latest run, whatever order they came in (a
    /// node that restarted numbers again from 0; what its old run sent again does not count).
    #[test]
    fn the_last_number_of_each_nodes_latest_run() {
        let reached = Reached::default();
        assert!(reached.last_of(&BTreeSet::from([3])).is_empty());
        reached.note(&id(3, 9, 4));
        reached.note(&id(3, 9, 2));
        reached.note(&id(5, 1, 0));
        assert_eq!(
            reached.last_of(&BTreeSet::from([3, 4, 5])),
            vec![(3, 9, 4), (5, 1, 0)]
        );
        reached.note(&id(3, 10, 0));
        reached.note(&id(3, 9, 7));
        assert_eq!(reached.last_of(&BTreeSet::from([3])), vec![(3, 10, 0)]);
        reached.note(&id(3, 10, 1));
        assert_eq!(reached.last_of(&BTreeSet::from([3])), vec![(3, 10, 1)]);
        // A node that left is forgotten; the others stay.
        reached.forget(3);
        assert_eq!(reached.last_of(&BTreeSet::from([3, 5])), vec![(5, 1, 0)]);
    }
}
