//! The retained messages, one per topic, in a trie by topic level so that a wildcard subscription
//! finds its messages without scanning them all.
//!
//! A literal filter level follows one child, `+` visits every child of the node, `#` takes the
//! whole subtree (the node itself included). The cost of a look-up is the number of nodes the
//! filter's wildcards cover, not the number of retained messages. As for subscriptions, a filter
//! whose first level is a wildcard does not reach topics that begin with `$` [MQTT-4.7.2-1].

use std::collections::HashMap;
use std::sync::Arc;

use crate::message::Message;
use crate::subscriptions::split_level;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }

    fn collect_all<'a>(&'a self, out: &mut Vec<&'a Arc<Message>>) {
        out.extend(self.message.iter());
        for child in self.children.values() {
            child.collect_all(out);
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
        collect(&self.root, filter, true, &mut out);
        out.into_iter().cloned().collect()
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

/// Collects the messages under `node` that match `filter` (the part of the filter below `node`).
fn collect<'a>(node: &'a Node, filter: &str, root: bool, out: &mut Vec<&'a Arc<Message>>) {
    let (level, below) = split_level(filter);
    let visible = |name: &str| !(root && name.starts_with('$'));
    match level {
        "#" => {
            // `a/#` matches `a` itself as well as everything below it.
            if !root {
                out.extend(node.message.iter());
            }
            for (name, child) in &node.children {
                if visible(name) {
                    child.collect_all(out);
                }
            }
        }
        "+" => {
            for (name, child) in &node.children {
                if visible(name) {
                    descend(child, below, out);
                }
            }
        }
        literal => {
            if let Some(child) = node.children.get(literal) {
                descend(child, below, out);
            }
        }
    }
}

fn descend<'a>(child: &'a Node, below: Option<&str>, out: &mut Vec<&'a Arc<Message>>) {
    match below {
        Some(below) => collect(child, below, false, out),
        None => out.extend(child.message.iter()),
    }
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
}
