//! The subscription index with many subscribers on one filter (issue 10): subscribing and
//! unsubscribing find the session's entry without a scan of the filter's subscribers, and the
//! index still holds exactly what was subscribed — checked on large slots and shared groups, and
//! against a plain map over random sequences of subscribes and unsubscribes.

use std::cell::Cell;
use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use tern_broker::subscriptions::{IndexEntry, Matched, SubscriptionIndex};

thread_local! {
    /// Calls of `Sub::key` on this thread: how many entries the index looked at.
    static KEY_CALLS: Cell<usize> = const { Cell::new(0) };
}

/// A subscription of session `key` to filter number `filter`; `version` stands for its options.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Sub {
    key: u32,
    filter: usize,
    version: u32,
}

impl IndexEntry for Sub {
    fn key(&self) -> usize {
        KEY_CALLS.set(KEY_CALLS.get() + 1);
        self.key as usize
    }
}

fn sub(key: u32, filter: usize, version: u32) -> Sub {
    Sub {
        key,
        filter,
        version,
    }
}

/// The filters of these tests: every one matches `fleet/7/alerts`.
const FILTERS: [&str; 5] = [
    "fleet/+/alerts",
    "fleet/7/alerts",
    "fleet/#",
    "$share/g/fleet/+/alerts",
    "$share/h/fleet/#",
];
const TOPIC: &str = "fleet/7/alerts";

/// Every entry `topic` reaches, members of shared groups included, sorted.
fn reached(index: &SubscriptionIndex<Sub>, topic: &str) -> Vec<Sub> {
    let mut found = Vec::new();
    index.for_each_match(topic, |matched| match matched {
        Matched::Subscriber(s) => found.push(s.clone()),
        Matched::Group(g) => found.extend(g.members.iter().cloned()),
    });
    found.sort();
    found
}

/// What the index should hold: (filter, key) → version.
type Model = BTreeMap<(usize, u32), u32>;

fn expected(model: &Model) -> Vec<Sub> {
    let mut all: Vec<Sub> = model
        .iter()
        .map(|(&(filter, key), &version)| sub(key, filter, version))
        .collect();
    all.sort();
    all
}

#[test]
fn many_subscribers_on_one_filter_removed_from_the_middle_and_added_again() {
    let mut index = SubscriptionIndex::default();
    let mut model = Model::new();
    for key in 0..10_000 {
        assert!(!index.insert(FILTERS[0], sub(key, 0, 0)));
        model.insert((0, key), 0);
    }
    for key in (2_500..7_500).step_by(3) {
        assert_eq!(
            index.remove(FILTERS[0], &sub(key, 0, 9)),
            Some(sub(key, 0, 0))
        );
        assert_eq!(index.remove(FILTERS[0], &sub(key, 0, 9)), None);
        model.remove(&(0, key));
    }
    assert_eq!(index.len(), model.len());
    assert_eq!(reached(&index, TOPIC), expected(&model));
    for key in (2_500..7_500).step_by(3) {
        assert!(!index.insert(FILTERS[0], sub(key, 0, 1)));
        model.insert((0, key), 1);
    }
    assert_eq!(index.len(), 10_000);
    assert_eq!(reached(&index, TOPIC), expected(&model));
    // Removal of all but a few, down past the size where the slot drops its map.
    for key in 3..10_000 {
        assert!(index.remove(FILTERS[0], &sub(key, 0, 0)).is_some());
        model.remove(&(0, key));
    }
    assert_eq!(reached(&index, TOPIC), expected(&model));
    for key in 0..3 {
        assert!(index.remove(FILTERS[0], &sub(key, 0, 0)).is_some());
    }
    assert!(index.is_empty());
    assert!(reached(&index, TOPIC).is_empty());
}

/// A second SUBSCRIBE of a session to a filter replaces its subscription, in place: the filter
/// still has one entry for it, with the new options [MQTT-3.8.4-3].
#[test]
fn second_subscribe_replaces_the_subscription_mqtt_3_8_4_3() {
    for subscribers in [5, 1_000] {
        let mut index = SubscriptionIndex::default();
        let mut model = Model::new();
        for filter in [0, 3] {
            for key in 0..subscribers {
                index.insert(FILTERS[filter], sub(key, filter, 0));
                model.insert((filter, key), 0);
            }
            let middle = subscribers / 2;
            assert!(index.insert(FILTERS[filter], sub(middle, filter, 7)));
            model.insert((filter, middle), 7);
        }
        assert_eq!(index.len(), 2 * subscribers as usize);
        assert_eq!(reached(&index, TOPIC), expected(&model));
    }
}

#[test]
fn shared_group_members_come_and_go_and_take_turns() {
    let mut index = SubscriptionIndex::default();
    let group = FILTERS[3];
    for key in 0..1_000 {
        index.insert(group, sub(key, 3, 0));
        index.insert(FILTERS[0], sub(key, 0, 0));
    }
    for key in (100..900).step_by(2) {
        assert_eq!(index.remove(group, &sub(key, 3, 0)), Some(sub(key, 3, 0)));
    }
    let members = |index: &SubscriptionIndex<Sub>| {
        let mut keys: Vec<u32> = index
            .find_group(group)
            .map(|g| g.members.iter().map(|m| m.key).collect())
            .unwrap_or_default();
        keys.sort();
        keys
    };
    let left: Vec<u32> = (0..1_000)
        .filter(|key| !(100..900).contains(key) || key % 2 == 1)
        .collect();
    assert_eq!(members(&index), left);
    // Round robin: as many picks as members reach each member once.
    let shared = index.find_group(group).unwrap();
    let mut picked: Vec<u32> = (0..left.len())
        .map(|_| shared.pick(|_| true).unwrap().key)
        .collect();
    picked.sort();
    assert_eq!(picked, left);
    for key in left {
        assert!(index.remove(group, &sub(key, 3, 0)).is_some());
    }
    assert!(index.find_group(group).is_none());
    assert_eq!(index.len(), 1_000);
}

/// Subscribing, resubscribing and unsubscribing on a filter with 10 000 subscribers look at a
/// handful of entries, not at the filter's subscribers one by one (which held the index's write
/// lock, and so every publish, for about 100 µs with 100 000 of them).
#[test]
fn subscribe_and_unsubscribe_on_a_crowded_filter_look_at_few_entries() {
    let mut index = SubscriptionIndex::default();
    for filter in [0, 3] {
        for key in 0..10_000 {
            index.insert(FILTERS[filter], sub(key, filter, 0));
        }
        KEY_CALLS.set(0);
        assert!(!index.insert(FILTERS[filter], sub(10_000, filter, 0)));
        assert!(index.insert(FILTERS[filter], sub(5_000, filter, 1)));
        assert!(
            index
                .remove(FILTERS[filter], &sub(4_000, filter, 0))
                .is_some()
        );
        assert!(
            index
                .remove(FILTERS[filter], &sub(10_000, filter, 0))
                .is_some()
        );
        assert!(
            index
                .remove(FILTERS[filter], &sub(10_000, filter, 0))
                .is_none()
        );
        assert!(
            KEY_CALLS.get() <= 10,
            "{} entries looked at",
            KEY_CALLS.get()
        );
    }
}

fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            512
        },
        // Integration tests have no lib.rs to put a regressions file beside: a failure prints
        // its minimal input instead.
        failure_persistence: None,
        ..default
    }
}

/// A subscribe (true) or unsubscribe of session `key` to filter number `filter`.
fn operations() -> impl Strategy<Value = Vec<(bool, usize, u32, u32)>> {
    // Subscribes outweigh unsubscribes and 64 sessions share 5 filters: slots grow past the
    // size where they build their map, and shrink below the one where they drop it.
    let op = (
        prop::bool::weighted(0.6),
        0..FILTERS.len(),
        0..64u32,
        0..4u32,
    );
    prop::collection::vec(op, 1..600)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn index_holds_what_a_plain_map_holds(ops in operations()) {
        let mut index = SubscriptionIndex::default();
        let mut model = Model::new();
        for (step, (subscribe, filter, key, version)) in ops.into_iter().enumerate() {
            let entry = sub(key, filter, version);
            if subscribe {
                let replaced = model.insert((filter, key), version).is_some();
                prop_assert_eq!(index.insert(FILTERS[filter], entry), replaced);
            } else {
                let removed = model.remove(&(filter, key)).map(|v| sub(key, filter, v));
                prop_assert_eq!(index.remove(FILTERS[filter], &entry), removed);
            }
            prop_assert_eq!(index.len(), model.len());
            if step % 16 == 0 {
                prop_assert_eq!(reached(&index, TOPIC), expected(&model));
            }
        }
        prop_assert_eq!(reached(&index, TOPIC), expected(&model));
        // `fleet/8/alerts` misses `fleet/7/alerts`, the only filter without a wildcard.
        let elsewhere: Vec<Sub> = expected(&model).into_iter().filter(|s| s.filter != 1).collect();
        prop_assert_eq!(reached(&index, "fleet/8/alerts"), elsewhere);
        for filter in [3, 4] {
            let mut members: Vec<Sub> = index
                .find_group(FILTERS[filter])
                .map(|g| g.members.clone())
                .unwrap_or_default();
            members.sort();
            let wanted: Vec<Sub> = expected(&model).into_iter().filter(|s| s.filter == filter).collect();
            prop_assert_eq!(members, wanted);
        }
    }
}
