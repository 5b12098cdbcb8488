//! The subscription index: which sessions want a message published to a topic.
//!
//! Data structure: a trie with one node per topic level. A node has its literal children in a
//! hash map, one child for `+`, and two slots of subscriptions: filters that end at the node
//! (`a/b`) and filters that end with `#` below it (`a/b/#`, which also matches `a/b`). A slot holds
//! plain subscribers and shared-subscription groups (`$share/{group}/a/b` lives where `a/b` would).
//! The subscribers of a slot, like the members of a group, are a dense vector, which is what
//! matching walks; once there are 32 of them, a map from each subscriber's key (its session) to
//! its position in the vector sits beside it.
//!
//! Matching a topic of L levels follows at most two branches per level (the literal and `+`), so
//! it costs O(L · 2^w) node visits where w is the number of levels that have `+` siblings on the
//! path — in practice O(L) hash lookups, independent of the number of subscriptions; then one step
//! per matching subscription, along a vector. Subscribing and unsubscribing walk one path, O(L),
//! then find the session in its slot: O(1) through the map (amortised: the vector and the map
//! grow by doubling), or a scan of fewer than 32 entries. Removal moves the slot's last entry into
//! the freed place and updates its position. Why: both run under the index's write lock, which
//! every publish waits for, and a filter may have 100 000 subscribers (every device of a fleet on
//! one broadcast topic); a scan of the slot, as before, held the lock for about 100 µs per
//! subscribe and unsubscribe there (docs/performance.md). The map is kept only for large slots
//! because most filters have one subscriber, and a map per slot would cost memory for nothing.
//! Groups are found in their slot by a scan of the slot's groups (few per filter).
//!
//! Topics beginning with `$` are not matched by filters whose first level is a wildcard
//! [MQTT-4.7.2-1]: at the root, `+` and `#` are skipped for them.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use tern_codec::MqttStr;
use tern_codec::topic::split_shared;

/// What the index stores per subscription.
pub trait IndexEntry {
    /// Identifies the subscriber (the broker uses the session's address): a second subscription
    /// with the same key to the same filter replaces the first [MQTT-3.8.4-3]. It must not change
    /// while the entry is in the index, and two subscribers present at once must not share one.
    fn key(&self) -> usize;
}

/// A shared subscription group: the members share the messages of one filter.
#[derive(Debug)]
pub struct SharedGroup<V> {
    pub name: Box<str>,
    /// The whole filter, `$share/{name}/{filter}`.
    pub filter: MqttStr,
    /// Read-only outside the index (which hands out only shared references): `positions` must
    /// follow every change.
    pub members: Vec<V>,
    positions: Positions,
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

/// From this many subscribers on, a slot or group keeps a map of their positions; below it a
/// scan of the vector is as fast and costs no memory (most filters have one subscriber).
const MAP_FROM: usize = 32;
/// The map is dropped again at this size: well below `MAP_FROM`, so that a filter whose
/// subscribers come and go around the threshold does not rebuild its map on every change.
const MAP_UNTIL: usize = 8;

/// Hashes a subscriber key with one multiplication whose 128-bit product is folded, so that the
/// low bits (which pick the bucket) depend on every bit of the key: session addresses have their
/// low bits zero. The keys are addresses the allocator chose, not data from clients, so a keyed
/// hash against flooding is not needed.
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_usize(&mut self, key: usize) {
        self.0 = key as u64;
    }

    fn finish(&self) -> u64 {
        let product = u128::from(self.0) * 0x9e37_79b9_7f4a_7c15;
        (product as u64) ^ ((product >> 64) as u64)
    }
}

/// Where each subscriber of a slot or group sits in its vector, once there are `MAP_FROM` of
/// them: finding one (to replace or remove it) is then O(1) instead of a scan.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)] // one word in every slot, most of which never have a map
struct Positions(Option<Box<HashMap<usize, usize, BuildHasherDefault<KeyHasher>>>>);

impl Positions {
    fn find<V: IndexEntry>(&self, entries: &[V], key: usize) -> Option<usize> {
        match &self.0 {
            Some(map) => map.get(&key).copied(),
            None => entries.iter().position(|e| e.key() == key),
        }
    }

    /// Inserts or replaces in place; true when it replaced.
    fn insert<V: IndexEntry>(&mut self, entries: &mut Vec<V>, entry: V) -> bool {
        let key = entry.key();
        if let Some(at) = self.find(entries, key) {
            entries[at] = entry;
            return true;
        }
        entries.push(entry);
        match &mut self.0 {
            Some(map) => {
                map.insert(key, entries.len() - 1);
            }
            None if entries.len() >= MAP_FROM => {
                let map = entries.iter().enumerate().map(|(at, e)| (e.key(), at));
                self.0 = Some(Box::new(map.collect()));
            }
            None => {}
        }
        false
    }

    /// Removes the entry of `key`; the last entry takes its place (order within a slot means
    /// nothing, and a shared group's round robin stays fair).
    fn remove<V: IndexEntry>(&mut self, entries: &mut Vec<V>, key: usize) -> Option<V> {
        let at = match &mut self.0 {
            Some(map) => map.remove(&key)?,
            None => entries.iter().position(|e| e.key() == key)?,
        };
        let removed = entries.swap_remove(at);
        if let Some(map) = &mut self.0 {
            if let Some(moved) = entries.get(at) {
                map.insert(moved.key(), at);
            }
            if entries.len() <= MAP_UNTIL {
                self.0 = None;
            }
        }
        Some(removed)
    }
}

#[derive(Debug)]
struct Slot<V> {
    subscribers: Vec<V>,
    positions: Positions,
    groups: Vec<SharedGroup<V>>,
}

impl<V> Default for Slot<V> {
    fn default() -> Self {
        Slot {
            subscribers: Vec::new(),
            positions: Positions::default(),
            groups: Vec::new(),
        }
    }
}

impl<V> Slot<V> {
    fn is_empty_of_routes(&self) -> bool {
        self.subscribers.is_empty() && self.groups.is_empty()
    }
}

impl<V: IndexEntry> Slot<V> {
    fn is_empty(&self) -> bool {
        self.is_empty_of_routes()
    }

    /// Inserts or replaces; says whether it replaced, and whether the entry is the first of
    /// its route (the slot's first plain subscriber, or a new group's first member).
    fn insert(&mut self, group: Option<&str>, filter: &str, entry: V) -> Inserted {
        let Some(name) = group else {
            let first = self.subscribers.is_empty();
            let replaced = self.positions.insert(&mut self.subscribers, entry);
            return Inserted { replaced, first };
        };
        let at = match self.groups.iter().position(|g| &*g.name == name) {
            Some(at) => at,
            None => {
                self.groups.push(SharedGroup {
                    name: name.into(),
                    filter: MqttStr::try_from(filter).unwrap_or_default(),
                    members: Vec::new(),
                    positions: Positions::default(),
                    cursor: AtomicUsize::new(0),
                });
                self.groups.len() - 1
            }
        };
        let group = &mut self.groups[at];
        let first = group.members.is_empty();
        let replaced = group.positions.insert(&mut group.members, entry);
        Inserted { replaced, first }
    }

    /// Removes the entry of `probe`'s subscriber; also says whether it was the last of its
    /// route.
    fn remove(&mut self, group: Option<&str>, probe: &V) -> (Option<V>, bool) {
        let Some(name) = group else {
            let removed = self.positions.remove(&mut self.subscribers, probe.key());
            let last = removed.is_some() && self.subscribers.is_empty();
            return (removed, last);
        };
        let Some(at) = self.groups.iter().position(|g| &*g.name == name) else {
            return (None, false);
        };
        let group = &mut self.groups[at];
        let removed = group.positions.remove(&mut group.members, probe.key());
        let last = group.members.is_empty();
        if last {
            self.groups.swap_remove(at);
        }
        (removed, last)
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

/// What [`SubscriptionIndex::insert_route`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// The subscriber had an entry under the filter already, now replaced.
    pub replaced: bool,
    /// The entry is the first of its route: the filter's first plain subscriber, or the first
    /// member of its shared group (what a cluster announces to other nodes).
    pub first: bool,
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
        self.insert_route(filter, entry).replaced
    }

    /// [`SubscriptionIndex::insert`], also saying whether the entry is the first of its route.
    pub fn insert_route(&mut self, filter: &str, entry: V) -> Inserted {
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
        let inserted = slot.insert(path.group, filter, entry);
        if !inserted.replaced {
            self.len += 1;
        }
        inserted
    }

    /// Removes the entry of `probe`'s subscriber under `filter`; returns it if there was one.
    pub fn remove(&mut self, filter: &str, probe: &V) -> Option<V> {
        self.remove_route(filter, probe).0
    }

    /// [`SubscriptionIndex::remove`], also saying whether the entry was the last of its route
    /// (the filter's last plain subscriber, or its shared group's last member).
    pub fn remove_route(&mut self, filter: &str, probe: &V) -> (Option<V>, bool) {
        let path = parse_filter(filter);
        let (removed, last) = remove_at(&mut self.root, &path, 0, probe);
        if removed.is_some() {
            self.len -= 1;
        }
        let last = last && removed.is_some();
        (removed, last)
    }

    /// Every route of the index: the distinct plain filters with at least one subscriber, and
    /// the shared groups with at least one member as `(group, filter)`, in no order. A walk of
    /// the whole trie, for a cluster that starts (or re-syncs) its routes.
    pub fn routes(&self) -> (Vec<String>, Vec<(String, String)>) {
        let mut plain = Vec::new();
        let mut shared = Vec::new();
        let mut levels = Vec::new();
        collect_routes(&self.root, &mut levels, &mut plain, &mut shared);
        (plain, shared)
    }

    /// The shared group of a `$share/{group}/{filter}` filter, if it has members.
    pub fn find_group(&self, filter: &str) -> Option<&SharedGroup<V>> {
        let path = parse_filter(filter);
        let group = path.group?;
        self.slot(&path)?.groups.iter().find(|g| &*g.name == group)
    }

    /// The entry of `probe`'s subscriber under `filter`, if there is one.
    pub fn get(&self, filter: &str, probe: &V) -> Option<&V> {
        let path = parse_filter(filter);
        let slot = self.slot(&path)?;
        let (entries, positions) = match path.group {
            None => (&slot.subscribers, &slot.positions),
            Some(name) => {
                let group = slot.groups.iter().find(|g| &*g.name == name)?;
                (&group.members, &group.positions)
            }
        };
        positions
            .find(entries, probe.key())
            .and_then(|at| entries.get(at))
    }

    /// The slot of a parsed filter, if its node exists.
    fn slot(&self, path: &FilterPath<'_>) -> Option<&Slot<V>> {
        let mut node = &self.root;
        for level in &path.levels {
            node = if *level == "+" {
                node.single.as_deref()?
            } else {
                node.children.get(*level)?
            };
        }
        Some(if path.multi { &node.multi } else { &node.exact })
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
) -> (Option<V>, bool) {
    let Some(level) = path.levels.get(depth) else {
        let slot = if path.multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        return slot.remove(path.group, probe);
    };
    if *level == "+" {
        let Some(child) = node.single.as_mut() else {
            return (None, false);
        };
        let removed = remove_at(child, path, depth + 1, probe);
        if child.is_empty() {
            node.single = None;
        }
        removed
    } else {
        let Some(child) = node.children.get_mut(*level) else {
            return (None, false);
        };
        let removed = remove_at(child, path, depth + 1, probe);
        if child.is_empty() {
            node.children.remove(*level);
        }
        removed
    }
}

/// Adds the routes of `node` and below to `plain` and `shared`; `levels` is the path to
/// `node` (restored on return).
fn collect_routes<'a, V>(
    node: &'a Node<V>,
    levels: &mut Vec<&'a str>,
    plain: &mut Vec<String>,
    shared: &mut Vec<(String, String)>,
) {
    for (slot, multi) in [(&node.exact, false), (&node.multi, true)] {
        if slot.is_empty_of_routes() {
            continue;
        }
        let mut filter = levels.join("/");
        if multi {
            if !levels.is_empty() {
                filter.push('/');
            }
            filter.push('#');
        }
        for group in &slot.groups {
            shared.push((group.name.to_string(), filter.clone()));
        }
        if !slot.subscribers.is_empty() {
            plain.push(filter);
        }
    }
    for (name, child) in &node.children {
        levels.push(name);
        collect_routes(child, levels, plain, shared);
        levels.pop();
    }
    if let Some(single) = &node.single {
        levels.push("+");
        collect_routes(single, levels, plain, shared);
        levels.pop();
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
        fn key(&self) -> usize {
            self.0 as usize
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
    fn get_finds_the_entry_of_a_subscriber_under_its_filter() {
        let mut index = SubscriptionIndex::default();
        index.insert("a/+/c", Sub(1, 7));
        index.insert("a/#", Sub(1, 8));
        index.insert("$share/g/a/#", Sub(2, 9));
        // Past the size where a slot keeps a map of positions.
        for n in 10..100 {
            index.insert("many", Sub(n, 1));
        }
        assert_eq!(index.get("a/+/c", &Sub(1, 0)), Some(&Sub(1, 7)));
        assert_eq!(index.get("a/#", &Sub(1, 0)), Some(&Sub(1, 8)));
        assert_eq!(index.get("$share/g/a/#", &Sub(2, 0)), Some(&Sub(2, 9)));
        assert_eq!(index.get("many", &Sub(57, 0)), Some(&Sub(57, 1)));
        assert_eq!(index.get("a/#", &Sub(2, 0)), None);
        assert_eq!(index.get("$share/h/a/#", &Sub(2, 0)), None);
        assert_eq!(index.get("a/b/c", &Sub(1, 0)), None);
        assert_eq!(index.get("a/+", &Sub(1, 0)), None);
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
