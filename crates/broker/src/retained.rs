//! The retained messages, one per topic, in a trie by topic level so that a wildcard subscription
//! finds its messages without scanning them all.
//!
//! A literal filter level follows one child, `+` visits every child of the node, `#` takes the
//! whole subtree (the node itself included). The cost of a look-up is the number of nodes the
//! filter's wildcards cover, not the number of retained messages. As for subscriptions, a filter
//! whose first level is a wildcard does not reach topics that begin with `$` [MQTT-4.7.2-1].
//!
//! Children are ordered by level name, so a look-up walks the matching topics in one fixed
//! order: a topic before the topics below it, siblings by name. A look-up can therefore stop
//! after a batch and resume after the last topic it returned ([`RetainedIndex::matching_after`]),
//! which is how a subscription to a large retained set is streamed to its client without
//! copying the set: a resumed walk costs one descent along the last topic's path
//! (`O(depth × log fan-out)`) plus the batch.

use std::collections::BTreeMap;
use std::ops::Bound::{Included, Unbounded};
use std::sync::Arc;

use crate::message::Message;
use crate::subscriptions::split_level;

#[derive(Debug, Default)]
struct Node {
    children: BTreeMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }

    /// The children that come after `from` in walk order, each with its own part of the bound.
    fn children_after<'n, 'b>(
        &'n self,
        from: From<'b>,
    ) -> impl Iterator<Item = (&'n str, &'n Node, From<'b>)> {
        // Below the resume point's path, `rest` names the next level of that path: the child of
        // that name continues the bound, later siblings are all new, earlier ones are done.
        let (range, on_path) = match from {
            From::Start | From::After(None) => ((Unbounded, Unbounded), None),
            From::After(Some(rest)) => {
                let (level, below) = split_level(rest);
                ((Included(level), Unbounded), Some((level, below)))
            }
        };
        self.children
            .range::<str, _>(range)
            .map(move |(name, child)| {
                let bound = match on_path {
                    Some((level, below)) if &**name == level => From::After(below),
                    _ => From::Start,
                };
                (&**name, child, bound)
            })
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

/// A walk that stops once `out` holds `limit` messages.
struct Walk<'o> {
    out: &'o mut Vec<Arc<Message>>,
    limit: usize,
}

impl Walk<'_> {
    /// Adds the node's message if it is new; false once the batch is full.
    fn emit(&mut self, node: &Node, from: From<'_>) -> bool {
        if matches!(from, From::Start)
            && let Some(message) = &node.message
        {
            if self.out.len() >= self.limit {
                return false;
            }
            self.out.push(message.clone());
        }
        true
    }

    /// Every message at and below `node`.
    fn all(&mut self, node: &Node, from: From<'_>) -> bool {
        if !self.emit(node, from) {
            return false;
        }
        node.children_after(from)
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
                node.children_after(from)
                    .filter(|(name, ..)| visible(name))
                    .all(|(_, child, bound)| self.all(child, bound))
            }
            "+" => node
                .children_after(from)
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
                        match literal.cmp(on_path) {
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
        let mut node = &mut self.root;
        let mut rest = Some(message.topic.as_str());
        while let Some(topic) = rest {
            let (level, below) = split_level(topic);
            node = node.children.entry(level.into()).or_default();
            rest = below;
        }
        self.payload_bytes += message.payload.len();
        let old = node.message.replace(message);
        match &old {
            Some(old) => self.payload_bytes -= old.payload.len(),
            None => self.len += 1,
        }
        old
    }

    /// Removes the retained message of `topic` [MQTT-3.3.1-6]; returns it if there was one.
    pub fn remove(&mut self, topic: &str) -> Option<Arc<Message>> {
        let removed = remove_at(&mut self.root, topic)?;
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
        let limit = out.len().saturating_add(limit);
        let from = match after {
            Some(topic) => From::After(Some(topic)),
            None => From::Start,
        };
        let mut walk = Walk { out, limit };
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
    if child.is_empty() {
        node.children.remove(level);
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
        for topic in ["s/1", "s/2", "s/3", "s/4"] {
            index.insert(message(topic));
        }
        let mut batch = Vec::new();
        assert!(!index.matching_after("s/#", None, 2, &mut batch));
        index.remove("s/2");
        index.insert(message("s/0"));
        let mut rest = Vec::new();
        assert!(index.matching_after("s/#", Some("s/2"), 10, &mut rest));
        let rest: Vec<&str> = rest.iter().map(|m| m.topic.as_str()).collect();
        // Topics added before the resume point are not sent by this walk; the rest are.
        assert_eq!(rest, ["s/3", "s/4"]);
    }
}
