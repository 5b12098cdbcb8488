//! The subscription index: which sessions want a message published to a topic.
//!
//! Data structure: a trie with one node per topic level. A node has its literal children in a
//! hash map, one child for `+`, and two slots of subscriptions: filters that end at the node
//! (`a/b`) and filters that end with `#` below it (`a/b/#`, which also matches `a/b`). A slot holds
//! plain subscribers and shared-subscription groups (`$share/{group}/a/b` lives where `a/b` would).
//!
//! Matching a topic of L levels follows at most two branches per level (the literal and `+`), so
//! it costs O(L · 2^w) node visits where w is the number of levels that have `+` siblings on the
//! path — in practice O(L) hash lookups, independent of the number of subscriptions; then one step
//! per matching subscription. Subscribing and unsubscribing walk one path: O(L).
//!
//! Topics beginning with `$` are not matched by filters whose first level is a wildcard
//! [MQTT-4.7.2-1]: at the root, `+` and `#` are skipped for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use tern_codec::MqttStr;
use tern_codec::topic::split_shared;

/// What the index stores per subscription; `same_subscriber` identifies the session, so a second
/// subscription of a session to the same filter replaces the first.
pub trait IndexEntry {
    fn same_subscriber(&self, other: &Self) -> bool;
}

/// A shared subscription group: the members share the messages of one filter.
#[derive(Debug)]
pub struct SharedGroup<V> {
    pub name: Box<str>,
    /// The whole filter, `$share/{name}/{filter}`.
    pub filter: MqttStr,
    pub members: Vec<V>,
    cursor: AtomicUsize,
}

impl<V> SharedGroup<V> {
    /// The member whose turn it is (round robin), skipping members `usable` rejects; if none is
    /// usable, the member whose turn it is anyway.
    pub fn pick(&self, mut usable: impl FnMut(&V) -> bool) -> Option<&V> {
        let len = self.members.len();
        if len == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % len;
        (0..len)
            .map(|offset| &self.members[(start + offset) % len])
            .find(|member| usable(member))
            .or(Some(&self.members[start]))
    }
}

/// One match of a topic.
pub enum Matched<'a, V> {
    Subscriber(&'a V),
    Group(&'a SharedGroup<V>),
}

#[derive(Debug)]
struct Slot<V> {
    subscribers: Vec<V>,
    groups: Vec<SharedGroup<V>>,
}

impl<V> Default for Slot<V> {
    fn default() -> Self {
        Slot {
            subscribers: Vec::new(),
            groups: Vec::new(),
        }
    }
}

impl<V: IndexEntry> Slot<V> {
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.groups.is_empty()
    }

    fn members(&mut self, group: Option<&str>, filter: &str) -> &mut Vec<V> {
        let Some(name) = group else {
            return &mut self.subscribers;
        };
        let index = match self.groups.iter().position(|g| &*g.name == name) {
            Some(index) => index,
            None => {
                self.groups.push(SharedGroup {
                    name: name.into(),
                    filter: MqttStr::try_from(filter).unwrap_or_default(),
                    members: Vec::new(),
                    cursor: AtomicUsize::new(0),
                });
                self.groups.len() - 1
            }
        };
        &mut self.groups[index].members
    }

    /// Inserts or replaces; true when it replaced.
    fn insert(&mut self, group: Option<&str>, filter: &str, entry: V) -> bool {
        let members = self.members(group, filter);
        match members.iter_mut().find(|e| e.same_subscriber(&entry)) {
            Some(existing) => {
                *existing = entry;
                true
            }
            None => {
                members.push(entry);
                false
            }
        }
    }

    fn remove(&mut self, group: Option<&str>, probe: &V) -> Option<V> {
        let members = match group {
            None => &mut self.subscribers,
            Some(name) => &mut self.groups.iter_mut().find(|g| &*g.name == name)?.members,
        };
        let index = members.iter().position(|e| e.same_subscriber(probe))?;
        let removed = members.swap_remove(index);
        self.groups.retain(|g| !g.members.is_empty());
        Some(removed)
    }

    fn visit<'a>(&'a self, visit: &mut impl FnMut(Matched<'a, V>)) {
        for subscriber in &self.subscribers {
            visit(Matched::Subscriber(subscriber));
        }
        for group in &self.groups {
            visit(Matched::Group(group));
        }
    }
}

#[derive(Debug)]
struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    single: Option<Box<Node<V>>>,
    exact: Slot<V>,
    multi: Slot<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            single: None,
            exact: Slot::default(),
            multi: Slot::default(),
        }
    }
}

impl<V: IndexEntry> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.single.is_none()
            && self.exact.is_empty()
            && self.multi.is_empty()
    }
}

/// Splits the first level off a topic: `("a", Some("b/c"))` for `a/b/c`, `("c", None)` for `c`.
pub(crate) fn split_level(topic: &str) -> (&str, Option<&str>) {
    match topic.find('/') {
        Some(at) => (&topic[..at], Some(&topic[at + 1..])),
        None => (topic, None),
    }
}

/// The index of all subscriptions of all sessions.
#[derive(Debug)]
pub struct SubscriptionIndex<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for SubscriptionIndex<V> {
    fn default() -> Self {
        SubscriptionIndex {
            root: Node::default(),
            len: 0,
        }
    }
}

/// A filter taken apart: its shared group, its levels without a trailing `#`, and whether it had one.
struct FilterPath<'a> {
    group: Option<&'a str>,
    levels: Vec<&'a str>,
    multi: bool,
}

fn parse_filter(filter: &str) -> FilterPath<'_> {
    let (group, plain) = match split_shared(filter) {
        Some((group, plain)) => (Some(group), plain),
        None => (None, filter),
    };
    let mut levels: Vec<&str> = plain.split('/').collect();
    let multi = levels.last() == Some(&"#");
    if multi {
        levels.pop();
    }
    FilterPath {
        group,
        levels,
        multi,
    }
}

impl<V: IndexEntry> SubscriptionIndex<V> {
    /// Number of subscriptions (each member of a shared group counts once).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `entry` under `filter` (a valid filter, possibly `$share/...`), replacing the entry of
    /// the same subscriber. Returns true when it replaced one.
    pub fn insert(&mut self, filter: &str, entry: V) -> bool {
        let path = parse_filter(filter);
        let mut node = &mut self.root;
        for level in &path.levels {
            node = if *level == "+" {
                node.single.get_or_insert_with(Box::default)
            } else {
                node.children.entry((*level).into()).or_default()
            };
        }
        let slot = if path.multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        let replaced = slot.insert(path.group, filter, entry);
        if !replaced {
            self.len += 1;
        }
        replaced
    }

    /// Removes the entry of `probe`'s subscriber under `filter`; returns it if there was one.
    pub fn remove(&mut self, filter: &str, probe: &V) -> Option<V> {
        let path = parse_filter(filter);
        let removed = remove_at(&mut self.root, &path, 0, probe);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The shared group of a `$share/{group}/{filter}` filter, if it has members.
    pub fn find_group(&self, filter: &str) -> Option<&SharedGroup<V>> {
        let path = parse_filter(filter);
        let group = path.group?;
        let mut node = &self.root;
        for level in &path.levels {
            node = if *level == "+" {
                node.single.as_deref()?
            } else {
                node.children.get(*level)?
            };
        }
        let slot = if path.multi { &node.multi } else { &node.exact };
        slot.groups.iter().find(|g| &*g.name == group)
    }

    /// Calls `visit` for every subscription and shared group whose filter matches `topic`.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(Matched<'a, V>)) {
        let dollar = topic.starts_with('$');
        visit_node(&self.root, Some(topic), !dollar, &mut visit);
    }
}

fn remove_at<V: IndexEntry>(
    node: &mut Node<V>,
    path: &FilterPath<'_>,
    depth: usize,
    probe: &V,
) -> Option<V> {
    let Some(level) = path.levels.get(depth) else {
        let slot = if path.multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        return slot.remove(path.group, probe);
    };
    if *level == "+" {
        let child = node.single.as_mut()?;
        let removed = remove_at(child, path, depth + 1, probe);
        if child.is_empty() {
            node.single = None;
        }
        removed
    } else {
        let child = node.children.get_mut(*level)?;
        let removed = remove_at(child, path, depth + 1, probe);
        if child.is_empty() {
            node.children.remove(*level);
        }
        removed
    }
}

/// `rest` is the part of the topic below `node`, `None` once every level is consumed;
/// `wildcards` is false only at the root of a `$` topic.
fn visit_node<'a, V: IndexEntry>(
    node: &'a Node<V>,
    rest: Option<&str>,
    wildcards: bool,
    visit: &mut impl FnMut(Matched<'a, V>),
) {
    if wildcards {
        node.multi.visit(visit);
    }
    let Some(rest) = rest else {
        node.exact.visit(visit);
        return;
    };
    let (level, below) = split_level(rest);
    if let Some(child) = node.children.get(level) {
        visit_node(child, below, true, visit);
    }
    if wildcards && let Some(single) = &node.single {
        visit_node(single, below, true, visit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Sub(u32, u8);

    impl IndexEntry for Sub {
        fn same_subscriber(&self, other: &Self) -> bool {
            self.0 == other.0
        }
    }

    fn matches(index: &SubscriptionIndex<Sub>, topic: &str) -> Vec<u32> {
        let mut found = Vec::new();
        index.for_each_match(topic, |m| match m {
            Matched::Subscriber(s) => found.push(s.0),
            Matched::Group(g) => found.extend(g.members.iter().map(|s| s.0 + 1000)),
        });
        found.sort();
        found
    }

    #[test]
    fn wildcards_match_as_section_4_7_describes() {
        let mut index = SubscriptionIndex::default();
        index.insert("sport/tennis/player1/#", Sub(1, 0));
        index.insert("sport/+/player1", Sub(2, 0));
        index.insert("+/+", Sub(3, 0));
        index.insert("#", Sub(4, 0));
        index.insert("/+", Sub(5, 0));
        index.insert("sport/tennis/player1", Sub(6, 0));
        assert_eq!(matches(&index, "sport/tennis/player1"), vec![1, 2, 4, 6]);
        assert_eq!(matches(&index, "sport/tennis/player1/ranking"), vec![1, 4]);
        assert_eq!(matches(&index, "sport/tennis"), vec![3, 4]);
        assert_eq!(matches(&index, "/finance"), vec![3, 4, 5]);
        assert_eq!(matches(&index, "sport"), vec![4]);
        assert_eq!(matches(&index, "sport/"), vec![3, 4]);
    }

    #[test]
    fn dollar_topics_skip_leading_wildcards_mqtt_4_7_2_1() {
        let mut index = SubscriptionIndex::default();
        index.insert("#", Sub(1, 0));
        index.insert("+/monitor/Clients", Sub(2, 0));
        index.insert("$SYS/#", Sub(3, 0));
        index.insert("$SYS/monitor/+", Sub(4, 0));
        assert_eq!(matches(&index, "$SYS/monitor/Clients"), vec![3, 4]);
        assert_eq!(matches(&index, "x/monitor/Clients"), vec![1, 2]);
    }

    #[test]
    fn insert_replaces_and_remove_prunes() {
        let mut index = SubscriptionIndex::default();
        assert!(!index.insert("a/+/c", Sub(1, 0)));
        assert!(index.insert("a/+/c", Sub(1, 2)));
        assert_eq!(index.len(), 1);
        assert_eq!(index.remove("a/+/c", &Sub(1, 0)), Some(Sub(1, 2)));
        assert_eq!(index.remove("a/+/c", &Sub(1, 0)), None);
        assert!(index.is_empty());
        assert!(index.root.is_empty());
    }

    #[test]
    fn shared_groups_are_one_match_and_rotate() {
        let mut index = SubscriptionIndex::default();
        index.insert("$share/g/a/#", Sub(1, 0));
        index.insert("$share/g/a/#", Sub(2, 0));
        index.insert("$share/h/a/#", Sub(3, 0));
        index.insert("a/#", Sub(4, 0));
        assert_eq!(index.len(), 4);
        assert_eq!(matches(&index, "a/b"), vec![4, 1001, 1002, 1003]);
        let mut picked = Vec::new();
        for _ in 0..4 {
            index.for_each_match("a", |m| {
                if let Matched::Group(g) = m
                    && &*g.name == "g"
                {
                    picked.push(g.pick(|_| true).unwrap().0);
                }
            });
        }
        assert_eq!(picked, vec![1, 2, 1, 2]);
        index.remove("$share/g/a/#", &Sub(1, 0));
        index.remove("$share/g/a/#", &Sub(2, 0));
        assert_eq!(matches(&index, "a/b"), vec![4, 1003]);
    }
}
