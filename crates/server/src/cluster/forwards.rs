//! Late copies of a moved session's messages (closing the move window when a flush was
//! partial, see docs/architecture.md "A cluster: closing the move window"). A node that
//! handed a session over without hearing from every other node keeps, for that session, a
//! forwarding address: its plain filters, the node it went to and the nodes that did not
//! answer. A copy such a node planned before the new owner's route of a filter reached its
//! table (the copy's route index is below the index that added the route) went here only;
//! arriving after the export, it finds no session here and is sent on to the new owner as a
//! late copy, for that one session. The address ends once each of those nodes has answered
//! a flush since (retried in the background), or left the cluster.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tern_broker::subscriptions::{IndexEntry, Matched, SubscriptionIndex};
use tern_cluster::NodeId;

use super::hook::lock;
use super::routes::RouteTable;

/// At most this many sessions have a forwarding address at once (beyond it, a partial
/// flush leaves none: the edge as before, logged).
const MOVED_MAX: usize = 10_000;

/// One filter of a moved session, as an entry of the filter index.
#[derive(Debug, Clone)]
struct Address {
    /// The moved session's number (unique among the addresses of one filter).
    key: usize,
    filter: Arc<str>,
    client_id: Arc<str>,
}

impl IndexEntry for Address {
    fn key(&self) -> usize {
        self.key
    }
}

struct Moved {
    key: usize,
    /// The node the session went to.
    to: NodeId,
    /// The log index from which every node's table routes the session's filters to `to`
    /// (the claimer's `routes_at`).
    routes_at: u64,
    /// The nodes whose late copies are sent on (they did not answer the flush).
    from: BTreeSet<NodeId>,
    filters: Vec<Arc<str>>,
}

#[derive(Default)]
struct Inner {
    index: SubscriptionIndex<Address>,
    moved: HashMap<Arc<str>, Moved>,
    next: usize,
}

/// This node's forwarding addresses of moved sessions.
#[derive(Default)]
pub struct Forwards {
    /// Whether any address is kept (read without the lock: a copy's fast path).
    any: AtomicBool,
    inner: Mutex<Inner>,
    /// Late copies sent on to a new owner.
    pub sent: AtomicU64,
}

/// Where a late copy goes: the new owner, for one client id.
#[derive(Debug, PartialEq, Eq)]
pub struct LateCopy {
    pub client_id: Arc<str>,
    pub to: NodeId,
}

impl Forwards {
    /// Keeps a forwarding address for `client_id`, handed over to `to` at `routes_at`, for
    /// the copies of the nodes in `from`. Replaces an older one. False when too many are kept
    /// already (none is kept then).
    pub fn add(
        &self,
        client_id: &str,
        to: NodeId,
        routes_at: u64,
        from: BTreeSet<NodeId>,
        filters: Vec<String>,
    ) -> bool {
        let mut inner = lock(&self.inner);
        remove_in(&mut inner, client_id);
        if inner.moved.len() >= MOVED_MAX || from.is_empty() {
            self.any.store(!inner.moved.is_empty(), Ordering::Release);
            return false;
        }
        inner.next = inner.next.wrapping_add(1);
        let key = inner.next;
        let client_id: Arc<str> = client_id.into();
        let filters: Vec<Arc<str>> = filters.into_iter().map(Arc::from).collect();
        for filter in &filters {
            let address = Address {
                key,
                filter: filter.clone(),
                client_id: client_id.clone(),
            };
            inner.index.insert(filter, address);
        }
        inner.moved.insert(
            client_id,
            Moved {
                key,
                to,
                routes_at,
                from,
                filters,
            },
        );
        self.any.store(true, Ordering::Release);
        true
    }

    /// Node `node` answered a flush for `client_id`'s hand-over (or left the cluster): its
    /// copies are no longer sent on. The address ends with its last such node.
    pub fn flushed(&self, client_id: &str, node: NodeId) {
        let mut inner = lock(&self.inner);
        let done = inner.moved.get_mut(client_id).is_some_and(|moved| {
            moved.from.remove(&node);
            moved.from.is_empty()
        });
        if done {
            remove_in(&mut inner, client_id);
        }
        self.any.store(!inner.moved.is_empty(), Ordering::Release);
    }

    /// Ends `client_id`'s address (its hand-over exported nothing).
    pub fn remove(&self, client_id: &str) {
        let mut inner = lock(&self.inner);
        remove_in(&mut inner, client_id);
        self.any.store(!inner.moved.is_empty(), Ordering::Release);
    }

    /// The nodes whose flush `client_id`'s address still waits for.
    pub fn waiting(&self, client_id: &str) -> Vec<NodeId> {
        lock(&self.inner)
            .moved
            .get(client_id)
            .map(|moved| moved.from.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether no session has an address (one atomic load).
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    /// How many sessions have an address.
    pub fn len(&self) -> usize {
        lock(&self.inner).moved.len()
    }

    /// Where a copy from `origin` to `topic`, planned with the route table at `planned_at`,
    /// goes on to: each moved session with a filter matching `topic` whose new owner did not
    /// get the copy. That is when `origin` did not answer the session's flush, and the
    /// owner's route of that filter was added after `planned_at` (`table` is this node's);
    /// also, not knowing better, while `table` is not yet at the hand-over's index. Not for
    /// a filter the new owner no longer routes (its session dropped it).
    pub fn late_copies(
        &self,
        origin: NodeId,
        topic: &str,
        planned_at: u64,
        table: &RouteTable,
    ) -> Vec<LateCopy> {
        if self.is_empty() {
            return Vec::new();
        }
        let inner = lock(&self.inner);
        let mut late: Vec<LateCopy> = Vec::new();
        inner.index.for_each_match(topic, |matched| {
            let Matched::Subscriber(address) = matched else {
                return;
            };
            let Some(moved) = inner.moved.get(&address.client_id) else {
                return;
            };
            if moved.key != address.key || !moved.from.contains(&origin) {
                return;
            }
            let missed = table.at() < moved.routes_at
                || table
                    .added_at(&address.filter, moved.to)
                    .is_some_and(|added| planned_at < added);
            if missed && !late.iter().any(|copy| copy.client_id == address.client_id) {
                late.push(LateCopy {
                    client_id: address.client_id.clone(),
                    to: moved.to,
                });
            }
        });
        late
    }
}

fn remove_in(inner: &mut Inner, client_id: &str) {
    if let Some(moved) = inner.moved.remove(client_id) {
        for filter in &moved.filters {
            let probe = Address {
                key: moved.key,
                filter: filter.clone(),
                client_id: client_id.into(),
            };
            inner.index.remove(filter, &probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16, the move window: a copy is sent on only from a node that did not answer the
    /// flush, for a filter whose new route it did not know when it planned the copy.
    #[test]
    fn late_copies_follow_the_route_index_and_the_unflushed_nodes() {
        let forwards = Forwards::default();
        let mut table = RouteTable::new(1);
        // Node 2's route of a/# was added at index 10, b/+ at 5 (it had it before).
        table.add(None, "a/#", 2, 10);
        table.add(None, "b/+", 2, 5);
        table.applied(12);
        assert!(
            forwards.late_copies(3, "a/x", 9, &table).is_empty(),
            "none kept"
        );
        assert!(forwards.add(
            "mover",
            2,
            12,
            BTreeSet::from([3]),
            vec!["a/#".into(), "b/+".into(), "c/#".into()]
        ));
        let to_mover = vec![LateCopy {
            client_id: "mover".into(),
            to: 2,
        }];
        assert_eq!(forwards.late_copies(3, "a/x", 9, &table), to_mover);
        assert!(
            forwards.late_copies(3, "a/x", 10, &table).is_empty(),
            "planned with the route: node 2 got it"
        );
        assert!(
            forwards.late_copies(4, "a/x", 9, &table).is_empty(),
            "node 4 answered the flush"
        );
        assert!(
            forwards.late_copies(3, "b/x", 9, &table).is_empty(),
            "node 2 had b/+ before"
        );
        assert!(
            forwards.late_copies(3, "c/x", 1, &table).is_empty(),
            "node 2 no longer routes c/#"
        );
        assert!(forwards.late_copies(3, "d/x", 1, &table).is_empty());
        // A table behind the hand-over's index does not know better: sent on.
        let mut behind = RouteTable::new(1);
        behind.applied(11);
        assert_eq!(forwards.late_copies(3, "c/x", 1, &behind), to_mover);
        // Two matching filters: one copy.
        table.add(None, "a/+", 2, 11);
        assert!(forwards.add(
            "mover",
            2,
            12,
            BTreeSet::from([3, 4]),
            vec!["a/#".into(), "a/+".into()]
        ));
        assert_eq!(forwards.late_copies(3, "a/x", 9, &table), to_mover);
        assert_eq!(forwards.late_copies(4, "a/x", 9, &table), to_mover);
        assert!(
            forwards.late_copies(3, "b/x", 1, &table).is_empty(),
            "replaced"
        );
        forwards.flushed("mover", 3);
        assert!(forwards.late_copies(3, "a/x", 9, &table).is_empty());
        assert_eq!(forwards.waiting("mover"), vec![4]);
        forwards.flushed("mover", 4);
        assert_eq!(forwards.len(), 0);
        assert!(forwards.late_copies(4, "a/x", 9, &table).is_empty());
    }
}
