//! The retained messages, one per topic, in a trie by topic level so that a wildcard subscription
//! finds its messages without scanning them all.
//!
//! A literal filter level follows one child, `+` visits every child of the node, `#` takes the
//! whole subtree (the node itself included). The cost of a look-up is the number of nodes the
//! filter's wildcards cover, not the number of retained messages. As for subscriptions, a filter
//! whose first level is a wildcard does not reach topics that begin with `$` [MQTT-4.7.2-1].
//!
//! A walk visits each node's children in one fixed order, by a hash of the level name and then
//! the name, so it returns the matching topics in that order (a topic before the topics below
//! it) and can stop after a batch and resume after the last topic it returned
//! ([`RetainedIndex::matching_after`]). That is how a subscription to a large retained set is
//! streamed to its client without copying the set. The order does not change as siblings come
//! and go (a hash map's iteration order would). The children stay in a hash map, so a publish
//! finds its topic as fast as without the order (an ordered map instead made a look-up under a
//! node with a thousand children three to five times slower: a cache miss per B-tree level);
//! a walk sorts the children of a narrow node as it visits it, and a node with more than
//! [`WIDE`] children keeps their order in a set beside the map, so a walk resumes in it in
//! `O(log k)` rather than sorting a million children at every batch. The hash is unkeyed:
//! names that collide are ordered by name.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::message::Message;
use crate::subscriptions::split_level;

/// FNV-1a, 64 bits: fast on the short strings topic levels are.
fn level_hash(level: &str) -> u64 {
    level.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where `level` stands among its siblings in a walk: by hash, then by name.
fn level_key(level: &str) -> (u64, &str) {
    (level_hash(level), level)
}

/// The walk order of a node's children: `(hash, name)`, as [`level_key`] gives it.
type ChildOrderSet = BTreeSet<(u64, Box<str>)>;

/// Children a node may have before it keeps their walk order beside them.
const WIDE: usize = 64;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// The walk order of the children, kept once they are more than [`WIDE`]: a walk resumes in
    /// it in `O(log k)` instead of sorting `k` children at every batch (boxed: most nodes have
    /// a handful of children and no order of their own).
    order: Option<Box<ChildOrderSet>>,
    message: Option<Arc<Message>>,
    /// When the message was stored, on the broker's retained clock (0: not stored by a local
    /// publish, see [`RetainedIndex::insert_at`]).
    stored_at: u64,
    /// Messages at and below the node: a walk that can take all of them (with room to spare)
    /// visits the node's children in the map's own order, as fast as a walk can be, since it
    /// cannot stop, and so cannot need to resume, inside them.
    count: usize,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }

    /// The child `level`, made if it does not exist.
    fn child_entry(&mut self, level: &str) -> &mut Node {
        if !self.children.contains_key(level) {
            match &mut self.order {
                Some(order) => {
                    order.insert((level_hash(level), level.into()));
                }
                None if self.children.len() >= WIDE => {
                    let mut order: ChildOrderSet = self
                        .children
                        .keys()
                        .map(|name| (level_hash(name), name.clone()))
                        .collect();
                    order.insert((level_hash(level), level.into()));
                    self.order = Some(Box::new(order));
                }
                None => {}
            }
        }
        self.children.entry(level.into()).or_default()
    }

    fn remove_child(&mut self, level: &str) {
        self.children.remove(level);
        if let Some(order) = &mut self.order {
            order.remove(&(level_hash(level), Box::from(level)));
            // Dropped well below the threshold, so a node near it does not rebuild it often.
            if self.children.len() < WIDE / 2 {
                self.order = None;
            }
        }
    }

    /// The children that come after `from` in walk order, each with its own part of the bound;
    /// with `any_order` (a walk that takes the whole subtree), simply every child.
    fn children_after<'n, 'b>(&'n self, from: From<'b>, any_order: bool) -> Children<'n, 'b> {
        if any_order {
            return Children {
                inner: ChildOrder::Any(self.children.iter()),
                on_path: None,
            };
        }
        // Below the resume point's path, `rest` names the next level of that path: the child of
        // that name continues the bound, later siblings are all new, earlier ones are done.
        let on_path = match from {
            From::Start | From::After(None) => None,
            From::After(Some(rest)) => Some(split_level(rest)),
        };
        let start = on_path.map_or((0, ""), |(level, _)| level_key(level));
        let inner = match &self.order {
            Some(order) => ChildOrder::Kept {
                // The empty name does not allocate: the bound is free.
                range: order.range((start.0, Box::<str>::default())..),
                children: &self.children,
                start,
            },
            None => {
                let mut sorted: Vec<((u64, &str), &Node)> = self
                    .children
                    .iter()
                    .map(|(name, child)| (level_key(name), child))
                    .filter(|(key, _)| *key >= start)
                    .collect();
                sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                ChildOrder::Sorted(sorted.into_iter())
            }
        };
        Children { inner, on_path }
    }
}

/// The children of a node from a resume point on, in walk order.
struct Children<'n, 'b> {
    inner: ChildOrder<'n, 'b>,
    /// The resume point's level at this node and what is left of it below.
    on_path: Option<(&'b str, Option<&'b str>)>,
}

enum ChildOrder<'n, 'b> {
    /// Every child, in the map's order.
    Any(std::collections::hash_map::Iter<'n, Box<str>, Node>),
    /// A narrow node's children, sorted for this walk.
    Sorted(std::vec::IntoIter<((u64, &'n str), &'n Node)>),
    /// A wide node's kept order, from the resume point.
    Kept {
        range: std::collections::btree_set::Range<'n, (u64, Box<str>)>,
        children: &'n HashMap<Box<str>, Node>,
        start: (u64, &'b str),
    },
}

impl<'n, 'b> Iterator for Children<'n, 'b> {
    type Item = (&'n str, &'n Node, From<'b>);

    fn next(&mut self) -> Option<Self::Item> {
        let (name, child) = match &mut self.inner {
            ChildOrder::Any(children) => children.next().map(|(name, child)| (&**name, child))?,
            ChildOrder::Sorted(sorted) => sorted.next().map(|((_, name), child)| (name, child))?,
            ChildOrder::Kept {
                range,
                children,
                start,
            } => loop {
                let (hash, name) = range.next()?;
                if (*hash, &**name) < *start {
                    // Same hash as the resume point, a name before it: done before.
                    continue;
                }
                if let Some((name, child)) = children.get_key_value(&**name) {
                    break (&**name, child);
                }
            },
        };
        let bound = match self.on_path {
            Some((level, below)) if name == level => From::After(below),
            _ => From::Start,
        };
        Some((name, child, bound))
    }
}

/// Where a walk resumes, relative to the node it is at.
#[derive(Debug, Clone, Copy)]
enum From<'a> {
    /// Everything at and below the node is new.
    Start,
    /// The resume point is at (`None`) or below (`Some(rest of its topic)`) this node: the
    /// node's own message was returned before, and only what follows the point is new.
    After(Option<&'a str>),
}

/// A walk that stops once `out` holds `limit` messages, passing over those stored at or
/// after `before` on the retained clock.
struct Walk<'o> {
    out: &'o mut Vec<Arc<Message>>,
    limit: usize,
    before: u64,
}

impl Walk<'_> {
    /// Adds the node's message if it is new; false once the batch is full.
    fn emit(&mut self, node: &Node, from: From<'_>) -> bool {
        if matches!(from, From::Start)
            && let Some(message) = &node.message
            && node.stored_at < self.before
        {
            if self.out.len() >= self.limit {
                return false;
            }
            self.out.push(message.clone());
        }
        true
    }

    /// Whether the walk takes everything at and below `node` and still has room after it: it
    /// then cannot end inside the node's subtree, so the order there does not matter.
    fn takes_whole(&self, node: &Node, from: From<'_>) -> bool {
        matches!(from, From::Start) && node.count < self.limit.saturating_sub(self.out.len())
    }

    /// Every message at and below `node`.
    fn all(&mut self, node: &Node, from: From<'_>) -> bool {
        if !self.emit(node, from) {
            return false;
        }
        let any_order = self.takes_whole(node, from);
        node.children_after(from, any_order)
            .all(|(_, child, bound)| self.all(child, bound))
    }

    /// The messages under `node` that match `filter` (the part of the filter below `node`).
    fn matching(&mut self, node: &Node, filter: &str, root: bool, from: From<'_>) -> bool {
        let (level, below) = split_level(filter);
        let visible = |name: &str| !(root && name.starts_with('$'));
        match level {
            "#" => {
                // `a/#` matches `a` itself as well as everything below it.
                if !root && !self.emit(node, from) {
                    return false;
                }
                let any_order = self.takes_whole(node, from);
                node.children_after(from, any_order)
                    .filter(|(name, ..)| visible(name))
                    .all(|(_, child, bound)| self.all(child, bound))
            }
            "+" => node
                .children_after(from, self.takes_whole(node, from))
                .filter(|(name, ..)| visible(name))
                .all(|(_, child, bound)| self.descend(child, below, bound)),
            literal => {
                let Some(child) = node.children.get(literal) else {
                    return true;
                };
                let bound = match from {
                    From::Start | From::After(None) => From::Start,
                    From::After(Some(rest)) => {
                        let (on_path, rest_below) = split_level(rest);
                        match level_key(literal).cmp(&level_key(on_path)) {
                            std::cmp::Ordering::Less => return true,
                            std::cmp::Ordering::Equal => From::After(rest_below),
                            std::cmp::Ordering::Greater => From::Start,
                        }
                    }
                };
                self.descend(child, below, bound)
            }
        }
    }

    fn descend(&mut self, child: &Node, below: Option<&str>, from: From<'_>) -> bool {
        match below {
            Some(below) => self.matching(child, below, false, from),
            None => self.emit(child, from),
        }
    }
}

/// All retained messages.
#[derive(Debug, Default)]
pub struct RetainedIndex {
    root: Node,
    len: usize,
    payload_bytes: usize,
}

impl RetainedIndex {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of all retained payloads.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Stores `message` as the retained message of its topic, replacing the previous one
    /// [MQTT-3.3.1-5]. Returns the replaced message.
    pub fn insert(&mut self, message: Arc<Message>) -> Option<Arc<Message>> {
        self.insert_at(message, 0)
    }

    /// [`RetainedIndex::insert`], noting the tick of the broker's retained clock at which a
    /// local publish stored it (0 for any other: recovered, replicated, the broker's own). A
    /// subscription's retained set skips the messages stored after the subscription was made
    /// (see [`RetainedIndex::matching_stored_before`]).
    pub fn insert_at(&mut self, message: Arc<Message>, stored_at: u64) -> Option<Arc<Message>> {
        let mut node = &mut self.root;
        let mut rest = Some(message.topic.as_str());
        while let Some(topic) = rest {
            let (level, below) = split_level(topic);
            node = node.child_entry(level);
            rest = below;
        }
        self.payload_bytes += message.payload.len();
        let topic = message.topic.clone();
        let old = node.message.replace(message);
        node.stored_at = stored_at;
        match &old {
            Some(old) => self.payload_bytes -= old.payload.len(),
            None => {
                self.len += 1;
                self.count_along(&topic);
            }
        }
        old
    }

    /// Counts a new message in every node along its topic's path.
    fn count_along(&mut self, topic: &str) {
        let mut node = &mut self.root;
        node.count += 1;
        let mut rest = Some(topic);
        while let Some(topic) = rest {
            let (level, below) = split_level(topic);
            let Some(child) = node.children.get_mut(level) else {
                return;
            };
            node = child;
            node.count += 1;
            rest = below;
        }
    }

    /// Removes the retained message of `topic` [MQTT-3.3.1-6]; returns it if there was one.
    pub fn remove(&mut self, topic: &str) -> Option<Arc<Message>> {
        let removed = remove_at(&mut self.root, topic)?;
        self.root.count -= 1;
        self.len -= 1;
        self.payload_bytes -= removed.payload.len();
        Some(removed)
    }

    /// The retained message of exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&Arc<Message>> {
        let mut node = &self.root;
        let mut rest = Some(topic);
        while let Some(topic) = rest {
            let (level, below) = split_level(topic);
            node = node.children.get(level)?;
            rest = below;
        }
        node.message.as_ref()
    }

    /// Every retained message whose topic matches `filter` (a plain filter, without `$share`).
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        self.matching_after(filter, None, usize::MAX, &mut out);
        out
    }

    /// Appends to `out`, in walk order, up to `limit` retained messages matching `filter`
    /// whose topics come after `after` (from the first with `None`). Returns true when the walk
    /// reached the end: no matching topic is left after the last one appended.
    pub fn matching_after(
        &self,
        filter: &str,
        after: Option<&str>,
        limit: usize,
        out: &mut Vec<Arc<Message>>,
    ) -> bool {
        self.matching_stored_before(filter, after, limit, out, u64::MAX)
    }

    /// [`RetainedIndex::matching_after`], passing over the messages stored at or after tick
    /// `before` of the retained clock (they are not counted in `limit`; a later call resuming
    /// after the last topic appended passes over them again).
    pub fn matching_stored_before(
        &self,
        filter: &str,
        after: Option<&str>,
        limit: usize,
        out: &mut Vec<Arc<Message>>,
        before: u64,
    ) -> bool {
        let limit = out.len().saturating_add(limit);
        let from = match after {
            Some(topic) => From::After(Some(topic)),
            None => From::Start,
        };
        let mut walk = Walk { out, limit, before };
        walk.matching(&self.root, filter, true, from)
    }
}

fn remove_at(node: &mut Node, topic: &str) -> Option<Arc<Message>> {
    let (level, below) = split_level(topic);
    let child = node.children.get_mut(level)?;
    let removed = match below {
        Some(below) => remove_at(child, below),
        None => child.message.take(),
    };
    if removed.is_some() {
        child.count -= 1;
    }
    if child.is_empty() {
        node.remove_child(level);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tern_codec::{MqttStr, QoS};

    fn message(topic: &str) -> Arc<Message> {
        Arc::new(Message {
            cluster_id: None,
            topic: MqttStr::try_from(topic).unwrap(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: None,
            expires_at: None,
            publisher: None,
            id: 0,
        })
    }

    fn topics(index: &RetainedIndex, filter: &str) -> Vec<String> {
        let mut found: Vec<String> = index
            .matching(filter)
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        found.sort();
        found
    }

    #[test]
    fn a_walk_passes_over_what_was_stored_at_or_after_its_tick() {
        let mut index = RetainedIndex::default();
        index.insert(message("t/recovered"));
        for (n, topic) in ["t/1", "t/2", "t/3", "t/4"].into_iter().enumerate() {
            index.insert_at(message(topic), n as u64 + 1);
        }
        // Replaced after the tick: passed over, though its old message was stored before.
        index.insert_at(message("t/2"), 9);
        let before = |tick: u64, limit: usize| {
            let (mut out, mut after, mut walks) = (Vec::new(), None::<String>, 0);
            loop {
                let mut batch = Vec::new();
                let done =
                    index.matching_stored_before("t/#", after.as_deref(), limit, &mut batch, tick);
                after = batch.last().map(|m| m.topic.to_string()).or(after);
                out.extend(batch.iter().map(|m| m.topic.to_string()));
                walks += 1;
                if done {
                    out.sort();
                    return (out, walks);
                }
            }
        };
        assert_eq!(before(3, usize::MAX).0, ["t/1", "t/recovered"]);
        assert_eq!(before(u64::MAX, usize::MAX).0.len(), 5);
        // In batches of one: what is passed over does not count, and the walk ends.
        let (found, walks) = before(4, 1);
        assert_eq!(found, ["t/1", "t/3", "t/recovered"]);
        assert!(walks <= 4, "{walks}");
    }

    #[test]
    fn wildcard_lookup() {
        let mut index = RetainedIndex::default();
        for topic in ["a", "a/b", "a/b/c", "a/x/c", "b", "/a", "$SYS/x"] {
            index.insert(message(topic));
        }
        assert_eq!(index.len(), 7);
        assert_eq!(topics(&index, "a/#"), ["a", "a/b", "a/b/c", "a/x/c"]);
        assert_eq!(topics(&index, "a/+/c"), ["a/b/c", "a/x/c"]);
        assert_eq!(topics(&index, "+"), ["a", "b"]);
        assert_eq!(topics(&index, "+/a"), ["/a"]);
        assert_eq!(
            topics(&index, "#"),
            ["/a", "a", "a/b", "a/b/c", "a/x/c", "b"]
        );
        assert_eq!(topics(&index, "$SYS/#"), ["$SYS/x"]);
        assert_eq!(topics(&index, "a/b"), ["a/b"]);
    }

    #[test]
    fn replace_and_remove_keep_counts() {
        let mut index = RetainedIndex::default();
        assert!(index.insert(message("a/b")).is_none());
        assert!(index.insert(message("a/b")).is_some());
        assert_eq!((index.len(), index.payload_bytes()), (1, 1));
        assert!(index.remove("a/b").is_some());
        assert!(index.remove("a/b").is_none());
        assert_eq!((index.len(), index.payload_bytes()), (0, 0));
        assert!(index.root.is_empty());
    }

    /// Resumes after each batch of `size` and returns the topics in the order they came.
    fn in_batches(index: &RetainedIndex, filter: &str, size: usize) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        loop {
            let mut batch = Vec::new();
            let after = seen.last().cloned();
            let done = index.matching_after(filter, after.as_deref(), size, &mut batch);
            assert!(batch.len() <= size);
            seen.extend(batch.iter().map(|m| m.topic.to_string()));
            if done {
                return seen;
            }
        }
    }

    #[test]
    fn a_resumed_walk_returns_each_matching_topic_once_in_order() {
        let mut index = RetainedIndex::default();
        let topics_in = [
            "a", "a/b", "a/b/c", "a/x/c", "a//c", "b", "/a", "$SYS/x", "a/b/c/d", "ab", "a/c",
        ];
        for topic in topics_in {
            index.insert(message(topic));
        }
        for filter in [
            "#", "a/#", "a/+/c", "+", "+/+", "a/b/#", "$SYS/#", "a", "+/c", "x/#",
        ] {
            let whole = topics(&index, filter);
            for size in [1, 2, 3, 100] {
                let streamed = in_batches(&index, filter, size);
                let mut sorted = streamed.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(
                    sorted.len(),
                    streamed.len(),
                    "{filter} by {size}: a topic twice"
                );
                assert_eq!(sorted, whole, "{filter} by {size}");
            }
        }
    }

    #[test]
    fn a_walk_resumes_after_a_topic_removed_meanwhile() {
        let mut index = RetainedIndex::default();
        let all = ["s/1", "s/2", "s/3", "s/4", "s/5"];
        for topic in all {
            index.insert(message(topic));
        }
        let mut first = Vec::new();
        assert!(!index.matching_after("s/#", None, 2, &mut first));
        let first: Vec<String> = first.iter().map(|m| m.topic.to_string()).collect();
        // The last topic returned goes, another comes: the walk resumes after where it was.
        index.remove(&first[1]);
        index.insert(message("s/0"));
        let mut rest = Vec::new();
        assert!(index.matching_after("s/#", Some(&first[1]), 10, &mut rest));
        let rest: Vec<String> = rest.iter().map(|m| m.topic.to_string()).collect();
        let mut seen: Vec<&str> = first.iter().chain(&rest).map(String::as_str).collect();
        seen.sort();
        let before = seen.len();
        seen.dedup();
        assert_eq!(seen.len(), before, "a topic twice: {first:?} then {rest:?}");
        // Every topic that stayed throughout comes once; the new one may or may not.
        seen.retain(|topic| *topic != "s/0");
        assert_eq!(seen, all);
    }

    #[test]
    fn wide_nodes_resume_in_their_kept_order_as_children_come_and_go() {
        let mut index = RetainedIndex::default();
        for n in 0..300 {
            index.insert(message(&format!("w/{n}")));
            index.insert(message(&format!("w/{n}/x")));
        }
        for filter in ["w/#", "w/+", "+/+/x", "#"] {
            let whole = topics(&index, filter);
            for size in [1, 7, 64] {
                let streamed = in_batches(&index, filter, size);
                let mut sorted = streamed.clone();
                sorted.sort();
                assert_eq!(sorted, whole, "{filter} by {size}");
            }
        }
        // Shrink below the threshold (the kept order goes), grow again (it comes back): the
        // walk stays complete and without repeats each time.
        for n in 0..290 {
            index.remove(&format!("w/{n}"));
            index.remove(&format!("w/{n}/x"));
        }
        assert_eq!(in_batches(&index, "w/+", 3).len(), 10);
        for n in 1000..1100 {
            index.insert(message(&format!("w/{n}")));
        }
        let mut streamed = in_batches(&index, "w/+", 5);
        streamed.sort();
        assert_eq!(streamed, topics(&index, "w/+"));
        assert_eq!(streamed.len(), 110);
    }
}
