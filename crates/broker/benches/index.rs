//! The two indexes a broker searches: the subscription index (matching a published topic
//! against 100 000 subscriptions, wildcards among them; subscribing to and unsubscribing from a
//! filter that 100 000 sessions share, alone and while another thread publishes to it) and the
//! retained index (a wildcard subscribe over 1 000 000 retained messages). Run with
//! `cargo bench -p tern-broker`.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tern_broker::subscriptions::{IndexEntry, Matched, SubscriptionIndex};
use tern_broker::{Message, RetainedIndex};
use tern_codec::{MqttStr, QoS};

#[derive(Debug)]
struct Entry(u32);

impl IndexEntry for Entry {
    fn key(&self) -> usize {
        self.0 as usize
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

/// The filter every subscriber of the hot-filter benchmarks shares.
const HOT_FILTER: &str = "fleet/+/alerts";
const HOT_TOPIC: &str = "fleet/7/alerts";
const HOT_SUBSCRIBERS: u32 = 100_000;

fn hot_index() -> SubscriptionIndex<Entry> {
    let mut index = SubscriptionIndex::default();
    for id in 0..HOT_SUBSCRIBERS {
        index.insert(HOT_FILTER, Entry(id));
    }
    assert_eq!(count_matches(&index, HOT_TOPIC), HOT_SUBSCRIBERS as usize);
    index
}

/// One session subscribing to and unsubscribing from a filter 100 000 others share: alone, then
/// with the index behind a lock (as in the broker, one write lock each) while another thread
/// publishes to the filter in a loop. The publisher's rate is printed beside its rate alone.
fn bench_hot_filter(c: &mut Criterion) {
    let mut group = c.benchmark_group("one filter, 100 000 subscribers");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    let mut index = hot_index();
    let newcomer = Entry(HOT_SUBSCRIBERS);
    group.bench_function("subscribe + unsubscribe one more", |b| {
        b.iter(|| {
            index.insert(black_box(HOT_FILTER), Entry(HOT_SUBSCRIBERS));
            index.remove(black_box(HOT_FILTER), &newcomer).unwrap()
        })
    });
    let middle = Entry(HOT_SUBSCRIBERS / 2);
    group.bench_function("subscribe again (replace) one in the middle", |b| {
        b.iter(|| index.insert(black_box(HOT_FILTER), Entry(middle.0)))
    });

    let index = RwLock::new(index);
    // As the broker's routing does: every match is collected into a reused vector (a bare count
    // would let the compiler add up the slot's length instead of visiting its subscribers).
    let publish = |targets: &mut Vec<*const Entry>| {
        let index = index.read().unwrap();
        index.for_each_match(black_box(HOT_TOPIC), |matched| {
            if let Matched::Subscriber(entry) = matched {
                targets.push(entry as *const Entry);
            }
        });
        let reached = black_box(&targets).len();
        targets.clear();
        reached
    };
    let alone = publish_rate(&publish, || {
        std::thread::sleep(Duration::from_secs(1));
    });
    let rate = publish_rate(&publish, || {
        group.bench_function("subscribe + unsubscribe while publishing to it", |b| {
            b.iter(|| {
                index
                    .write()
                    .unwrap()
                    .insert(black_box(HOT_FILTER), Entry(HOT_SUBSCRIBERS));
                index
                    .write()
                    .unwrap()
                    .remove(black_box(HOT_FILTER), &newcomer)
                    .unwrap()
            })
        });
    });
    group.finish();
    println!(
        "publishes to {HOT_TOPIC} ({HOT_SUBSCRIBERS} matches each): {alone:.0}/s alone, \
         {rate:.0}/s while another thread subscribes and unsubscribes in a loop"
    );

    // A steadier load than criterion's loop: 1 000 subscribe + unsubscribe pairs a second for
    // 2 s, each timed from asking for the first write lock to releasing the second.
    let pairs = 2_000;
    let mut latencies = Vec::with_capacity(pairs);
    let rate = publish_rate(&publish, || {
        let start = Instant::now();
        for pair in 0..pairs {
            let due = start + Duration::from_millis(pair as u64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let begun = Instant::now();
            index
                .write()
                .unwrap()
                .insert(HOT_FILTER, Entry(HOT_SUBSCRIBERS));
            index
                .write()
                .unwrap()
                .remove(HOT_FILTER, &newcomer)
                .unwrap();
            latencies.push(begun.elapsed());
        }
    });
    latencies.sort();
    let at = |share: f64| latencies[((latencies.len() - 1) as f64 * share) as usize];
    println!(
        "1 000 subscribe + unsubscribe pairs/s while publishing: {rate:.0} publishes/s; \
         pair latency p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// Publishes from a second thread in a loop while `work` runs; returns the publishes per second.
fn publish_rate(
    publish: &(impl Fn(&mut Vec<*const Entry>) -> usize + Sync),
    work: impl FnOnce(),
) -> f64 {
    let stop = AtomicBool::new(false);
    let published = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let publisher = scope.spawn(|| {
            let mut targets = Vec::new();
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                assert!(publish(&mut targets) >= HOT_SUBSCRIBERS as usize);
                published.fetch_add(1, Ordering::Relaxed);
            }
            start.elapsed()
        });
        work();
        stop.store(true, Ordering::Relaxed);
        let elapsed = publisher.join().unwrap();
        published.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
    })
}

fn retained(topic: String) -> Arc<Message> {
    Arc::new(Message {
        cluster_id: None,
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

criterion_group!(
    benches,
    bench_subscriptions,
    bench_hot_filter,
    bench_retained
);
criterion_main!(benches);
