//! The two indexes a broker searches: the subscription index (matching a published topic
//! against 100 000 subscriptions, wildcards among them) and the retained index (a wildcard
//! subscribe over 1 000 000 retained messages). Run with `cargo bench -p tern-broker`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tern_broker::subscriptions::{IndexEntry, Matched, SubscriptionIndex};
use tern_broker::{Message, RetainedIndex};
use tern_codec::{MqttStr, QoS};

#[derive(Debug)]
struct Entry(u32);

impl IndexEntry for Entry {
    fn same_subscriber(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

/// 100 000 subscriptions of a device fleet: one per device on its command topic, a
/// single-level wildcard per site, multi-level wildcards for dashboards.
fn subscription_index() -> SubscriptionIndex<Entry> {
    let mut index = SubscriptionIndex::default();
    let mut id = 0;
    let mut add = |index: &mut SubscriptionIndex<Entry>, filter: String| {
        id += 1;
        index.insert(&filter, Entry(id));
    };
    for device in 0..90_000 {
        add(&mut index, format!("devices/{device}/commands/#"));
    }
    for site in 0..9_000 {
        add(&mut index, format!("sites/{site}/+/temperature"));
    }
    for site in 0..990 {
        add(&mut index, format!("sites/{site}/#"));
    }
    for _ in 0..10 {
        add(&mut index, "+/+/+/status".to_owned());
    }
    assert_eq!(index.len(), 100_000);
    index
}

fn count_matches(index: &SubscriptionIndex<Entry>, topic: &str) -> usize {
    let mut found = 0;
    index.for_each_match(topic, |matched| match matched {
        Matched::Subscriber(_) => found += 1,
        Matched::Group(_) => found += 1,
    });
    found
}

fn bench_subscriptions(c: &mut Criterion) {
    let index = subscription_index();
    assert_eq!(count_matches(&index, "devices/4242/commands/reboot"), 1);
    assert_eq!(count_matches(&index, "sites/42/room7/temperature"), 2);
    let mut group = c.benchmark_group("subscription index, 100 000 subscriptions");
    group.bench_function("match a device command (1 match)", |b| {
        b.iter(|| count_matches(&index, black_box("devices/4242/commands/reboot")))
    });
    group.bench_function("match a site reading (+ and #, 2 matches)", |b| {
        b.iter(|| count_matches(&index, black_box("sites/42/room7/temperature")))
    });
    group.bench_function("match nothing", |b| {
        b.iter(|| count_matches(&index, black_box("other/topic/with/levels")))
    });
    group.finish();
}

fn retained(topic: String) -> Arc<Message> {
    Arc::new(Message {
        topic: MqttStr::try_from(topic).unwrap(),
        payload: Bytes::from_static(b"{\"online\":true}"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: None,
        expires_at: None,
        publisher: None,
        id: 0,
    })
}

fn bench_retained(c: &mut Criterion) {
    // 1 000 000 retained messages: 1 000 sites of 1 000 devices each.
    let mut index = RetainedIndex::default();
    for site in 0..1_000 {
        for device in 0..1_000 {
            index.insert(retained(format!("sites/{site}/devices/{device}/status")));
        }
    }
    assert_eq!(index.len(), 1_000_000);
    assert_eq!(index.matching("sites/42/devices/+/status").len(), 1_000);
    let mut group = c.benchmark_group("retained index, 1 000 000 messages");
    group.sample_size(20);
    group.bench_function(
        "subscribe sites/42/devices/+/status (1 000 messages)",
        |b| b.iter(|| index.matching(black_box("sites/42/devices/+/status")).len()),
    );
    group.bench_function("subscribe sites/42/# (1 000 messages)", |b| {
        b.iter(|| index.matching(black_box("sites/42/#")).len())
    });
    group.bench_function("subscribe sites/7/devices/7/status (1 message)", |b| {
        b.iter(|| index.matching(black_box("sites/7/devices/7/status")).len())
    });
    group.bench_function("subscribe +/+/devices/1/status (1 000 messages)", |b| {
        b.iter(|| index.matching(black_box("+/+/devices/1/status")).len())
    });
    group.finish();
}

criterion_group!(benches, bench_subscriptions, bench_retained);
criterion_main!(benches);
