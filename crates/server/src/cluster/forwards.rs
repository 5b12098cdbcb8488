//! Late copies of a moved session's messages (closing the move window when a flush was
//! partial, see docs/architecture.md "A cluster: closing the move window"). A node that
//! handed a session over without hearing from every other node keeps, for that session, a
//! forwarding address: its plain filters, the node it went to, the log index `r` from which
//! every table routes the session there, and the nodes that did not answer. A copy one of
//! those nodes planned below `r` may have come here only; arriving after the export, it finds
//! no session here and is sent on to the new owner as a late copy, for that one session
//! (which drops it if it had it already: `Broker::publish_late`). The address ends once each
//! of those nodes has answered a flush since (asked again in the background) or left the
//! cluster, and after [`MOVED_FOR`] at the latest.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_broker::subscriptions::{IndexEntry, Matched, SubscriptionIndex};
use tern_cluster::NodeId;

use super::hook::lock;

/// At most this many sessions have a forwarding address at once (beyond it, a partial
/// flush leaves none: its late copies are lost, as without addresses; logged).
const MOVED_MAX: usize = 10_000;

/// How long an address is kept at most: a node cut off longer than this may still deliver
/// copies of the move's time afterwards, which are then lost.
pub const MOVED_FOR: Duration = Duration::from_secs(600);

/// How long the new owner remembers what reached the moved session, for the late copies,
/// and takes them: well beyond an address's life, for a late copy that waits in the
/// previous owner's outbox while the link between the two is down. (What it remembers is
/// only what was planned before the move's routes were in every table.) As long, it drops
/// what its routes bring of the copies the previous owner had (those of the nodes that
/// answered its flush, planned before then).
pub const SEEN_FOR: Duration = Duration::from_secs(3600);

/// One filter of a moved session, as an entry of the filter index.
#[derive(Debug, Clone)]
struct Address {
    /// The address's number (unique among the addresses of one filter).
    key: usize,
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
    filters: Vec<String>,
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
    /// the copies of the nodes in `from` to the plain filters among `filters`; replaces an
    /// older one. The address's key, or none when too many are kept already (or there is
    /// nothing to forward).
    pub fn add<'a>(
        &self,
        client_id: &str,
        to: NodeId,
        routes_at: u64,
        from: BTreeSet<NodeId>,
        filters: impl IntoIterator<Item = &'a str>,
    ) -> Option<usize> {
        let filters: Vec<String> = filters
            .into_iter()
            .filter(|filter| tern_codec::topic::split_shared(filter).is_none())
            .map(str::to_owned)
            .collect();
        let mut inner = lock(&self.inner);
        remove_in(&mut inner, client_id);
        let kept = inner.moved.len() < MOVED_MAX && !from.is_empty() && !filters.is_empty();
        let key = kept.then(|| {
            inner.next = inner.next.wrapping_add(1);
            let key = inner.next;
            let client_id: Arc<str> = client_id.into();
            for filter in &filters {
                let address = Address {
                    key,
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
            key
        });
        self.any.store(!inner.moved.is_empty(), Ordering::Release);
        key
    }

    /// Node `node` answered a flush for the address `key` of `client_id` (or left the
    /// cluster): its copies are no longer sent on. The address ends with its last such node.
    pub fn flushed(&self, client_id: &str, key: usize, node: NodeId) {
        let mut inner = lock(&self.inner);
        let done = inner
            .moved
            .get_mut(client_id)
            .filter(|moved| moved.key == key)
            .is_some_and(|moved| {
                moved.from.remove(&node);
                moved.from.is_empty()
            });
        if done {
            remove_in(&mut inner, client_id);
        }
        self.any.store(!inner.moved.is_empty(), Ordering::Release);
    }

    /// Ends the address `key` of `client_id` (kept too long, or its session stayed here).
    pub fn remove(&self, client_id: &str, key: usize) {
        let mut inner = lock(&self.inner);
        if inner
            .moved
            .get(client_id)
            .is_some_and(|moved| moved.key == key)
        {
            remove_in(&mut inner, client_id);
        }
        self.any.store(!inner.moved.is_empty(), Ordering::Release);
    }

    /// The nodes whose flush the address `key` of `client_id` still waits for; none when
    /// that address has ended (or was replaced).
    pub fn waiting(&self, client_id: &str, key: usize) -> Option<Vec<NodeId>> {
        lock(&self.inner)
            .moved
            .get(client_id)
            .filter(|moved| moved.key == key)
            .map(|moved| moved.from.iter().copied().collect())
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
    /// goes on to: each moved session with a filter matching `topic` whose flush `origin` did
    /// not answer, when the copy was planned before the session's routes reached every
    /// table (from then on, its new owner gets its own copy).
    pub fn late_copies(&self, origin: NodeId, topic: &str, planned_at: u64) -> Vec<LateCopy> {
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
            if moved.key == address.key
                && moved.from.contains(&origin)
                && planned_at < moved.routes_at
                && !late.iter().any(|copy| copy.client_id == address.client_id)
            {
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
        let probe = Address {
            key: moved.key,
            client_id: client_id.into(),
        };
        for filter in &moved.filters {
            inner.index.remove(filter, &probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16, the move window: a copy is sent on only from a node that did not answer the
    /// flush, planned before the session's routes were in every table, for a plain filter
    /// of the session; once per session; not for a replaced or ended address.
    #[test]
    fn late_copies_come_from_unflushed_nodes_planned_before_the_routes() {
        let forwards = Forwards::default();
        assert!(forwards.late_copies(3, "a/x", 9).is_empty(), "none kept");
        let filters = ["a/#", "a/+", "$share/g/b/#"];
        let first = forwards
            .add("mover", 2, 12, BTreeSet::from([3, 4]), filters)
            .unwrap();
        let to_mover = vec![LateCopy {
            client_id: "mover".into(),
            to: 2,
        }];
        assert_eq!(
            forwards.late_copies(3, "a/x", 11),
            to_mover,
            "two filters: once"
        );
        assert!(
            forwards.late_copies(3, "a/x", 12).is_empty(),
            "planned with the routes"
        );
        assert!(
            forwards.late_copies(5, "a/x", 1).is_empty(),
            "node 5 answered"
        );
        assert!(
            forwards.late_copies(3, "b/x", 1).is_empty(),
            "no shared filter"
        );
        assert!(forwards.late_copies(3, "c/x", 1).is_empty());

        forwards.flushed("mover", first, 3);
        assert!(forwards.late_copies(3, "a/x", 1).is_empty());
        assert_eq!(forwards.late_copies(4, "a/x", 1), to_mover);
        assert_eq!(forwards.waiting("mover", first), Some(vec![4]));

        // Moved again: the first address's key no longer counts.
        let second = forwards
            .add("mover", 5, 20, BTreeSet::from([4]), ["c/#"])
            .unwrap();
        assert!(forwards.late_copies(4, "a/x", 1).is_empty(), "replaced");
        forwards.flushed("mover", first, 4);
        assert_eq!(forwards.waiting("mover", first), None);
        assert_eq!(forwards.waiting("mover", second), Some(vec![4]));
        assert_eq!(forwards.late_copies(4, "c/x", 19).len(), 1);
        forwards.remove("mover", first);
        assert_eq!(forwards.len(), 1, "another key: kept");
        forwards.flushed("mover", second, 4);
        assert_eq!(forwards.len(), 0);
        assert!(forwards.is_empty());
        assert_eq!(
            forwards.add("shared", 2, 3, BTreeSet::from([3]), ["$share/g/a"]),
            None,
            "nothing to forward"
        );
    }
}
